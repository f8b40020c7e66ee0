"""firmware_sim as a device: the CLI against the in-process Device, a tampered artifact, the int8 replay buffer
within its budget, the standalone proof (no torch / tensorflow / edgead / export imported), the whole loop
device -> host -> device, the Edge TPU delegate's error, and bad input.

One tiny run (64 px synthetic data, 1 epoch) exported once per session (tests/conftest.py) serves every test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("onnxruntime")

from firmware_sim import commands
from firmware_sim.__main__ import main as fw_main
from firmware_sim.device import Device
from firmware_sim.errors import UserError
from firmware_sim.overlay import MIN_WIDTH
from firmware_sim.replay_buffer import ReplayBuffer

# Trains and exports real models: minutes on a 2-core machine (CI runs it; -m 'not slow' skips it).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT.parent / "shared" / "weights" / "mcunet-in3"
SIZE = 64
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _fw(*args, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "firmware_sim", *map(str, args)], capture_output=True, text=True,
                       env=ENV, cwd=ROOT, timeout=120)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def _lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def host(tiny_host) -> dict:
    """A tiny PaSTe-MCUNet run on 'nut' and its export (tflite-int8 + onnx): the session's, tests/conftest.py."""
    return tiny_host


@pytest.fixture(scope="module")
def mixed_images(host, tmp_path_factory) -> Path:
    """Images of every awkward kind (grayscale, 16-bit, RGBA, another size, palette) and a non-image file."""
    d = tmp_path_factory.mktemp("imgs")
    src = sorted((host["data"] / "nut" / "test").rglob("*.png"))[:2]
    rgb = Image.open(src[0]).convert("RGB")
    rgb.save(d / "a_rgb.png")
    Image.open(src[1]).convert("RGB").resize((100, 37)).save(d / "b_other_size.jpg")
    rgb.convert("L").save(d / "c_gray.png")
    Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257).save(d / "d_16bit.png")
    rgb.convert("RGBA").save(d / "e_rgba.png")
    rgb.convert("P").save(d / "f_palette.bmp")
    (d / "notes.txt").write_text("not an image")
    return d


def test_device_runtime_prefers_the_lightest_interpreter():
    import firmware_sim.runtime

    assert firmware_sim.runtime.tflite_module()[0] == "ai_edge_litert.interpreter"  # the lightest first


def test_cli_run_matches_device_in_process(host, mixed_images, tmp_path):
    r = _fw("run", "--artifact", host["art"], "--images", mixed_images, "--out", tmp_path / "ov", "--threads", 1)
    lines = _lines(r.stdout)
    assert len(lines) == 6 and "skipped 1 non-image file" in r.stderr and "Traceback" not in r.stderr
    device = Device(host["art"], threads=1)
    assert device.format == "tflite-int8" and device.path == "trunk+head"
    for line in lines:
        assert set(line) >= {"path", "score", "normalized_score", "decision", "latency_ms", "overlay"}
        res = device.infer(line["path"])
        assert line["score"] == pytest.approx(res.score, rel=1e-6, abs=1e-9)
        assert line["decision"] == ("anomalous" if res.score > device.threshold else "normal")
        assert 0.0 <= line["normalized_score"] <= 1.0
        ov = Image.open(line["overlay"])
        # the image at its own size (--map-frame image; the legend keeps it MIN_WIDTH wide), a colour bar and
        # the score below it
        w, h = Image.open(line["path"]).size
        assert ov.size[0] == max(w, MIN_WIDTH) and ov.size[1] > h and ov.mode == "RGB"
    # Grayscale, 16-bit and palette versions of one image see the same pixels as its RGB conversion.
    by = {Path(line["path"]).stem: line["score"] for line in lines}
    assert by["c_gray"] == pytest.approx(by["d_16bit"], rel=1e-6)
    assert by["e_rgba"] == pytest.approx(by["a_rgb"], rel=1e-6)
    # ONNX through the same Device agrees with the int8 TFLite on the ranking scale (loosely: int8 vs float).
    onnx = Device(host["art"], format="onnx")
    assert onnx.infer(mixed_images / "a_rgb.png").score == pytest.approx(by["a_rgb"], rel=0.25)


