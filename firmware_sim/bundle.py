"""A device bundle: everything a Raspberry Pi or Coral board needs, in one folder and one .tar.gz.

OUT/firmware_sim/            this package, as is (numpy, pillow and an interpreter are all it imports)
OUT/artifact/                the artifact with only the formats asked for; its manifest rewritten for them and
                             re-verified (sizes and sha256 of every file)
OUT/requirements-device.txt  what `pip install -r` needs on the device: numpy, pillow, a TFLite interpreter,
                             onnxruntime only when an ONNX format is inside
OUT/README.md                how to install and run it, and which interpreter suits which OS

The folder is built in a temporary sibling and renamed into place, the archive written to a temporary name and
renamed, so an interrupted bundle never leaves a half-written OUT or OUT.tar.gz.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from firmware_sim import outputs
from firmware_sim.atomic import atomic_write, atomic_write_text, current_umask
from firmware_sim.device import FORMAT_PREFERENCE
from firmware_sim.edgetpu import FORMAT as EDGETPU_BASE
from firmware_sim.errors import UserError
from firmware_sim.manifest import MANIFEST_NAME, load_manifest, write_manifest
from firmware_sim.requirements import device_requirements

PACKAGE = Path(__file__).resolve().parent
REQUIREMENTS = "requirements-device.txt"
ARTIFACT = "artifact"
EDGETPU = "edgetpu"  # a bundle 'format': tflite-int8 with its Edge TPU-compiled graphs

def requirements(formats: list[str], edgetpu: bool = False) -> str:
    """requirements-device.txt for an artifact holding ``formats`` (each runtime names its own pip lines:
    firmware_sim.requirements; ``edgetpu`` pins the Coral-compatible TFLite interpreter)."""
    return device_requirements(formats, edgetpu)


def _choose(have: list[str], asked: str | list[str] | None, where: Path) -> tuple[list[str], bool | None]:
    """(formats to keep, whether the Edge TPU-compiled graphs are asked for: None = keep them if present)."""
    if asked is None:
        return list(have), None
    items = [t.strip() for t in (asked.split(",") if isinstance(asked, str) else asked)
                                        if t.strip()]
    if not items:
        raise UserError(f"--format {asked!r}: expected a comma-separated list of {', '.join(have)}")
    edgetpu = EDGETPU in items
    keep = list(dict.fromkeys(EDGETPU_BASE if f == EDGETPU else f for f in items))
    unknown = [f for f in keep if f not in have]
    if unknown:
        raise UserError(f"{where}: format(s) {', '.join(unknown)} not exported here (has {', '.join(have)})")
    return keep, edgetpu


def _subset(src: Path, dest: Path, keep: list[str], edgetpu: bool | None) -> dict:
    """Copy the files of ``keep`` into dest and write its manifest for those formats only (without the Edge
    TPU-compiled graphs when ``edgetpu`` is False); returns the manifest data written."""
    manifest = load_manifest(src)  # the source is intact before it is copied
    data = json.loads(json.dumps({k: v for k, v in manifest.data.items()
                                  if k not in ("schema", "schema_version", "files")}))  # a deep copy
    data["formats"] = {f: v for f, v in data["formats"].items() if f in keep}
    if edgetpu is False and EDGETPU_BASE in data["formats"]:
        entry = data["formats"][EDGETPU_BASE]
        entry.pop("edgetpu", None)
        for g in entry["graphs"].values():
            g.pop("edgetpu", None)
    if edgetpu and not has_edgetpu(data):
        from firmware_sim.edgetpu import manual_steps

        raise UserError(f"{src}: --format edgetpu asks for the Edge TPU-compiled graphs, and this artifact has none; "
                        + manual_steps(src))
    files = []
    for entry in data["formats"].values():
        for g in entry["graphs"].values():
            tpu = g.get("edgetpu") or {}
            files += [f for f in (g["file"], g.get("weights"), tpu.get("file"), tpu.get("log")) if f]
    extra = manifest.data.get("fidelity", {}).get("file")  # the fidelity report travels with the model
    if extra and extra in manifest.data["files"]:
        files.append(extra)
    files = list(dict.fromkeys(files))
    dest.mkdir(parents=True)
    for f in files:
        shutil.copy2(src / f, dest / f)
    write_manifest(dest, data, files)
    return load_manifest(dest).data  # what the device will read: schema, sizes and hashes


def has_edgetpu(manifest_data: dict) -> bool:
    """Whether the manifest records Edge TPU-compiled graphs."""
    entry = manifest_data["formats"].get(EDGETPU_BASE, {})
    return any((g.get("edgetpu") or {}).get("file") for g in entry.get("graphs", {}).values())


def _readme(manifest_data: dict, keep: list[str], edgetpu: bool, arm64: str = "") -> str:
    onnx = any(f.startswith("onnx") for f in keep)
    fmt = next(f for f in FORMAT_PREFERENCE if f in keep)
    tpu = ("\n## Coral Edge TPU\n\nThe tflite-int8 graphs come with their Edge TPU-compiled copies "
           "(`*_edgetpu.tflite`), compiled from the converter's own files. libedgetpu is built against one "
           "TensorFlow Lite and crashes with interpreters from much later ones (Coral's own 2021 build with "
           "tflite-runtime 2.12+: google-coral/edgetpu#812), so use Raspberry Pi OS Bookworm 64-bit (Python 3.11): "
           "requirements-device.txt pins tflite-runtime 2.14.0 (with numpy < 2) and leaves ai-edge-litert out; "
           "install a libedgetpu1-std built against TensorFlow 2.15.1 or 2.16.1 for bookworm arm64 (the "
           "community builds at https://github.com/feranick/libedgetpu/releases, which support tflite_runtime "
           "2.11.1 to 2.16.1), attach the Coral, and add `--delegate edgetpu` to `run` or `profile` "
           "(`--profile coral-usb-rpi5`). Trixie (Python 3.13) has no tflite-runtime wheel: the CPU only.\n"
           ) if edgetpu else ""
    openvino = ("OpenVINO formats need openvino (in requirements-device.txt; x86-64 and aarch64 wheels, "
                "glibc 2.35+: Bookworm or later).\n" if any(f.startswith("openvino") for f in keep) else "")
    return f"""# edgead on the device

