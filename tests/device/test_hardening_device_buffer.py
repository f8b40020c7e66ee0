"""Replay buffer hardening (issue 14, device side): the header survives one damaged copy, damage is counted in
records, task ids are bounded, header fields are validated, shrinking is never silent, stale temporary files
go, and two processes writing one buffer lose nothing (the lock)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from firmware_sim.__main__ import main as fw_main
from firmware_sim.atomic import remove_stale_temps
from firmware_sim.buffer_header import HEAD, MAGIC
from firmware_sim.buffer_lock import BufferLock, lock_path
from firmware_sim.device import open_buffer
from firmware_sim.errors import UserError
from firmware_sim.replay_buffer import (
    FILE_HEADER_SIZE,
    MAX_TASK_ID,
    TASK_RECORD_SIZE,
    ReplayBuffer,
    _pack_record,
)

REPO = Path(__file__).resolve().parents[2]
SHAPE = (4, 8, 8)
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def q_latent(i: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(i).integers(-128, 128, size=shape, dtype=np.int8)


def device_buffer(n: int = 16, tasks: int = 1, budget: int = 100_000, shape: tuple[int, ...] = SHAPE
                  ) -> ReplayBuffer:
    buf = ReplayBuffer(budget, "int8-device", seed=3, latent_shape=shape)
    for i in range(n):
        buf.add_quantized(i * tasks // n, q_latent(i, shape), 0.05, -2, sample_id=i, timestamp=1.7e9 + i)
    return buf


def sample_ranges(buf: ReplayBuffer) -> list[tuple[int, int, int]]:
    """(start, end, sample id) of each sample record in the file ``buf`` writes."""
    out, pos = [], FILE_HEADER_SIZE
    for task in buf.tasks:
        pos += TASK_RECORD_SIZE
        for r in buf.records(task):
            out.append((pos, pos + r.nbytes, r.sample_id))
            pos += r.nbytes
    return out


def old_format_header(buf: ReplayBuffer) -> bytes:
    """The header as format-1 files written before the second copy existed: JSON, spaces, whole-block CRC."""
    meta = json.dumps({"shape": list(buf.shape), "codec": buf.codec.spec, "quantisation": buf.codec.description,
                       "budget_bytes": buf.budget_bytes, "seed": buf.seed, "policy": buf.policy},
                      separators=(",", ":")).encode()
    room = FILE_HEADER_SIZE - HEAD.size - 4
    head = HEAD.pack(MAGIC, 1, FILE_HEADER_SIZE, len(meta)) + meta.ljust(room, b" ")
    return head + struct.pack("<I", zlib.crc32(head))


def with_header_meta(data: bytes, meta: dict | bytes) -> bytes:
    """``data`` with an old-style header whose JSON is ``meta`` and whose CRC is valid (a crafted file)."""
    raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    room = FILE_HEADER_SIZE - HEAD.size - 4
    head = HEAD.pack(MAGIC, 1, FILE_HEADER_SIZE, len(raw)) + raw.ljust(room, b" ")
    return head + struct.pack("<I", zlib.crc32(head)) + data[FILE_HEADER_SIZE:]


# -- header ------------------------------------------------------------------------------------------------
def test_every_single_bit_flip_in_the_header_keeps_every_record(tmp_path):
    buf = device_buffer()
    good = buf.to_bytes()
    ids = [r.sample_id for r in buf.records()]
    path = tmp_path / "b.bin"
    for bit in range(0, FILE_HEADER_SIZE * 8, 7):  # every 7th bit: all regions of the header, 586 files
        data = bytearray(good)
        data[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(data))
        loaded, report = ReplayBuffer.load(path)
        assert [r.sample_id for r in loaded.records()] == ids, bit
        assert report.dropped == 0 and report.evicted == 0 and loaded.budget_bytes == buf.budget_bytes, bit


def test_old_format_files_still_read_and_new_files_read_as_format_1(tmp_path):
    buf = device_buffer()
    old = old_format_header(buf) + buf.to_bytes()[FILE_HEADER_SIZE:]
    (tmp_path / "old.bin").write_bytes(old)
    loaded, report = ReplayBuffer.load(tmp_path / "old.bin")
    assert report.errors == [] and [r.data for r in loaded.records()] == [r.data for r in buf.records()]
    # The new header is what a format-1 reader expects: version 1, its JSON first, a CRC over 508 bytes.
    new = buf.to_bytes()
    _, version, size, n = HEAD.unpack_from(new)
    assert (version, size) == (1, FILE_HEADER_SIZE)
    assert json.loads(new[HEAD.size:HEAD.size + n])["codec"] == "int8-device"
    assert struct.unpack_from("<I", new, FILE_HEADER_SIZE - 4)[0] == zlib.crc32(new[:FILE_HEADER_SIZE - 4])
    # An old file whose only header copy is damaged: salvaged when the caller knows codec and shape.
    bad = bytearray(old)
    bad[40] ^= 0x10
    (tmp_path / "old-bad.bin").write_bytes(bytes(bad))
    with pytest.raises(UserError, match="no intact second copy"):
        ReplayBuffer.load(tmp_path / "old-bad.bin")
    salvaged, report = ReplayBuffer.load(tmp_path / "old-bad.bin", expect=("int8-device", SHAPE))
    assert [r.data for r in salvaged.records()] == [r.data for r in buf.records()]
    assert report.dropped == 0 and "salvaging" in report.errors[0]


@pytest.mark.parametrize("meta, field", [
    (b"{not json", "not valid JSON"),
    ([1, 2, 3], "JSON list"),
    ({"shape": [4, 8, 8], "budget_bytes": 100000, "seed": 0, "policy": "random"}, "'codec'"),
    ({"shape": [4, -8, 8], "codec": "int8-device", "budget_bytes": 100000, "seed": 0, "policy": "random"},
     "'shape'"),
    ({"shape": [2**40, 8, 8], "codec": "int8-device", "budget_bytes": 100000, "seed": 0, "policy": "random"},
     "'shape'"),
    ({"shape": [4, 8, 8], "codec": "zip", "budget_bytes": 100000, "seed": 0, "policy": "random"}, "'codec'"),
    ({"shape": [4, 8, 8], "codec": "int8-device", "budget_bytes": "lots", "seed": 0, "policy": "random"},
     "'budget_bytes'"),
    ({"shape": [4, 8, 8], "codec": "int8-device", "budget_bytes": 100000, "seed": -1, "policy": "random"},
     "'seed'"),
    ({"shape": [4, 8, 8], "codec": "int8-device", "budget_bytes": 100000, "seed": 0, "policy": 7}, "'policy'"),
])
def test_bad_header_fields_are_user_errors_naming_the_field(tmp_path, meta, field):
    path = tmp_path / "b.bin"
    path.write_bytes(with_header_meta(device_buffer(4).to_bytes(), meta))
    with pytest.raises(UserError, match=field) as e:
        ReplayBuffer.load(path)
    assert str(path) in str(e.value)


# -- records -----------------------------------------------------------------------------------------------
def test_damage_over_three_records_counts_three(tmp_path):
    buf = device_buffer(16, shape=(24, 8, 8))  # the MCUNet-in3 latent at 64 px
    ranges = sample_ranges(buf)
    size = ranges[0][1] - ranges[0][0]
    assert 2 * size < 4100 < 3 * size, size  # the stretch below covers parts of exactly 3 records
    data = bytearray(buf.to_bytes())
    start = ranges[5][0] + 100
    data[start:start + 4000] = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    hit = {sid for s, e, sid in ranges if s < start + 4000 and e > start}
    assert len(hit) == 3
    path = tmp_path / "b.bin"
    path.write_bytes(bytes(data))
    loaded, report = ReplayBuffer.load(path)
    assert report.dropped == 3 and report.kept == 13
    assert {r.sample_id for r in loaded.records()} == {sid for _, _, sid in ranges} - hit


def test_appended_garbage_loses_nothing_and_truncation_counts_one(tmp_path):
    buf = device_buffer(16)
    path = tmp_path / "b.bin"
    path.write_bytes(buf.to_bytes() + b"\x00garbage appended by a faulty tool" * 7)
    loaded, report = ReplayBuffer.load(path)
    assert report.dropped == 0 and report.kept == 16 and "not a record" in report.errors[0]
    ranges = sample_ranges(buf)
    path.write_bytes(buf.to_bytes()[:(ranges[-1][0] + ranges[-1][1]) // 2])
    loaded, report = ReplayBuffer.load(path)
    assert report.dropped == 1 and report.kept == 15
    # Two adjacent damaged records and a damaged task record between tasks.
    buf2 = device_buffer(16, tasks=2)
    r2 = sample_ranges(buf2)
    data = bytearray(buf2.to_bytes())
    for k in (2, 3):
        data[(r2[k][0] + r2[k][1]) // 2] ^= 0xFF
    data[r2[7][1] + 3] ^= 0xFF  # the task record after sample 7 (the second task's)
    path.write_bytes(bytes(data))
    loaded, report = ReplayBuffer.load(path)
    assert report.dropped == 2 and report.kept == 14 and loaded.stats()["records_per_task"] == {0: 6, 1: 8}


def test_absurd_task_ids_refused(tmp_path):
    buf = device_buffer(4)
    with pytest.raises(UserError, match=f"0..{MAX_TASK_ID}"):
        buf.add_quantized(10**12, q_latent(9), 0.05, -2, sample_id=9)
    body = buf.codec.encode_quantized(q_latent(9), 0.05, -2).to_bytes()
    forged = _pack_record(2, 10**12, 0.0, 1, b"") + _pack_record(1, 10**12, 0.0, 9, body)  # valid CRCs
    path = tmp_path / "b.bin"
    path.write_bytes(buf.to_bytes() + forged)
    loaded, report = ReplayBuffer.load(path)
    assert loaded.tasks == [0] and len(loaded) == 4 and report.dropped == 1
    assert any("task id 1000000000000" in e for e in report.errors)


# -- shrinking ---------------------------------------------------------------------------------------------
def test_smaller_budget_refused_unless_shrink_and_evictions_counted(tmp_path):
    buf = device_buffer(16)
    path = buf.save(tmp_path / "b.bin")
    with pytest.raises(UserError, match="--shrink") as e:
        open_buffer(path, 4000, shrink=False)
    assert "16 record(s)" in str(e.value) and "would be deleted" in str(e.value)
    small, report = open_buffer(path, 4000, shrink=True)
    assert report.evicted == 16 - len(small) > 0 and report.kept == len(small)
    assert ReplayBuffer.load(path)[0].to_bytes() == buf.to_bytes()  # refusing changed nothing
    # A header whose budget is below its own content: evictions are reported, never "dropped 0" in silence.
    meta = {"shape": list(SHAPE), "codec": "int8-device", "budget_bytes": 4000, "seed": 0, "policy": "random"}
    path.write_bytes(with_header_meta(buf.to_bytes(), meta))
    loaded, report = ReplayBuffer.load(path)
    assert report.dropped == 0 and report.evicted == 16 - len(loaded) > 0
    assert any("evicted" in e for e in report.errors)
    with pytest.raises(UserError, match="below what it holds"):
        open_buffer(path, shrink=False)
    kept, _ = open_buffer(path, budget=buf.budget_bytes, shrink=False)  # a budget that holds it all: nothing lost
    assert len(kept) == 16


def test_cli_import_refuses_a_shrinking_budget(tmp_path, capsys):
    src, dest = tmp_path / "src.bin", tmp_path / "dest.bin"
    device_buffer(16).save(src)
    device_buffer(16).save(dest)
    assert fw_main(["buffer", "import", str(src), str(dest), "--budget", "4000"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "--shrink" in err and "Traceback" not in err
    assert fw_main(["buffer", "import", str(src), str(dest), "--mode", "replace", "--budget", "4000",
                    "--shrink"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total_bytes"] <= 4000 and ReplayBuffer.load(dest)[0].budget_bytes == 4000


# -- stale temporary files --------------------------------------------------------------------------------
def test_stale_temps_removed_only_for_this_buffer(tmp_path):
    path = device_buffer(4).save(tmp_path / "b.bin")
    stale = [tmp_path / ".b.bin.abcd1234.tmp", tmp_path / ".b.bin.zz_99xyz.tmp"]
    other = [tmp_path / ".b.bin.x.abcd1234.tmp", tmp_path / "b.bin.tmp", tmp_path / ".c.bin.abcd1234.tmp"]
    for p in stale + other:
        p.write_bytes(b"x" * 1000)
    assert sorted(remove_stale_temps(path)) == sorted(stale)
    assert all(p.exists() for p in other) and not any(p.exists() for p in stale)
    # `buffer import` removes them under the lock.
    stale[0].write_bytes(b"x")
    assert fw_main(["buffer", "import", str(path), str(path)]) == 0
    assert not stale[0].exists()


# -- concurrency -------------------------------------------------------------------------------------------
def test_lock_refuses_a_second_writer_and_wait_queues(tmp_path):
    path = tmp_path / "b.bin"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from firmware_sim.buffer_lock import BufferLock
        with BufferLock({str(path)!r}):
            print("locked", flush=True)
            sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"in use by another process \\(pid {holder.pid}") as e:
            BufferLock(path).acquire()
        assert "--wait" in str(e.value)
        import threading

        notes: list[str] = []
        waiter = BufferLock(path, wait=True, notify=notes.append)
        t0 = time.monotonic()
        queued = threading.Thread(target=waiter.acquire)
        queued.start()
        while not notes and time.monotonic() - t0 < 20:  # the waiter says it waits before the holder lets go
            time.sleep(0.05)
        assert notes and "waiting" in notes[0]
        assert not waiter.held
        holder.stdin.write("\n")
        holder.stdin.flush()
        queued.join(30)
        assert waiter.held and time.monotonic() - t0 < 30
        waiter.release()
    finally:
        holder.kill()
        holder.wait()
    assert lock_path(path).exists()  # left in place on purpose
    with BufferLock(path):  # the holder is gone: free again
        pass


WRITER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from firmware_sim.buffer_lock import BufferLock
    from firmware_sim.replay_buffer import ReplayBuffer
    from firmware_sim.device import open_buffer
    path, worker, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for i in range(n):
        # Each append is a whole attach: lock, load, add, save, release, as `run --buffer --wait` does per run.
        with BufferLock(path, wait=True):
            try:
                buf, _ = open_buffer(path, shrink=False)
            except Exception:
                buf = ReplayBuffer(400_000, "int8-device", latent_shape=(4, 8, 8))
            sid = worker * 1000 + i
            q = np.random.default_rng(sid).integers(-128, 128, (4, 8, 8), dtype=np.int8)
            stored = buf.add_quantized(0, q, 0.05, -2, sample_id=sid)
            buf.save(path)
        print(json.dumps({"sample": sid, "buffered": stored}), flush=True)
""")


def test_two_processes_appending_lose_no_buffered_record(tmp_path):
    path = tmp_path / "shared.bin"
    ReplayBuffer(400_000, "int8-device", latent_shape=SHAPE).save(path)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), "30"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV) for w in (1, 2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    buffered = {json.loads(line)["sample"] for out, _ in outs for line in out.splitlines()
                if json.loads(line)["buffered"]}
    assert len(buffered) == 60
    loaded, report = ReplayBuffer.load(path)
    assert report.dropped == 0 and {r.sample_id for r in loaded.records()} == buffered
    assert loaded.stats()["offered_per_task"][0] == 60
