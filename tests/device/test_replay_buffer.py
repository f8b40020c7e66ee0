"""The replay buffer: budget, sharing, reservoir sampling, file format, corruption, kills, device purity."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from firmware_sim.codecs import get_codec
from firmware_sim.errors import UserError
from firmware_sim.replay_buffer import (
    FILE_HEADER_SIZE,
    RECORD_OVERHEAD,
    TASK_RECORD_SIZE,
    ReplayBuffer,
)

REPO = Path(__file__).resolve().parents[2]
SMALL = (4, 8, 8)


def latent(seed: int, shape: tuple[int, ...] = SMALL, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = rng.lognormal(0.0, 0.5, shape[0])[:, None, None]
    return (rng.normal(size=shape) * scale + offset).astype(np.float32)


def record_size(codec: str, shape: tuple[int, ...] = SMALL) -> int:
    return RECORD_OVERHEAD + get_codec(codec).bytes_per_sample(shape)


def test_budget_never_exceeded_under_random_adds():
    for trial, codec in enumerate(["int8-channel", "int4-channel", "fp16", "pca:0.9", "int8-channel"]):
        rng = random.Random(trial)
        per_record = record_size(codec)
        budget = FILE_HEADER_SIZE + rng.randint(3, 40) * per_record + rng.randint(0, per_record)
        buf = ReplayBuffer(budget, codec, seed=trial, policy=["random", "coverage"][trial % 2])
        tasks = rng.sample(range(100), 6)
        for i in range(300):
            # Tasks mostly arrive in order but old ones come back, as on a device.
            task = tasks[min(i // 50 + (rng.random() < 0.1) * -rng.randint(0, 2), 5)]
            buf.add(task, latent(i), sample_id=i)
            assert buf.nbytes <= budget
            if i % 37 == 0:
                assert len(buf.to_bytes()) == buf.nbytes
        stats = buf.stats()
        assert stats["total_bytes"] == buf.nbytes <= budget
        assert all(b <= buf.quota() for b in stats["bytes_per_task"].values())


def test_budget_shared_equally_and_shrinks_old_tasks():
    per_record = record_size("int8-channel")
    budget = FILE_HEADER_SIZE + 60 * per_record + 3 * TASK_RECORD_SIZE
    buf = ReplayBuffer(budget, "int8-channel", seed=1)
    for i in range(100):
        buf.add(0, latent(i), i)
    assert len(buf) == (budget - FILE_HEADER_SIZE - TASK_RECORD_SIZE) // per_record
    for task in (1, 2):
        for i in range(100):
            buf.add(task, latent(1000 * task + i), i)
        counts = buf.stats()["records_per_task"]
        assert set(counts.values()) == {(buf.quota() - TASK_RECORD_SIZE) // per_record}, counts
    assert buf.stats()["records_per_task"] == {0: 20, 1: 20, 2: 20}
    assert buf.stats()["offered_per_task"] == {0: 100, 1: 100, 2: 100}


def test_reservoir_uniform_and_deterministic():
    codec = get_codec("int8-channel")
    encoded = [codec.encode(latent(i, shape=(1, 2, 2))) for i in range(50)]
    capacity = 10
    budget = FILE_HEADER_SIZE + TASK_RECORD_SIZE + capacity * (RECORD_OVERHEAD + encoded[0].nbytes)
    counts = np.zeros(50)
    trials = 400
    for seed in range(trials):
        buf = ReplayBuffer(budget, "int8-channel", seed=seed)
        for i, e in enumerate(encoded):
            buf.add(0, e, i)
        ids = [r.sample_id for r in buf.records()]
        assert len(ids) == capacity
        counts[ids] += 1
    expected = trials * capacity / 50  # 80 per sample id
    assert counts.min() > 0.5 * expected and counts.max() < 1.5 * expected, counts
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 100, chi2  # 49 degrees of freedom: mean 49, p(>100) ~ 2e-5

    def run(seed: int) -> list[int]:
        buf = ReplayBuffer(budget, "int8-channel", seed=seed)
        for i, e in enumerate(encoded):
            buf.add(0, e, i)
        return [r.sample_id for r in buf.records()]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_coverage_policy_keeps_every_cluster():
    per_record = record_size("int8-channel")
    budget = FILE_HEADER_SIZE + TASK_RECORD_SIZE + 5 * per_record
    # 5 clusters, one of them rare: random selection of 5 of 41 usually misses it, k-center does not.
    offsets = [0.0] * 10 + [5.0] * 10 + [-5.0] * 10 + [10.0] * 10 + [20.0]
    latents = [latent(i, offset=o) for i, o in enumerate(offsets)]
    buf = ReplayBuffer(budget, "int8-channel", policy="coverage")
    assert buf.fit_task(0, latents) == 5
    kept = sorted({offsets[r.sample_id] for r in buf.records()})
    assert kept == [-5.0, 0.0, 5.0, 10.0, 20.0]
    # Shrinking for a new task uses the same policy: the extremes survive.
    buf2 = ReplayBuffer(FILE_HEADER_SIZE + 2 * TASK_RECORD_SIZE + 10 * per_record, "int8-channel",
                        policy="coverage")
    buf2.fit_task(0, latents)
    buf2.add(1, latent(999), 0)
    kept = {offsets[r.sample_id] for r in buf2.records(0)}
    assert len(buf2.stats()["records_per_task"]) == 2 and {-5.0, 20.0} <= kept


def test_save_load_roundtrip_byte_identical(tmp_path):
    buf = ReplayBuffer("60kB", "int4-channel", seed=5)
    for i in range(120):
        buf.add(i // 40, latent(i), i, timestamp=1.7e9 + i)
    path = buf.save(tmp_path / "buf.edgeadrb")
    data = path.read_bytes()
    assert len(data) == buf.nbytes
    loaded, report = ReplayBuffer.load(path)
    assert report.dropped == 0 and report.errors == [] and report.kept == len(buf)
    assert loaded.to_bytes() == data
    assert [(r.task_id, r.timestamp, r.sample_id, r.data) for r in loaded.records()] == \
        [(r.task_id, r.timestamp, r.sample_id, r.data) for r in buf.records()]
    assert loaded.stats() == buf.stats()
    latents, tasks = loaded.sample(7, rng=0)
    assert latents.shape == (7, *SMALL) and latents.dtype == np.float32 and set(tasks) <= {0, 1, 2}
    loaded.add(3, latent(500), 500)  # a reloaded buffer keeps working within its budget
    assert loaded.nbytes <= loaded.budget_bytes and len(loaded.stats()["records_per_task"]) == 4


def _saved_buffer(tmp_path: Path) -> tuple[Path, list[tuple[int, int]], ReplayBuffer]:
    buf = ReplayBuffer("100kB", "int8-channel", seed=2)
    for i in range(12):
        buf.add(i // 4, latent(i), i)
    path = buf.save(tmp_path / "buf.bin")
    # Byte ranges of the sample records, in file order (each task record precedes its samples).
    ranges, pos = [], FILE_HEADER_SIZE
    for task in buf.tasks:
        pos += TASK_RECORD_SIZE
        for r in buf.records(task):
            ranges.append((pos, pos + r.nbytes))
            pos += r.nbytes
    return path, ranges, buf


@pytest.mark.parametrize("where", ["payload", "length", "marker", "crc"])
def test_corrupt_record_dropped_others_kept(tmp_path, where):
    path, ranges, buf = _saved_buffer(tmp_path)
    k = 6
    start, end = ranges[k]
    offset = {"payload": (start + end) // 2, "length": start + 5, "marker": start, "crc": end - 1}[where]
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
    loaded, report = ReplayBuffer.load(path)
    expected = [r.sample_id for r in buf.records()]
    lost = expected.pop(k)
    assert [r.sample_id for r in loaded.records()] == expected
    assert report.kept == len(expected) and report.dropped == 1
    assert f"bytes {start}-{end}" in report.errors[0] and str(path) in report.errors[0]
    assert lost not in {r.sample_id for r in loaded.records()}


def test_truncated_file_keeps_intact_records(tmp_path):
    path, ranges, buf = _saved_buffer(tmp_path)
    start, end = ranges[-3]
    path.write_bytes(path.read_bytes()[:(start + end) // 2])
    loaded, report = ReplayBuffer.load(path)
    assert [r.sample_id for r in loaded.records()] == [r.sample_id for r in buf.records()][:-3]
    assert report.dropped == 1 and "truncated" in report.errors[0]


def test_bad_header_is_a_user_error(tmp_path):
    path, _, buf = _saved_buffer(tmp_path)
    good = path.read_bytes()
    # One damaged copy of the header: the second copy is read and every record kept.
    for name, data in {"magic": b"NOTABUFF" + good[8:], "version": good[:8] + b"\x63\x00" + good[10:],
                       "crc": good[:100] + b"x" + good[101:]}.items():
        (tmp_path / f"one-{name}.bin").write_bytes(data)
        loaded, report = ReplayBuffer.load(tmp_path / f"one-{name}.bin")
        assert len(loaded) == len(buf) and report.dropped == 0 and "header" in report.errors[0], name
    both = good[:100] + b"x" + good[101:300] + b"y" + good[301:]  # the first copy and the second one
    for name, data in {"magic": b"NOTABUFF" + good[8:], "both": both, "short": good[:10]}.items():
        if name == "magic":
            data = b"NOTABUFF" + good[8:300] + b"y" + good[301:]
        bad = tmp_path / f"bad-{name}.bin"
        bad.write_bytes(data)
        with pytest.raises(UserError, match="bad-"):
            ReplayBuffer.load(bad)
    with pytest.raises(UserError, match="missing.bin"):
        ReplayBuffer.load(tmp_path / "missing.bin")


def test_budget_too_small_says_what_one_record_needs():
    need = FILE_HEADER_SIZE + TASK_RECORD_SIZE + record_size("int8-channel", (24, 32, 32))
    with pytest.raises(UserError, match=f"{need:,}"):
        ReplayBuffer(need - 1, "int8-channel", latent_shape=(24, 32, 32))
    buf = ReplayBuffer(need - 1, "int8-channel")
    with pytest.raises(UserError, match="too small"):
        buf.add(0, latent(0, shape=(24, 32, 32)), 0)
    ReplayBuffer(need, "int8-channel", latent_shape=(24, 32, 32)).add(0, latent(0, shape=(24, 32, 32)), 0)
    with pytest.raises(UserError):
        ReplayBuffer(100, "fp32")
    with pytest.raises(UserError):
        ReplayBuffer("1MB", "int8-channel", policy="lru")


def test_device_path_and_mismatches():
    q = np.random.default_rng(0).integers(-128, 128, size=SMALL, dtype=np.int8)
    buf = ReplayBuffer("20kB", "int8-device")
    assert buf.add_quantized(0, q, 0.05, 3, sample_id=0)
    (record,) = buf.records()
    assert record.encoded.arrays["payload"].tobytes() == q.tobytes()
    np.testing.assert_array_equal(record.decode(), np.float32(0.05) * (q.astype(np.float32) - 3))
    with pytest.raises(UserError, match="int8-device"):
        ReplayBuffer("20kB", "int8-channel").add_quantized(0, q, 0.05, 3, 0)
    with pytest.raises(UserError, match="encoded with"):
        ReplayBuffer("20kB", "int8-channel").add(0, get_codec("fp16").encode(latent(0)), 0)
    other = ReplayBuffer("20kB", "int8-channel")
    other.add(0, latent(0), 0)
    with pytest.raises(UserError, match="shape"):
        other.add(0, latent(1, shape=(4, 8, 9)), 1)


# -- kill test: a process killed at random moments never leaves a file that loses a completed save ----------
CHILD_DEFS = textwrap.dedent("""
    import numpy as np
    from firmware_sim.replay_buffer import ReplayBuffer

    def make_buffer():
        return ReplayBuffer(20_000, "int8-channel", seed=7)

    def step(buf, i):
        x = np.random.default_rng(i).normal(size=(8, 16, 16)).astype(np.float32)
        buf.add(i // 4, x, i, timestamp=1.7e9 + i)  # new tasks shrink old ones
""")
CHILD_MAIN = textwrap.dedent("""
    import sys
    buf = make_buffer()
    print("ready", flush=True)
    for i in range(int(sys.argv[2])):
        step(buf, i)
        buf.save(sys.argv[1])
        print(f"saved {i}", flush=True)
""")


@pytest.mark.slow
def test_killed_writer_never_loses_a_completed_save(tmp_path):
    steps = 400
    ns: dict = {}
    exec(CHILD_DEFS, ns)  # the parent replays the child's deterministic steps to know each saved state
    buf, snapshots = ns["make_buffer"](), []
    for i in range(steps):
        ns["step"](buf, i)
        snapshots.append(buf.to_bytes())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random(0)
    kills = with_saves = 0
    for run in range(50):
        path = tmp_path / f"run{run}.edgeadrb"
        child = subprocess.Popen([sys.executable, "-c", CHILD_DEFS + CHILD_MAIN, str(path), str(steps)],
                                 stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        assert child.stdout.readline().strip() == "ready"
        try:
            child.wait(timeout=rng.uniform(0.0, 0.12))
        except subprocess.TimeoutExpired:
            pass
        child.send_signal(signal.SIGKILL)
        out = child.communicate()[0]
        kills += child.returncode == -signal.SIGKILL
        saved = [int(line.split()[1]) for line in out.splitlines() if line.startswith("saved ")]
        last = saved[-1] if saved else -1
        if last < 0 and not path.exists():
            continue
        with_saves += last >= 0
        loaded, report = ReplayBuffer.load(path)
        assert report.dropped == 0 and report.errors == []
        data = path.read_bytes()
        # The file is the last completed save, or the next one if it completed before its line was printed.
        assert data in snapshots[max(last, 0):last + 2], f"run {run}: file is not save {last} or {last + 1}"
        assert loaded.nbytes <= loaded.budget_bytes
    assert kills >= 50 and with_saves >= 25, (kills, with_saves)


def test_device_modules_import_no_host_stack(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import firmware_sim.codecs
        from firmware_sim.replay_buffer import ReplayBuffer
        buf = ReplayBuffer("50kB", "int8-channel")
        buf.add(0, np.ones((4, 8, 8), np.float32), 0)
        buf.save({str(tmp_path / "b.bin")!r})
        loaded, report = ReplayBuffer.load({str(tmp_path / "b.bin")!r})
        assert report.kept == 1 and report.dropped == 0
        banned = ("torch", "tensorflow", "edgead", "export")
        leaked = [m for m in sys.modules if m.split(".")[0] in banned]
        assert not leaked, leaked
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_atomic_write_gives_normal_permissions(tmp_path):
    import os
    import stat

    from firmware_sim.atomic import atomic_write_text

    mask = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "a.json", "{}")
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
        os.chmod(p, 0o600)
        atomic_write_text(p, "{}")  # an existing file keeps its mode
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    finally:
        os.umask(mask)


def test_sample_count_mode_caps_variable_size_codecs():
    """`--memory-size N`: every codec keeps N // tasks samples per task, pca included (its records are smaller
    than the upper bound that sizes the byte budget, so the budget alone would keep more)."""
    from edgead.cl.memory import LatentMemory
    from edgead.models.teacher_student import DetectorConfig, TeacherStudent
    from firmware_sim.preprocess import Preprocess

    model = TeacherStudent(DetectorConfig.defaults("paste", "mcunet-in3", image_size=64)).eval()
    pre = Preprocess(image_size=64)
    rng = np.random.default_rng(0)
    for codec in ("pca:0.9", "int8-channel"):
        mem = LatentMemory.new(codec, model.latent_shape(), budget_bytes=None, memory_size=10, seed=0)
        for t in range(3):
            mem.update(t, model, rng.integers(0, 256, (12, 64, 64, 3), dtype=np.uint8), pre)
            assert sorted(mem.samples_per_task().values()) == [10 // (t + 1)] * (t + 1), (codec, t)
