"""The Edge TPU (Coral): compile an artifact's full-int8 TFLite graphs with ``edgetpu_compiler`` and record the
compiled files in its manifest beside the originals, so that ``--delegate edgetpu`` loads them.

The compiler (x86-64 Debian/Ubuntu only, Debian package ``edgetpu-compiler`` from Coral's apt repository)
writes ``<stem>_edgetpu.tflite`` and ``<stem>_edgetpu.log`` beside each input ``<stem>.tflite`` in its ``-o``
folder. Graphs that run one after the other on the device (PaSTe's trunk and head) are compiled together,
so they share the Edge TPU's on-chip parameter cache; the single 'full' graph is compiled alone.
An uncompiled graph given to the Edge TPU delegate would run entirely on the CPU, so a device asked for
``--delegate edgetpu`` refuses an artifact without compiled graphs instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from firmware_sim.errors import UserError
from firmware_sim.manifest import Manifest, load_manifest, write_manifest

COMPILER = "edgetpu_compiler"
FORMAT = "tflite-int8"  # the only format the Edge TPU runs: full int8, static shapes
# Graphs compiled together (one compiler call each): the ones a device runs one after the other.
GROUPS = (("trunk", "head"), ("full",))
_TIMEOUT_S = 600


def compiled_names(file: str) -> tuple[str, str]:
    """``trunk.int8.tflite`` -> (``trunk.int8_edgetpu.tflite``, ``trunk.int8_edgetpu.log``): the compiler's names."""
    stem = file[: -len(".tflite")] if file.endswith(".tflite") else file
    return f"{stem}_edgetpu.tflite", f"{stem}_edgetpu.log"


def find_compiler() -> str | None:
    """The path of ``edgetpu_compiler`` on PATH, or None."""
    return shutil.which(COMPILER)


def _groups(manifest: Manifest) -> list[list[str]]:
    graphs = manifest.data["formats"][FORMAT]["graphs"]
    return [[g for g in group if g in graphs] for group in GROUPS if any(g in graphs for g in group)]


def manual_steps(art_dir: str | os.PathLike, graph_files: list[list[str]] | None = None) -> str:
    """The commands that compile ART's graphs by hand on a machine with the compiler, and record them."""
    art = Path(art_dir)
    if graph_files is None:
        graph_files = [["trunk.int8.tflite", "head.int8.tflite"], ["full.int8.tflite"]]
    compile_cmds = "; ".join(f"{COMPILER} -s -o {art} " + " ".join(str(art / f) for f in group)
                             for group in graph_files)
    return (f"compile by hand on an x86-64 Debian/Ubuntu machine (apt-get install edgetpu-compiler, from "
            f"Coral's apt repository): `{compile_cmds}`; copy the *_edgetpu.tflite and *_edgetpu.log files into "
            f"{art} if you compiled elsewhere, then record them in the manifest with "
            f"`python -m firmware_sim edgetpu {art}` (or `edgead device edgetpu {art}`)")


def check_tflite(path: Path) -> None:
    """Refuse a file that is not a TFLite flatbuffer (its 'TFL3' identifier at bytes 4..8 and its root table
    inside the file), before it is recorded in a manifest and bundled: a renamed text file or a truncated copy
    would otherwise only fail on the device."""
    try:
        with open(path, "rb") as f:
            head, size = f.read(8), os.fstat(f.fileno()).st_size
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None
    root = int.from_bytes(head[:4], "little") if len(head) == 8 else 0
    if size < 16 or head[4:8] != b"TFL3" or not 8 <= root < size:
        raise UserError(f"{path}: not a TFLite model (no TFL3 flatbuffer header, {size} bytes); copy the "
                        f"{COMPILER} output itself into {path.parent}, or compile again")


