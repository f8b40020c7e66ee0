"""The device bundle: `python -m firmware_sim bundle ART OUT` / `edgead export --bundle OUT` write a folder and a
.tar.gz with firmware_sim, the artifact (only the formats asked for), requirements-device.txt and a README; a
fresh venv that installs only those requirements runs it and scores exactly as the host's device run does; the
requirements resolve for a 64-bit Raspberry Pi (Bookworm, Python 3.11, aarch64)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from firmware_sim.bundle import make_bundle, requirements
from firmware_sim.errors import UserError
from firmware_sim.manifest import load_manifest
from tests.device.edgetpu_artifact import edgetpu_artifact

ROOT = Path(__file__).resolve().parents[2]
PI_PLATFORMS = ("manylinux_2_34_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64")


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> dict:
    return edgetpu_artifact(tmp_path_factory)


def _names(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_requirements_name_onnxruntime_only_for_onnx_formats():
    tfl, onnx = requirements(["tflite-int8"]), requirements(["tflite-int8", "onnx-int8"])
    for text in (tfl, onnx):
        lines = [line for line in text.splitlines() if line and not line.startswith("#")]
        assert any(line.startswith("numpy") and "<2" in line for line in lines)
        assert any(line.startswith("pillow") for line in lines) and any("ai-edge-litert" in x for x in lines)
        assert not any(x.startswith(("torch", "tensorflow", "click")) for x in lines)
    assert "onnxruntime" not in tfl and "onnxruntime" in onnx


@pytest.mark.slow
def test_bundle_holds_only_the_formats_asked_for(art, tmp_path):
    res = make_bundle(art["art"], tmp_path / "b", "tflite-int8")
    out = Path(res["bundle"])
    names = _names(out)
    assert {"README.md", "requirements-device.txt", "firmware_sim/__init__.py", "firmware_sim/__main__.py",
            "firmware_sim/profiles.json"} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    art_files = {n.split("/", 1)[1] for n in names if n.startswith("artifact/")}
    assert art_files == {"manifest.json", "fidelity.json", "trunk.int8.tflite", "head.int8.tflite",
                         "full.int8.tflite"}  # no onnx, no Edge TPU copies: not asked for
    m = load_manifest(out / "artifact")
    assert m.formats == ["tflite-int8"] and "edgetpu" not in m.data["formats"]["tflite-int8"]["graphs"]["trunk"]
    assert "onnxruntime" not in (out / "requirements-device.txt").read_text()
    readme = (out / "README.md").read_text()
    assert "Bookworm" in readme and "manylinux_2_34" in readme and "numpy < 2" in readme
    assert "Coral Edge TPU" not in readme
    with tarfile.open(res["archive"]) as tar:
        in_tar = {m.name for m in tar.getmembers() if m.isfile()}
    assert in_tar == {f"b/{n}" for n in names}
    with pytest.raises(UserError, match="already exists"):
        make_bundle(art["art"], tmp_path / "b", "tflite-int8")
    with pytest.raises(UserError, match="onnx.*not exported here"):
        make_bundle(art["art"], tmp_path / "c", "onnx")


@pytest.mark.slow
def test_default_bundle_keeps_everything_with_edgetpu(art, tmp_path):
    from click.testing import CliRunner

    from edgead.cli.device import device

    r = CliRunner().invoke(device, ["bundle", str(art["art"]), str(tmp_path / "all"), "--no-archive"])
    assert r.exit_code == 0, (r.output, r.exception)
    res = json.loads(r.output)
    out = Path(res["bundle"])
    assert res["archive"] is None and not (tmp_path / "all.tar.gz").exists()
    m = load_manifest(out / "artifact")
    assert m.formats == load_manifest(art["art"]).formats
    assert "trunk.int8_edgetpu.tflite" in m.data["files"] and res["edgetpu"] is True
    assert "onnxruntime" in (out / "requirements-device.txt").read_text()
    assert "Coral Edge TPU" in (out / "README.md").read_text()


@pytest.mark.slow
def test_export_cli_writes_a_bundle(art, tmp_path):
    from click.testing import CliRunner

    from edgead.cli.export import export_cmd

    out, bundle = tmp_path / "art", tmp_path / "bundle"
    r = CliRunner().invoke(export_cmd, ["--run", str(art["run"]), "--format", "onnx", "--calibration", "50",
                                        "--out", str(out), "--bundle", str(bundle), "--allow-drift", "--quiet"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "only 10 normal training images" in r.output or "only 11 normal training images" in r.output
    assert f"wrote device bundle {bundle}" in r.output and (tmp_path / "bundle.tar.gz").is_file()
    assert load_manifest(bundle / "artifact").formats == ["onnx"]
    assert "onnxruntime" in (bundle / "requirements-device.txt").read_text()


@pytest.mark.slow
def test_bundle_installs_in_a_fresh_venv_and_scores_like_the_host(art, tmp_path):
    """A plain venv (no system site-packages: no torch, no tensorflow) with only requirements-device.txt
    installed, the archive unpacked elsewhere, `python -m firmware_sim run` on an image."""
    res = make_bundle(art["art"], tmp_path / "bundle", "tflite-int8")
    unpacked = tmp_path / "device"
    unpacked.mkdir()
    with tarfile.open(res["archive"]) as tar:
        tar.extractall(unpacked, filter="data")
    home = unpacked / "bundle"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3")
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(home / "requirements-device.txt")],
                         capture_output=True, text=True, env=env, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    probe = subprocess.run([str(py), "-c", "import importlib.util as u, firmware_sim; print(firmware_sim.__file__); "
                            "print([m for m in ('torch', 'tensorflow', 'edgead', 'click') if u.find_spec(m)])"],
                           capture_output=True, text=True, env=env, cwd=home, timeout=120)
    where, heavy = probe.stdout.splitlines()
    assert Path(where).resolve().is_relative_to(home.resolve()) and heavy == "[]", probe.stdout

    image = sorted((art["data"] / "nut" / "test").rglob("*.png"))[0]
    dev = subprocess.run([str(py), "-m", "firmware_sim", "run", "--artifact", "artifact", "--images", str(image)],
                         capture_output=True, text=True, env=env, cwd=home, timeout=300)
    assert dev.returncode == 0 and "Traceback" not in dev.stderr, dev.stderr
    host = subprocess.run([sys.executable, "-m", "firmware_sim", "run", "--artifact", str(art["art"]), "--format",
                           "tflite-int8", "--images", str(image)], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=300)
    assert host.returncode == 0, host.stderr
    d, h = json.loads(dev.stdout.splitlines()[0]), json.loads(host.stdout.splitlines()[0])
    assert d["decision"] == h["decision"]
    assert d["score"] == pytest.approx(h["score"], rel=1e-5) and d["normalized_score"] == pytest.approx(
        h["normalized_score"], rel=1e-5)
    summary = json.loads(dev.stderr.strip().splitlines()[-1])["summary"]
    assert summary["interpreter"] == "ai_edge_litert.interpreter" and summary["format"] == "tflite-int8"


@pytest.mark.slow
def test_requirements_resolve_for_a_64bit_raspberry_pi(art, tmp_path):
    """pip resolves every requirement to aarch64 wheels for Python 3.11 (Raspberry Pi OS Bookworm 64-bit): a
    plain bundle with ai-edge-litert, and the default bundle of this artifact, which keeps its Edge TPU graphs
    (test_default_bundle_keeps_everything_with_edgetpu) and so pins the Coral's tflite-runtime 2.14.0 instead."""
    cases = [("tflite-int8,onnx-int8", False, "ai_edge_litert-", "tflite_runtime-"),
             (None, True, "tflite_runtime-2.14.0-", "ai_edge_litert-")]
    for formats, edgetpu, interpreter, absent in cases:
        out = tmp_path / f"bundle-{'edgetpu' if edgetpu else 'cpu'}"
        res = make_bundle(art["art"], out, formats, archive=False)  # both formats: onnxruntime included
        assert res["edgetpu"] is edgetpu
        reqs = Path(res["bundle"]) / "requirements-device.txt"
        assert "onnxruntime" in reqs.read_text()
        dest = tmp_path / f"wheels-{out.name}"
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
               *(a for p in PI_PLATFORMS for a in ("--platform", p)), "--python-version", "3.11", "-d", str(dest),
               "-r", str(reqs)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        wheels = [p.name for p in dest.glob("*.whl")]
        for dist in ("numpy-1.", "pillow-", interpreter, "onnxruntime-"):
            hits = [w for w in wheels if w.lower().startswith(dist)]
            assert hits, (dist, wheels)
            assert all("aarch64" in w or w.endswith("-any.whl") for w in hits), hits
        assert not [w for w in wheels if w.lower().startswith(absent)], (formats, wheels)


