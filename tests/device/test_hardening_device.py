"""Device hardening against a real exported model (issue 14): two `run --buffer` processes on one file, the
no-implicit-shrink rule, a manifest checked against the interpreter, bad frames skipped (decompression bombs
included), stale temporary files, profile files, a lost header salvaged with the model's latent shape.

Reuses the session's tiny PaSTe run and export (tests/conftest.py tiny_host, through test_firmware_sim's host).
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from firmware_sim import commands
from firmware_sim.__main__ import _dumps
from firmware_sim.__main__ import main as fw_main
from firmware_sim.buffer_lock import BufferLock
from firmware_sim.device import Device
from firmware_sim.errors import UserError
from firmware_sim.manifest import MANIFEST_NAME
from firmware_sim.replay_buffer import ReplayBuffer
from tests.device import test_firmware_sim as fw

host = fw.host  # the tiny exported PaSTe-MCUNet of test_firmware_sim (the session's tiny_host)
# Trains and exports a real model once (the shared fixture): minutes on a 2-core machine.
pytestmark = pytest.mark.slow


def _popen_run(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "firmware_sim", "run", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=fw.ENV, cwd=fw.ROOT)


def test_two_cli_runs_on_one_buffer_keep_every_buffered_record(host, tmp_path):
    images = host["data"] / "nut" / "train"
    n = len(commands.list_images(images, warn=lambda m: None))
    path = tmp_path / "shared.bin"
    procs = [_popen_run("--artifact", host["art"], "--images", images, "--buffer", path, "--budget", "200KB",
                        "--task", 0, "--wait", "--keep", "all") for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    buffered = sum(line["buffered"] for out, _ in outs for line in fw._lines(out))
    assert buffered == 2 * n  # the budget holds them all, so every one is reported buffered
    loaded, report = ReplayBuffer.load(path)
    assert report.dropped == 0 and len(loaded) == buffered
    assert sorted(r.sample_id for r in loaded.records()) == list(range(2 * n))  # the second run continued
    assert loaded.stats()["offered_per_task"][0] == 2 * n


def test_second_writer_refused_or_waits(host, tmp_path):
    one = next((host["data"] / "nut" / "test").rglob("*.png"))
    path = tmp_path / "b.bin"
    with BufferLock(path):
        r = fw._fw("run", "--artifact", host["art"], "--images", one, "--buffer", path, "--budget", "20KB",
                   check=False)
        assert r.returncode == 2 and "in use by another process" in r.stderr and "--wait" in r.stderr
        assert "Traceback" not in r.stderr and not path.exists()
        waiting = _popen_run("--artifact", host["art"], "--images", one, "--buffer", path, "--budget", "20KB",
                             "--wait", "--keep", "all")
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(timeout=8)  # still queued behind this lock
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err[-2000:]
    assert "waiting" in err and len(ReplayBuffer.load(path)[0]) == 1


def test_no_implicit_shrink(host, tmp_path, capsys):
    images = host["data"] / "nut" / "train"
    path = tmp_path / "b.bin"
    commands.run(host["art"], images, buffer=path, budget="40KB", task=0, warn=lambda m: None, keep="all")
    before = path.read_bytes()
    held = len(ReplayBuffer.load(path)[0])
    one = next((host["data"] / "nut" / "test").rglob("*.png"))
    argv = ["run", "--artifact", str(host["art"]), "--images", str(one), "--buffer", str(path), "--budget", "7kB",
            "--keep", "all"]
    assert fw_main(argv) == 2
    err = capsys.readouterr().err
    assert "--shrink" in err and f"{held} record(s)" in err and "Traceback" not in err
    assert path.read_bytes() == before  # refused: nothing changed
    assert fw_main(argv + ["--shrink"]) == 0
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["summary"]["buffer"]
    kept = len(ReplayBuffer.load(path)[0])
    assert summary["load"]["evicted"] == held - summary["load"]["kept"] > 0 and summary["budget_bytes"] == 7000
    assert kept == summary["records"] and path.stat().st_size <= 7000


def _tampered(host, tmp_path, edit) -> Path:
    art = tmp_path / "art"
    shutil.copytree(host["art"], art)
    d = json.loads((art / MANIFEST_NAME).read_text())
    edit(d)
    (art / MANIFEST_NAME).write_text(json.dumps(d))
    return art


def _set_image_size(d, s):
    d["input"]["image_size"] = d["input"]["preprocess"]["image_size"] = s


def _latent_zp(d, z):
    d["latent"]["quantization"]["tflite-int8"]["zero_point"] = [z]


@pytest.mark.parametrize("edit, field", [
    (lambda d: _set_image_size(d, 4096), "input.image_size"),
    (lambda d: _set_image_size(d, 32), "input.image_size"),
    (lambda d: _latent_zp(d, 10**6), "latent.quantization.tflite-int8.zero_point[0]"),
    (lambda d: _latent_zp(d, 5), "latent.quantization.tflite-int8"),
    (lambda d: d["latent"].update(shape_chw=[2**40, 8, 8]), "latent.shape_chw[0]"),
    (lambda d: d["latent"].update(shape_chw=[24, 4, 4]), "latent.shape_chw"),
    (lambda d: d["formats"]["tflite-int8"]["graphs"]["trunk"]["outputs"][0]["quantization"].update(scale=["abc"]),
     "formats.tflite-int8.graphs.trunk.outputs[0].quantization.scale[0]"),
    (lambda d: d["formats"]["tflite-int8"]["graphs"]["head"]["outputs"][0].update(shape=[1, 9, 9, 24]),
     "formats.tflite-int8.graphs.head.outputs[0]"),
    (lambda d: d["calibration"].update(threshold="high"), "calibration.threshold"),
    (lambda d: d["calibration"].update(threshold=float("nan")), "calibration.threshold"),
    (lambda d: d["calibration"].update(score_max=float("inf")), "calibration.score_max"),
    (lambda d: d.update(levels=[99]), "levels"),
    (lambda d: d.update(levels="6,10,14"), "levels"),
])
def test_manifest_checked_against_the_model(host, tmp_path, edit, field):
    art = _tampered(host, tmp_path, edit)
    with pytest.raises(UserError, match=re.escape(f"field '{field}")) as e:
        Device(art)
    assert MANIFEST_NAME in str(e.value)


def test_tampered_manifest_cli_error_and_onnx_format(host, tmp_path):
    art = _tampered(host, tmp_path, lambda d: _latent_zp(d, 10**6))
    one = next((host["data"] / "nut" / "test").rglob("*.png"))
    r = fw._fw("run", "--artifact", art, "--images", one, check=False)
    assert r.returncode == 2 and "zero_point" in r.stderr and "Traceback" not in r.stderr and r.stdout == ""
    onnx_art = tmp_path / "o"
    shutil.copytree(host["art"], onnx_art)
    d = json.loads((onnx_art / MANIFEST_NAME).read_text())
    d["formats"]["onnx"]["graphs"]["trunk"]["inputs"][0]["shape"] = [1, 3, 128, 128]
    (onnx_art / MANIFEST_NAME).write_text(json.dumps(d))
    with pytest.raises(UserError, match="formats.onnx.graphs.trunk.inputs"):
        Device(onnx_art, format="onnx")
    Device(host["art"], format="onnx")  # the untouched manifest passes the same checks


def _png_header_only(path: Path, side: int) -> None:
    """A valid PNG declaring ``side`` x ``side`` 1-bit pixels with almost no data: a decompression bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def test_bad_frames_skipped_and_the_stream_goes_on(host, tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    good = sorted((host["data"] / "nut" / "test").rglob("*.png"))[:2]
    _png_header_only(d / "a_bomb.png", 20000)  # 400 Mpx: PIL's DecompressionBombError
    shutil.copy(good[0], d / "b_good.png")
    _png_header_only(d / "c_big.png", 13000)  # 169 Mpx: PIL only warns; refused as well
    blob = good[1].read_bytes()
    (d / "d_truncated.png").write_bytes(blob[:len(blob) // 2])
    (d / "e_not_an_image.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    shutil.copy(good[1], d / "f_good.png")
    r = fw._fw("run", "--artifact", host["art"], "--images", d, "--buffer", tmp_path / "b.bin", "--budget", "20KB",
               "--keep", "all")
    lines = fw._lines(r.stdout)
    assert [Path(line["path"]).name for line in lines] == ["b_good.png", "f_good.png"]
    summary = json.loads(r.stderr.strip().splitlines()[-1])["summary"]
    assert summary["images"] == 2 and summary["skipped"] == 4 and "Traceback" not in r.stderr
    for name in ("a_bomb.png", "c_big.png", "d_truncated.png", "e_not_an_image.jpg"):
        assert f"skipped {d / name}" in r.stderr
    assert "too large to decode safely" in r.stderr
    assert ReplayBuffer.load(tmp_path / "b.bin")[0].stats()["offered_per_task"][0] == 2


def test_stale_temps_removed_and_lost_header_salvaged(host, tmp_path):
    images = host["data"] / "nut" / "train"
    path = tmp_path / "b.bin"
    commands.run(host["art"], images, buffer=path, budget="60KB", task=0, warn=lambda m: None)
    before = ReplayBuffer.load(path)[0]
    stale = tmp_path / ".b.bin.k1ll3d_x.tmp"
    stale.write_bytes(b"\x00" * 5000)
    data = bytearray(path.read_bytes())
    data[20] ^= 0x01  # the first header copy
    data[300] ^= 0x01  # and the second: only the model's latent shape can read the records now
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="no intact second copy"):
        ReplayBuffer.load(path)
    warnings: list[str] = []
    one = next((host["data"] / "brick" / "test").rglob("*.png"))
    # The budget lived in the lost header: the user gives it again (without it, the file's size is used).
    summary = commands.run(host["art"], one, buffer=path, budget="60KB", task=1, warn=warnings.append)
    assert not stale.exists() and any("temporary file" in w for w in warnings)
    assert any("salvaging" in w for w in warnings)
    after = ReplayBuffer.load(path)[0]
    old = {r.sample_id: r.data for r in before.records(0)}
    assert {r.sample_id: r.data for r in after.records(0)} == old  # every record of task 0 kept
    assert summary["buffer"]["load"]["dropped"] == 0 and set(after.tasks) == {0, 1}


@pytest.mark.parametrize("content, match", [
    ('[{"ram_bytes": 1, "flash_bytes": 1}]', "JSON list"),
    ('"profiles"', "JSON str"),
    ('{"profiles": "rpi"}', "'profiles' is str"),
    ('{"profiles": {"x": "big"}}', "profile 'x' is a JSON str"),
    ('{"profiles": {"x": {"ram_bytes": 1000, "flash_bytes": 1e400}}}', "'flash_bytes' is inf"),
    ('{"profiles": {"x": {"ram_bytes": -5, "flash_bytes": 10}}}', "'ram_bytes' is -5"),
    ('{"profiles": {"x": {"ram_bytes": 10, "flash_bytes": 10, "reserved_ram_bytes": 11}}}', "exceed"),
])
def test_bad_profile_files(host, tmp_path, capsys, content, match):
    p = tmp_path / "p.json"
    p.write_text(content)
    assert fw_main(["profile", "--artifact", str(host["art"]), "--profiles", str(p), "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and str(p) in err and "Traceback" not in err


def test_json_output_never_holds_nan():
    text = _dumps({"score": float("nan"), "maps": [float("inf"), 1.5], "n": np.float64("nan")})
    assert json.loads(text) == {"score": None, "maps": [None, 1.5], "n": None}


def test_unwritable_out_or_buffer_folder_is_a_clear_error(host, tmp_path, capsys):
    one = next((host["data"] / "nut" / "test").rglob("*.png"))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a folder cannot be made under a file (read-only folders need a non-root user)
    base = ["run", "--artifact", str(host["art"]), "--images", str(one)]
    for extra in (["--out", str(blocker / "overlays")], ["--buffer", str(blocker / "b.bin"), "--budget", "20KB"]):
        assert fw_main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(blocker) in err and "Traceback" not in err