def _version(compiler: str) -> str | None:
    try:
        r = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def _compile(compiler: str, root: Path, files: list[str], log: Callable[[str], None]) -> None:
    cmd = [compiler, "-s", "-o", str(root), *(str(root / f) for f in files)]
    log(f"compiling for the Edge TPU: {' '.join(cmd)}")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"{compiler}: could not run it ({e})") from None
    if r.returncode != 0:
        tail = (r.stdout + r.stderr).strip()[-1500:]
        raise UserError(f"{compiler} failed (exit {r.returncode}) on {', '.join(files)}:\n{tail}")
    missing = [compiled_names(f)[0] for f in files if not (root / compiled_names(f)[0]).is_file()]
    if missing:
        raise UserError(f"{compiler} exited 0 but did not write {', '.join(missing)} in {root}")


def add_edgetpu(art_dir: str | os.PathLike, run_compiler: bool = True,
                log: Callable[[str], None] = lambda m: None) -> dict:
    """Compile ART's tflite-int8 graphs for the Edge TPU (when ``run_compiler`` and the compiler is on PATH) or take
    the ``*_edgetpu.tflite`` files already in ART (compiled by hand), and record each in the manifest beside its
    original graph (``graphs[name]['edgetpu'] = {'file', 'log'}``), sizes and hashes included.

    Returns {'artifact', 'compiled': {graph: file}, 'compiler': path or None, 'compiler_version'}.
    Raises UserError naming what is missing and the commands to run by hand.
    """
    manifest = load_manifest(art_dir)  # every original file intact before anything is added
    root = manifest.root
    if FORMAT not in manifest.formats:
        raise UserError(f"{root}: no {FORMAT} format here (has {', '.join(manifest.formats)}); the Edge TPU runs "
                        f"full-int8 TFLite only: export with `edgead export --format {FORMAT}` (or edgetpu)")
    graphs = manifest.data["formats"][FORMAT]["graphs"]
    groups = [[graphs[g]["file"] for g in group] for group in _groups(manifest)]
    compiler = find_compiler() if run_compiler else None
    version = None
    if compiler is not None:
        version = _version(compiler)
        for files in groups:
            _compile(compiler, root, files, log)
    else:
        missing = [f for group in groups for f in group if not (root / compiled_names(f)[0]).is_file()]
        if missing:
            why = f"{COMPILER} is not on PATH" if run_compiler else "compiling was not asked for"
            raise UserError(f"{root}: no Edge TPU-compiled graph for {', '.join(missing)} and {why}; "
                            + manual_steps(root, groups))
    for files in groups:  # compiled here or copied in by hand: each must be a real TFLite model
        for f in files:
            check_tflite(root / compiled_names(f)[0])
    data = {k: v for k, v in manifest.data.items() if k not in ("schema", "schema_version", "files")}
    files = list(manifest.data["files"])
    compiled = {}
    for name, g in data["formats"][FORMAT]["graphs"].items():
        model, log_name = compiled_names(g["file"])
        g["edgetpu"] = {"file": model, "log": log_name if (root / log_name).is_file() else None}
        files += [f for f in (model, g["edgetpu"]["log"]) if f and f not in files]
        compiled[name] = model
    data["formats"][FORMAT]["edgetpu"] = {"compiler": compiler and Path(compiler).name,
                                          "compiler_version": version, "groups": groups}
    write_manifest(root, data, files)
    load_manifest(root)  # what a device will read
    return {"artifact": str(root), "compiled": compiled, "compiler": compiler, "compiler_version": version}


def edgetpu_graph_files(manifest: Manifest, fmt: str, names: list[str]) -> dict[str, Path]:
    """The compiled file of each graph in ``names`` (what ``--delegate edgetpu`` loads), or a UserError that says
    how to compile and record them."""
    graphs = manifest.data["formats"].get(fmt, {}).get("graphs", {})
    missing = [n for n in names if not (graphs.get(n, {}).get("edgetpu") or {}).get("file")]
    if missing:
        raise UserError(f"--delegate edgetpu: {manifest.root} has no Edge TPU-compiled graph for "
                        f"{', '.join(missing)} (an uncompiled graph would run on the CPU); "
                        f"export with `edgead export --format edgetpu`, or "
                        + manual_steps(manifest.root, [[graphs[n]["file"] for n in names if n in graphs]]))
    return {n: manifest.root / graphs[n]["edgetpu"]["file"] for n in names}