def _pip_download(spec: str, platforms: tuple[str, ...], python: str, dest: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           *(a for p in platforms for a in ("--platform", p)), "--python-version", python, "-d", str(dest), spec]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


BULLSEYE_64 = ("manylinux_2_31_aarch64", "manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64")
BOOKWORM_64 = ("manylinux_2_34_aarch64", *BULLSEYE_64)
BOOKWORM_32 = ("manylinux_2_34_armv7l", "manylinux_2_31_armv7l", "manylinux_2_27_armv7l", "manylinux2014_armv7l")
# (requirement, platform tags the OS accepts, Python, whether a wheel exists): the device README's OS table.
WHEELS = [
    ("ai-edge-litert==2.3.0", ("manylinux_2_27_aarch64",), "3.11", True),  # any glibc >= 2.27
    ("tflite-runtime==2.14.0", ("manylinux_2_34_aarch64",), "3.11", True),  # Bookworm 64-bit
    ("tflite-runtime==2.14.0", BULLSEYE_64, "3.11", False),  # glibc 2.31 is too old for it
    ("ai-edge-litert==2.3.0", BOOKWORM_64, "3.13", True),  # Trixie
    ("tflite-runtime", BOOKWORM_64, "3.13", False),
    ("tflite-runtime==2.14.0", BOOKWORM_32, "3.11", True),  # 32-bit Raspberry Pi OS
    ("ai-edge-litert", BOOKWORM_32, "3.11", False),
    ("onnxruntime", BOOKWORM_32, "3.11", False),
]


@pytest.mark.slow
def test_interpreter_wheels_per_raspberry_pi_os(tmp_path):
    """What the device README's OS table says, asked of the package index: which interpreter has a wheel for
    which Raspberry Pi OS (its glibc's manylinux tags, its Python)."""
    for i, (spec, platforms, python, exists) in enumerate(WHEELS):
        r = _pip_download(spec, platforms, python, tmp_path / str(i))
        assert (r.returncode == 0) == exists, (spec, platforms, python, r.stderr[-1500:])
        if exists:
            wheel = next((tmp_path / str(i)).glob("*.whl")).name
            assert any(wheel.endswith(f"{p}.whl") for p in platforms), wheel