{manifest_data['model']} on {manifest_data['backbone']}, {manifest_data['input']['image_size']} px input;
formats: {', '.join(keep)}. `firmware_sim` needs numpy, pillow and an interpreter only (no torch, no tensorflow).

## Install (Raspberry Pi OS 64-bit, Python 3.10 or newer)

```bash
python3 -m venv ~/edgead-venv
~/edgead-venv/bin/pip install -r requirements-device.txt
```

## Run (from this folder)

```bash
~/edgead-venv/bin/python -m firmware_sim run --artifact artifact --images IMAGE_OR_FOLDER [--out overlays]
~/edgead-venv/bin/python -m firmware_sim profile --artifact artifact --profile rpi4
~/edgead-venv/bin/python -m firmware_sim --help
```

`run` prints one JSON line per image (score, normalised score, decision, latency); `--buffer FILE --budget 256KB`
keeps the int8 trunk latents for replay on the host. `profile` times every format inside and names the fastest on
this board. The default format is {fmt}.

## Which TFLite interpreter for which OS

`firmware_sim` takes the first of ai-edge-litert, tflite-runtime, tensorflow.lite that is installed.

| OS | Python | interpreter |
| --- | --- | --- |
| Raspberry Pi OS Bookworm 64-bit (glibc 2.36) | 3.11 | ai-edge-litert 2.3 (manylinux_2_27 aarch64 wheel; the default here); or tflite-runtime 2.14.0 (manylinux_2_34 aarch64, needs glibc 2.34+, and numpy < 2) |
| Raspberry Pi OS Trixie 64-bit | 3.13 | ai-edge-litert (with numpy 2; tflite-runtime has no Python 3.13 wheel) |
| Raspberry Pi OS Bullseye | 3.9 | too old: firmware_sim needs Python 3.10+, and tflite-runtime 2.14 needs glibc 2.34+ (Bullseye has 2.31). Upgrade to Bookworm |
| 32-bit Raspberry Pi OS (armv7l) | 3.11 | tflite-runtime (no ai-edge-litert or onnxruntime wheels for armv7l; tflite-int8 only) |

