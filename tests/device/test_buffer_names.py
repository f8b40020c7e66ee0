"""Product names in the replay buffer: stored in the file, read back, older files without names still read."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_sim.commands import _parse_task
from firmware_sim.errors import UserError
from firmware_sim.replay_buffer import (
    FILE_HEADER_SIZE,
    MAX_NAME_BYTES,
    TASK_RECORD_SIZE,
    ReplayBuffer,
    _pack_record,
    task_record_size,
)

SHAPE = (4, 8, 8)


def q_latent(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(-128, 128, size=SHAPE, dtype=np.int8)


def filled(budget: int = 20_000, tasks: tuple[int, ...] = (0, 1), n: int = 8) -> ReplayBuffer:
    buf = ReplayBuffer(budget, "int8-device", seed=1, latent_shape=SHAPE)
    for t in tasks:
        for i in range(n):
            buf.add_quantized(t, q_latent(100 * t + i), 0.05, -2, sample_id=i, timestamp=1.7e9 + i)
    return buf


def test_names_persist_and_cost_their_bytes(tmp_path):
    buf = filled()
    before = buf.nbytes
    buf.name_task(0, "metal nut")
    buf.name_task(1, "écrou")  # UTF-8: the bytes count, not the characters
    buf.name_task(2, "7")  # a new task, registered by its name
    assert buf.task_names() == {0: "metal nut", 1: "écrou", 2: "7"}
    assert buf.task_id_of("7") == 2 and buf.task_id_of("screw") is None
    names = len("metal nut") + len("écrou".encode()) + len("7")
    assert buf.nbytes == FILE_HEADER_SIZE + 3 * TASK_RECORD_SIZE + names + sum(r.nbytes for r in buf.records())
    assert buf.nbytes <= before + TASK_RECORD_SIZE + names  # the new task's share came from the others
    assert task_record_size("écrou") == TASK_RECORD_SIZE + 6
    buf.save(tmp_path / "b.bin")
    loaded, report = ReplayBuffer.load(tmp_path / "b.bin")
    assert report.errors == [] and report.dropped == 0
    assert loaded.task_names() == buf.task_names() and loaded.stats()["task_names"] == buf.task_names()
    assert loaded.to_bytes() == buf.to_bytes() and loaded.nbytes <= loaded.budget_bytes


def test_a_file_without_names_still_reads(tmp_path):
    buf = filled()
    data = bytearray(buf.to_bytes())
    assert b"metal" not in data
    (tmp_path / "old.bin").write_bytes(bytes(data))
    loaded, report = ReplayBuffer.load(tmp_path / "old.bin")
    assert loaded.task_names() == {} and len(loaded) == len(buf) and report.errors == []
    loaded.name_task(0, "nut")  # and can be named afterwards
    assert loaded.task_names() == {0: "nut"}


def test_names_are_unique_and_kept(tmp_path):
    buf = filled()
    buf.name_task(0, "nut")
    buf.name_task(0, "nut")  # naming again with the same name is fine
    with pytest.raises(UserError, match="already belongs to task 0"):
        buf.name_task(1, "nut")
    with pytest.raises(UserError, match="is named 'nut'"):
        buf.name_task(0, "screw")
    for bad in ("", "  ", "a\nb", "x" * (MAX_NAME_BYTES + 1), 7):
        with pytest.raises(UserError, match="task name"):
            buf.name_task(1, bad)


def test_naming_a_full_task_stays_within_budget():
    budget = FILE_HEADER_SIZE + 2 * (TASK_RECORD_SIZE + 4 * 300)  # tasks full to the byte
    buf = filled(budget=budget, n=40)
    buf.name_task(0, "n" * MAX_NAME_BYTES)
    assert buf.nbytes <= budget and buf._task_bytes(0) <= buf.quota()


def test_a_bad_name_in_a_file_is_left_out_not_fatal(tmp_path):
    buf = filled(tasks=(0,))
    data = buf.to_bytes()
    bad = _pack_record(2, 0, 1.7e9, 8, b"\xff\xfe")  # a task record whose name is not UTF-8
    pos = FILE_HEADER_SIZE
    path = tmp_path / "b.bin"
    path.write_bytes(data[:pos] + bad + data[pos + TASK_RECORD_SIZE:])
    loaded, report = ReplayBuffer.load(path)
    assert len(loaded) == len(buf) and loaded.task_names() == {} and report.dropped == 0
    assert any("name left out" in e for e in report.errors)


def test_a_task_named_7_is_chosen_by_name():
    # Probe case 14: digits were always a buffer task id, so a task named "7" could not be chosen.
    assert _parse_task("7", ["nut", "7"], None, True) == ("7", None)
    assert _parse_task("7", ["nut", "7"], None, False) == ("7", None)
    assert _parse_task("1", ["nut", "7"], None, True) == (None, 1)  # digits that name no task: an id
    assert _parse_task(None, ["nut"], 3, True) == (None, 3)  # --task-id: always an id
    assert _parse_task("screw", ["nut"], None, True) == ("screw", None)  # a new product
    with pytest.raises(UserError, match="not both"):
        _parse_task("nut", ["nut"], 1, True)
    with pytest.raises(UserError, match="apply to a replay buffer"):
        _parse_task("1", ["nut"], None, False)


def test_import_merge_maps_tasks_by_name(tmp_path):
    from firmware_sim.commands import buffer_import

    src = filled(budget=40_000, tasks=(0, 1), n=3)
    src.name_task(0, "nut")
    src.name_task(1, "brick")
    dest = filled(budget=40_000, tasks=(0,), n=2)
    dest.name_task(0, "brick")
    src.save(tmp_path / "src.bin")
    dest.save(tmp_path / "dest.bin")
    out = buffer_import(tmp_path / "src.bin", tmp_path / "dest.bin", mode="merge")
    merged, report = ReplayBuffer.load(tmp_path / "dest.bin")
    assert report.errors == [] and merged.task_names() == {0: "brick", 1: "nut"} == out["task_names"]
    per_task = merged.stats()["records_per_task"]
    assert per_task == {0: 2 + 3, 1: 3}  # src's brick (its task 1) joined dest's brick (task 0)