def test_tampered_artifact_refused(host, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(host["art"], art)
    blob = bytearray((art / "trunk.int8.tflite").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (art / "trunk.int8.tflite").write_bytes(bytes(blob))
    one = next((host["data"] / "nut" / "test").rglob("*.png"))
    r = _fw("run", "--artifact", art, "--images", one, check=False)
    assert r.returncode == 2 and "error:" in r.stderr and "trunk.int8.tflite" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    with pytest.raises(UserError, match="sha256"):
        Device(art)


def test_buffer_within_budget_and_file_valid(host, tmp_path, capsys):
    device = Device(host["art"])
    path, budget = tmp_path / "flash" / "buffer.bin", 6000
    device.attach_buffer(path, budget, task=0, keep="all")  # every frame: this checks the buffer, not --keep
    files = sorted((host["data"] / "nut" / "train").rglob("*.png"))
    stored = [device.infer(f).stored for f in files]
    assert any(stored) and not all(stored)  # reservoir: the budget holds only some
    device.buffer.commit(path)  # the count of frames offered but not stored is written at the end of a run
    assert path.stat().st_size <= budget
    buf, report = ReplayBuffer.load(path)
    assert report.dropped == 0 and len(buf) == report.kept > 0 and buf.codec.name == "int8-device"
    assert buf.stats()["offered_per_task"][0] == len(files)
    rec = next(buf.records())
    lat = device.manifest.latent("tflite-int8")["quantization"]
    assert rec.encoded.arrays["payload"].dtype == np.int8 and tuple(rec.encoded.shape) == tuple(
        device.manifest.data["latent"]["shape_chw"])
    assert np.allclose(rec.encoded.arrays["scale"], lat["scale"])  # the trunk's own quantisation, unchanged
    # The same latent from the trunk again, byte for byte.
    one = Device(host["art"])
    one.attach_buffer(tmp_path / "one.bin", 6000, task=0, keep="all")
    img = files[rec.sample_id]
    one.infer(img)
    assert next(ReplayBuffer.load(tmp_path / "one.bin")[0].records()).data == rec.data
    # buffer stats / export / import through the CLI, once the device has let the buffer go (it holds its lock).
    device.detach_buffer()
    assert fw_main(["buffer", "stats", str(path)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["records"] == len(buf) and stats["load"]["dropped"] == 0 and stats["file_bytes"] <= budget
    assert fw_main(["buffer", "export", str(path), str(tmp_path / "host.bin")]) == 0
    host_copy = ReplayBuffer.load(tmp_path / "host.bin")[0]  # the same records, without the device's append log
    assert [(r.task_id, r.sample_id, r.data) for r in host_copy.records()] == \
        [(r.task_id, r.sample_id, r.data) for r in buf.records()]
    assert host_copy.stats()["write_mode"] == "rewrite" and host_copy.stats()["offered_per_task"] == {0: len(files)}
    assert fw_main(["buffer", "import", str(tmp_path / "one.bin"), str(path), "--mode", "merge"]) == 0
    merged = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert merged["total_bytes"] <= budget and merged["offered_per_task"]["0"] == len(files) + 1
    assert fw_main(["buffer", "import", str(tmp_path / "one.bin"), str(path), "--mode", "replace"]) == 0
    assert len(ReplayBuffer.load(path)[0]) == 1


def test_standalone_never_imports_host_code(host, mixed_images, tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        from firmware_sim import commands
        from firmware_sim.device import Device
        lines = []
        commands.run({str(host['art'])!r}, {str(mixed_images)!r}, out={str(tmp_path / 'ov')!r},
                     buffer={str(tmp_path / 'b.bin')!r}, budget='8KB', task=0, emit=lines.append, warn=lambda m: None)
        commands.buffer_stats({str(tmp_path / 'b.bin')!r})
        commands.buffer_export({str(tmp_path / 'b.bin')!r}, {str(tmp_path / 'host.bin')!r})
        commands.buffer_import({str(tmp_path / 'host.bin')!r}, {str(tmp_path / 'b.bin')!r})
        commands.profile({str(host['art'])!r}, runs=3, warmup=1, budget='8KB')
        Device({str(host['art'])!r}, format='onnx').infer({str(mixed_images / 'a_rgb.png')!r})
        bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow', 'edgead', 'export',
                                                                       'click', 'keras'))
        print(json.dumps({{"lines": len(lines), "bad": bad}}))
    """)
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", script], capture_output=True, text=True, env=ENV,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"lines": 6, "bad": []}
    imported = {ln.split("|")[-1].strip().split(".")[0] for ln in r.stderr.splitlines() if ln.startswith("import time")}
    assert "firmware_sim" in imported and not imported & {"torch", "tensorflow", "edgead", "export"}


def test_whole_loop_device_host_device(host, tmp_path):
    """Device keeps int8 latents -> host trains task 2 replaying them -> export -> the device runs the new model
    and keeps its buffer."""
    from click.testing import CliRunner

    from edgead.cli import cli

    buf_path = tmp_path / "device.bin"
    nut_imgs = host["data"] / "nut" / "train" / "good"
    r = _fw("run", "--artifact", host["art"], "--images", nut_imgs, "--buffer", buf_path, "--budget", "12KB",
            "--task", 0)
    before = ReplayBuffer.load(buf_path)[0]
    n0 = len(before)
    assert n0 > 0 and before.tasks == [0]
    host_copy = tmp_path / "for_host.bin"
    _fw("buffer", "export", buf_path, host_copy)
    res = CliRunner().invoke(cli, ["train", "--data", str(host["data"]), "--tasks", "brick", "--image-size",
                                   str(SIZE), "--epochs", "1", "--batch-size", "8", "--strategy", "compressed-replay",
                                   "--device-buffer", str(host_copy), "--out", str(tmp_path / "run2"), "--quiet"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    res = CliRunner().invoke(cli, ["export", "--run", str(tmp_path / "run2"), "--format", "tflite-int8", "--out",
                                   str(tmp_path / "art2"), "--calibration", "8", "--allow-drift", "--quiet"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    brick = host["data"] / "brick" / "test"
    r = _fw("run", "--artifact", tmp_path / "art2", "--images", brick, "--buffer", buf_path, "--task", 1)
    assert len(_lines(r.stdout)) == len([p for p in brick.rglob("*.png")])
    after, report = ReplayBuffer.load(buf_path)
    assert report.dropped == 0 and set(after.tasks) == {0, 1}
    assert after.nbytes <= 12_000
    # Task 0's records survive (shrunk to its half of the budget, never re-quantised).
    old = {r.sample_id: r.data for r in before.records(0)}
    kept = list(after.records(0))
    assert kept and all(old[r.sample_id] == r.data for r in kept)
    assert len(list(after.records(1))) > 0


def test_host_stream_keeps_the_device_trunks_int8_latents(host, tmp_path):
    """--device-trunk: the host's replay buffer holds exactly what the device's int8 trunk outputs (one format,
    one scale for every task), within the budget; a device interpreter and the host agree byte for byte."""
    from edgead.cl.config import ReplayConfig
    from edgead.cl.runner import run_stream
    from edgead.data import TaskStream
    from edgead.engine.trainer import TrainConfig
    from edgead.errors import EdgeadError
    from edgead.models.teacher_student import DetectorConfig
    from firmware_sim.preprocess import Preprocess

    det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=SIZE)
    cfg = TrainConfig(epochs=1, batch_size=8, progress=False)
    with pytest.raises(EdgeadError, match="--device-trunk ART"):
        run_stream(TaskStream(host["data"], ["nut"]), det, cfg, ReplayConfig("compressed-replay", "int8-device"),
                   tmp_path / "x", log=lambda m: None)
    with pytest.raises(EdgeadError, match="needs --codec int8-device"):
        run_stream(TaskStream(host["data"], ["nut"]), det, cfg,
                   ReplayConfig("compressed-replay", "int8-channel", device_trunk=host["art"]), tmp_path / "x",
                   log=lambda m: None)
    replay = ReplayConfig("compressed-replay", "int8-device", budget_bytes=30_000, device_trunk=host["art"])
    res = run_stream(TaskStream(host["data"], ["nut", "brick"]), det, cfg, replay, tmp_path / "r",
                     weights=str(WEIGHTS), log=lambda m: None)
    assert 0 < res["memory"]["additional_bytes"] <= 30_000
    buf, report = ReplayBuffer.load(tmp_path / "r" / "memory" / "after_task_01.edgeadrb")
    assert report.dropped == 0 and buf.codec.name == "int8-device" and set(buf.tasks) == {0, 1}
    device = Device(host["art"], format="tflite-int8")
    stream = TaskStream(host["data"], ["nut", "brick"])
    for task in stream.tasks:
        train = task.load(Preprocess(image_size=SIZE), val_fraction=cfg.val_fraction, seed=cfg.seed).train
        q, scale, zp = device.trunk_latents(train.images)
        assert q.dtype == np.int8 and q.shape[1:] == tuple(device.manifest.data["latent"]["shape_chw"])
        stored = list(buf.records(task.index))
        assert stored
        for r in stored:  # the sample id indexes the task's training images in the host's order
            assert r.encoded.arrays["payload"].tobytes() == q[r.sample_id].tobytes()
            np.testing.assert_array_equal(r.encoded.arrays["scale"], scale)


def test_edgetpu_delegate_absent_is_clear(host, tmp_path):
    with pytest.raises(UserError, match="libedgetpu.so.1"):
        Device(host["art"], delegate="edgetpu")
    with pytest.raises(UserError, match="tflite-int8"):
        Device(host["art"], format="onnx", delegate="edgetpu")
    one = next((host["data"] / "nut" / "test").rglob("*.png"))
    r = _fw("run", "--artifact", host["art"], "--images", one, "--delegate", "edgetpu", check=False)
    assert r.returncode == 2 and "libedgetpu" in r.stderr and "Traceback" not in r.stderr


def test_profile_json(host):
    r = _fw("profile", "--artifact", host["art"], "--runs", 5, "--warmup", 1, "--budget", "8KB", "--profile",
            "stm32h7", "--profile", "rpi4", "--json")
    res = json.loads(r.stdout)
    lat = res["latency_ms"]
    assert lat["runs"] == 5 and 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    assert res["ram"]["peak_rss_bytes"] > 0 and res["ram"]["analytic_peak_activation_int8_bytes"] > 0
    flash = res["flash"]
    assert flash["total_bytes"] == sum(flash["model_files"].values()) + flash["manifest_bytes"] + 8000
    rows = {row["profile"]: row for row in res["profiles"]}
    assert set(rows) == {"stm32h7", "rpi4"} and rows["rpi4"]["fits"]
    assert rows["stm32h7"]["ram_basis"] == "arena+record" and rows["rpi4"]["ram_basis"] == "peak_rss"


def test_edgead_device_group_forwards(host, tmp_path):
    from click.testing import CliRunner

    from edgead.cli.device import device

    one = next((host["data"] / "nut" / "test").rglob("*.png"))
    res = CliRunner().invoke(device, ["run", "--artifact", str(host["art"]), "--images", str(one)])
    assert res.exit_code == 0, res.output
    line = json.loads(res.output.splitlines()[0])
    assert line["score"] == pytest.approx(Device(host["art"]).infer(one).score, rel=1e-6)
    res = CliRunner().invoke(device, ["run", "--artifact", str(host["art"]), "--images", str(one), "--no-xnnpack"])
    assert res.exit_code == 0, res.output
    no_xnn = json.loads(res.output.splitlines()[0])["score"]
    assert no_xnn == pytest.approx(Device(host["art"], xnnpack=False).infer(one).score, rel=1e-6)
    assert no_xnn == pytest.approx(line["score"], rel=0.2)  # XNNPACK's int8 kernels round differently
    res = CliRunner().invoke(device, ["run", "--artifact", str(host["art"]), "--images", str(one), "--buffer",
                                      str(tmp_path / "b.bin"), "--budget", "8KB", "--keep", "all"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(device, ["buffer", "stats", str(tmp_path / "b.bin")])
    assert res.exit_code == 0 and json.loads(res.output)["offered_per_task"]["0"] == 1


@pytest.mark.parametrize("args, message", [
    (["--buffer", "{tmp}/b.bin", "--budget", "1KB"], "too small for one record"),
    (["--buffer", "{tmp}/new.bin"], "give --budget"),
    (["--budget", "8KB"], "give --buffer"),
    (["--threads", "0"], "--threads 0"),
    (["--format", "coreml"], "format 'coreml' not exported"),
])
def test_bad_run_options(host, tmp_path, capsys, args, message):
    one = next((host["data"] / "nut" / "test").rglob("*.png"))
    argv = ["run", "--artifact", str(host["art"]), "--images", str(one)] + [a.format(tmp=tmp_path) for a in args]
    assert fw_main(argv) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err and "Traceback" not in err


def test_bad_inputs(host, tmp_path, capsys):
    only_text = tmp_path / "docs"
    only_text.mkdir()
    (only_text / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="no image files"):
        commands.list_images(only_text, warn=lambda m: None)
    with pytest.raises(UserError, match="no such file or folder"):
        commands.list_images(tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"\x89PNG not really")
    lines: list[dict] = []
    with pytest.raises(UserError, match="none of the 1 image"):
        commands.run(host["art"], broken, emit=lines.append, warn=lambda m: None)
    shutil.copy(next((host["data"] / "nut" / "test").rglob("*.png")), broken / "good.png")
    warnings: list[str] = []
    summary = commands.run(host["art"], broken, emit=lines.append, warn=warnings.append)
    assert summary["images"] == 1 and summary["skipped"] == 1 and "bad.png" in warnings[0]
    not_buffer = tmp_path / "x.bin"
    not_buffer.write_bytes(b"hello")
    assert fw_main(["buffer", "stats", str(not_buffer)]) == 2
    assert "not an edgead replay buffer" in capsys.readouterr().err
    assert fw_main(["profile", "--artifact", str(host["art"]), "--profile", "nope"]) == 2
    assert "unknown device profile" in capsys.readouterr().err
    assert fw_main(["run", "--artifact", str(tmp_path), "--images", str(broken)]) == 2
    assert "no manifest" in capsys.readouterr().err
    with pytest.raises(UserError, match="expected uint8"):
        Device(host["art"]).infer(np.zeros((8, 8), np.float32))
