"""Issue 21's replay-buffer cases (bad-input probe of 2026-12): each failed on the code before the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

from firmware_sim.__main__ import main as fw_main
from firmware_sim.buffer_header import pack_header
from firmware_sim.buffer_lock import BufferLock
from firmware_sim.commands import buffer_import
from firmware_sim.errors import UserError
from firmware_sim.replay_buffer import ReplayBuffer
from firmware_sim.sizes import MAX_SIZE, parse_size

from .test_hardening_device_buffer import ENV, SHAPE, device_buffer, with_header_meta

OVER = {"shape": list(SHAPE), "codec": "int8-device", "budget_bytes": 4000, "seed": 0, "policy": "random"}


@pytest.mark.parametrize("size", ["1e30B", "300TB", "1e400B", 2**60, "9" * 400])
def test_sizes_beyond_what_a_header_holds_are_refused_when_parsed(size):
    # Cases 58/59: 1e30B made a buffer every reader refused; 1e400B said "header description is 635 B".
    with pytest.raises(UserError, match="expected at most 281.47 TB"):
        parse_size(size)
    with pytest.raises(UserError, match="expected at most"):
        ReplayBuffer(size, "int8-device", latent_shape=SHAPE)
    assert parse_size(MAX_SIZE) == MAX_SIZE


def test_a_header_is_validated_before_it_is_written():
    meta = {**OVER, "budget_bytes": MAX_SIZE + 1}
    with pytest.raises(UserError, match="budget_bytes"):
        pack_header(meta)
    with pytest.raises(UserError, match="shape"):
        pack_header({**OVER, "shape": [4, 8, 0]})


def test_an_explicit_budget_reads_a_header_whose_budget_is_out_of_range(tmp_path):
    # Case 59's files (written before sizes were bounded): every reader refused them, --budget and --shrink too.
    from firmware_sim.device import open_buffer

    path = tmp_path / "b.bin"
    path.write_bytes(with_header_meta(device_buffer(16).to_bytes(), {**OVER, "budget_bytes": 10**30}))
    with pytest.raises(UserError, match="budget_bytes"):
        ReplayBuffer.load(path)
    buf, report = open_buffer(path, "100kB", shrink=False)
    assert len(buf) == 16 and report.dropped == report.evicted == 0 and buf.budget_bytes == 100_000
    assert any("out of range" in e for e in report.errors)
    with pytest.raises(UserError, match="--shrink"):
        open_buffer(path, "4kB", shrink=False)


def test_profile_with_an_absurd_budget_is_a_clear_error(tmp_path, capsys):
    # Case 58 for profile: OverflowError traceback.
    assert fw_main(["profile", "--artifact", str(tmp_path), "--budget", "1e400B"]) == 2
    err = capsys.readouterr().err
    assert "1e+400" in err and "at most" in err and "Traceback" not in err


def test_stats_of_a_header_with_another_latent_shape_counts_each_record_once(tmp_path, capsys):
    # "dropped 46" for a file of 16 records: each record was counted as ~3 of the header's smaller size.
    buf = device_buffer(16, shape=(8, 8, 8))
    path = tmp_path / "b.bin"
    path.write_bytes(with_header_meta(buf.to_bytes(), {**OVER, "shape": [4, 8, 8], "budget_bytes": 100_000}))
    loaded, report = ReplayBuffer.load(path)
    assert report.dropped == 16 and len(loaded) == 0
    assert all("shape (8, 8, 8), the file header says (4, 8, 8)" in e for e in report.errors)
    assert fw_main(["buffer", "stats", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["load"]["dropped"] == 16


@pytest.mark.parametrize("argv", [["buffer", "export", "{src}", "{out}"],
                                  ["buffer", "import", "{src}", "{out}", "--mode", "replace"],
                                  ["buffer", "import", "{src}", "{dest}", "--mode", "merge"]])
def test_export_and_import_never_evict_without_shrink(tmp_path, capsys, argv):
    # Case 67: 14 of 16 records evicted with exit 0 and no --shrink.
    src, dest, out = tmp_path / "src.bin", tmp_path / "dest.bin", tmp_path / "out.bin"
    src.write_bytes(with_header_meta(device_buffer(16).to_bytes(), OVER))
    device_buffer(2).save(dest)
    before = dest.read_bytes()
    args = [a.format(src=src, dest=dest, out=out) for a in argv]
    assert fw_main(args) == 2
    err = capsys.readouterr().err
    assert "--shrink" in err and "would be deleted" in err and "Traceback" not in err
    assert not out.exists() and dest.read_bytes() == before
    assert fw_main([*args, "--shrink"]) == 0
    assert json.loads(capsys.readouterr().out)["load"]["evicted"] > 0


def test_host_device_buffer_warns_on_evicted_records(tmp_path):
    # Case 68: the host replayed 1 of 16 device latents without a word.
    from edgead.cl.memory import LatentMemory

    path = tmp_path / "b.bin"
    path.write_bytes(with_header_meta(device_buffer(16).to_bytes(), OVER))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        memory = LatentMemory.from_file(path, seed=0)
    assert len(memory) < 16
    assert any(f"evicted {16 - len(memory)}" in str(w.message) for w in seen), [str(w.message) for w in seen]


HOLDER = textwrap.dedent("""
    import sys, time
    from firmware_sim.buffer_lock import BufferLock
    with BufferLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_a_symlink_and_its_target_are_one_buffer(tmp_path):
    # Case 76: one writer through a link, one through the real path, each with its own lock; the link writer's
    # rename replaced the link by a file and 24 buffered records never reached the real buffer.
    real, link, src = tmp_path / "real.bin", tmp_path / "link.bin", tmp_path / "src.bin"
    device_buffer(4).save(real)
    os.symlink(real, link)
    device_buffer(6).save(src)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(real)], stdout=subprocess.PIPE, text=True,
                              env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match="in use by another process"):
            buffer_import(src, link)
    finally:
        holder.kill()
        holder.wait()
    buffer_import(src, link, mode="replace")
    assert link.is_symlink() and os.path.realpath(link) == str(real)
    assert len(ReplayBuffer.load(real)[0]) == 6
    buf, _ = ReplayBuffer.load(link)
    buf.save(link)  # a save through the link writes the target and keeps the link
    assert link.is_symlink()
    with BufferLock(link):  # the lock of the link is the lock of the target
        with pytest.raises(UserError, match="in use"):
            buffer_import(src, real)


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    from firmware_sim.atomic import atomic_write_bytes
    from firmware_sim.buffer_log import write_at
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a size limit then fails the write (EFBIG), as a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    for call in (lambda: atomic_write_bytes(sys.argv[1], bytes(10_000)),
                 lambda: write_at(__import__("pathlib").Path(sys.argv[2]), [(4000, bytes(1000))])):
        try:
            call()
        except OSError as e:
            print(e.filename)
""")


def test_write_errors_name_the_buffer_file(tmp_path):
    # "a file: No space left on device": errors of a write or fsync carry no file name of their own.
    target, existing = tmp_path / "new.bin", tmp_path / "old.bin"
    existing.write_bytes(bytes(100))
    r = subprocess.run([sys.executable, "-c", FULL_DISK, str(target), str(existing)], capture_output=True,
                       text=True, env=ENV, timeout=60)
    assert r.stdout.split() == [str(target), str(existing)], r.stderr[-2000:]
    assert not target.exists() and existing.stat().st_size <= 4096