To use tflite-runtime instead of ai-edge-litert on Bookworm: `pip install "numpy<2" pillow tflite-runtime==2.14.0`.
{"ONNX formats need onnxruntime (in requirements-device.txt; aarch64 and x86-64 wheels)." if onnx else
 "No ONNX format is inside, so onnxruntime is not needed."}
{openvino}
Before deploying, `scripts/arm64_check.sh THIS_FOLDER` (in the edgead repository, on an x86 Debian host) installs
this bundle in an emulated 64-bit Raspberry Pi OS root and writes arm64_fidelity.json: the scores ARM's kernels
give on the export's test images against the host's and the float model's.
{arm64}
{tpu}"""


def _arm64_line(artifact: Path) -> str:
    """Whether the export held ARM's kernels to its fidelity gate (`edgead export --arm64-check`), from the
    artifact's fidelity.json: int8 scores on a Pi differ from an x86 host's (docs/device-runtimes.md)."""
    try:
        arm = json.loads((artifact / "fidelity.json").read_text()).get("arm64")
    except (OSError, ValueError):
        arm = None
    if not arm:
        return ("This export was not checked on ARM kernels (`edgead export --arm64-check`): int8 scores on a Pi "
                "can differ from the host's by tens of percent of the threshold.")
    rows = [f"{fmt} [{v}]: {100 * (r['vs_host']['max_abs_score_diff_of_threshold'] or 0):.1f} % of the threshold, "
            f"within tolerance: {'yes' if r['within_tolerance'] else 'no'}"
            for fmt, per in arm.get("formats", {}).items() for v, r in per.items() if "vs_host" in r]
    return (f"The export checked ARM kernels (`--arm64-check`, Debian {arm.get('suite')}, {arm.get('test_images')} "
            "test images; fidelity.json 'arm64'): largest ARM-vs-host score difference " + "; ".join(rows) + ".")


def archive_path(out: Path) -> Path:
    """OUT.tar.gz beside the (resolved) bundle folder OUT."""
    return out.with_name(out.name + ".tar.gz")


def check_out(out: str | os.PathLike, archive: bool, force: bool, inputs: list[str | os.PathLike | None] = (),
              error: type[UserError] = UserError) -> Path:
    """Refuse a bundle folder or archive this command may not write (firmware_sim.outputs' rule: never an
    input, never a folder that is not a bundle, an existing bundle only with ``force``); returns OUT resolved.
    ``inputs`` may hold None (an optional input not given), as in firmware_sim.outputs.check_out."""
    real = outputs.check_out(out, kind="bundle", inputs=inputs, force=force, what="OUT", error=error)
    if archive:
        tgz = archive_path(real)
        if tgz.exists() and not tgz.is_file():
            raise error(f"{tgz}: exists and is not a file (the bundle's archive goes there)")
        if any(tgz == outputs.resolve(i) for i in inputs if i is not None):
            raise error(f"{tgz}: is an input of this command; choose another OUT")
        if tgz.exists() and not force:
            raise error(f"{tgz}: already exists (choose another OUT or pass --force)")
    return real


def make_bundle(artifact: str | os.PathLike, out: str | os.PathLike, formats: str | list[str] | None = None,
                archive: bool = True, force: bool = False) -> dict:
    """Write the bundle folder OUT (and OUT.tar.gz).

    Args:
        artifact: the artifact folder (verified before it is copied).
        out: the bundle folder to write.
        formats: formats to keep (comma-separated or a list; default all; 'edgetpu' = tflite-int8 with its
            compiled graphs).
        archive: also write OUT.tar.gz (one top-level folder named like OUT).
        force: replace an existing OUT / OUT.tar.gz.
    Returns:
        {'bundle', 'archive', 'formats', 'files', 'bytes', 'requirements'}.
    """
    src = Path(artifact)
    manifest = load_manifest(src)
    keep, edgetpu = _choose(manifest.formats, formats, src)
    given = Path(out)
    out = check_out(given, archive, force, inputs=[src, PACKAGE])  # the package is copied: an input too
    tgz = archive_path(out) if archive else None
    out.parent.mkdir(parents=True, exist_ok=True)
    outputs.recheck(given, out)
    outputs.clean_partials(out)
    tmp = Path(tempfile.mkdtemp(prefix=outputs.partial_prefix(out), dir=out.parent))
    try:
        shutil.copytree(PACKAGE, tmp / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        written = _subset(src, tmp / ARTIFACT, keep, edgetpu)
        edgetpu = has_edgetpu(written)
        reqs = requirements(keep, edgetpu)
        atomic_write_text(tmp / REQUIREMENTS, reqs)
        atomic_write_text(tmp / "README.md", _readme(written, keep, edgetpu, _arm64_line(tmp / ARTIFACT)))
        outputs.write_marker(tmp, "bundle")
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it owner-only; a bundle is meant to be copied around
        outputs.recheck(given, out)
        outputs.publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if tgz is not None:
        def write(f):
            with tarfile.open(fileobj=f, mode="w:gz") as tar:
                tar.add(out, arcname=out.name)

        atomic_write(tgz, write)
    files = [p for p in out.rglob("*") if p.is_file()]
    return {"bundle": str(out), "archive": str(tgz) if tgz else None, "formats": keep,
            "edgetpu": edgetpu, "files": len(files), "bytes": sum(p.stat().st_size for p in files),
            "archive_bytes": tgz.stat().st_size if tgz else None, "requirements": reqs.splitlines()[2:],
            "manifest": str(out / ARTIFACT / MANIFEST_NAME)}
