"""The host half of the arm64 check (scripts/arm64_check.sh): the bundle's scores on ARM kernels against the
host's and against the float model, written to arm64_fidelity.json.

The shell script builds the emulated arm64 root and installs the bundle there; this module then
1. loads the run named in the bundle's manifest and its held-out test split (the export's fidelity images)
   and the float torch model's maps on them (the reference of the export's own fidelity gate);
2. scores the same uint8 views with ``python -m firmware_sim.predict_batch`` from the bundle, once on the host
   and once inside the arm64 root (chroot), each with XNNPACK (LiteRT's default) and without it (LiteRT's
   built-in kernels), every format of the bundle;
3. compares: image and pixel AUROC of the ARM scores against the float model (edgead.export.fidelity.compare,
   the export gate's own check), and against the host's scores of the same format and kernels: largest and
   mean absolute score difference, also as a fraction of the deployed threshold, and the test images whose
   decision (score > threshold) differs.

Emulated (qemu-user) arithmetic is the real instruction set's, bit for bit; emulated timings mean nothing, so
none are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
from edgead.export.fidelity import Tolerance, compare

from edgead.engine.views import merge_views
from edgead.errors import EdgeadError
from firmware_sim.atomic import atomic_write_json
from firmware_sim.manifest import load_manifest
from firmware_sim.runtime import Prediction

# The bar of issue 23: ARM int8 scores within 0.5 % of the threshold of the host's, or the gate includes ARM.
MAX_DIFF_OF_THRESHOLD = 0.005
# LiteRT's default delegate, and its built-in kernels (the switch concerns the TFLite format only)
VARIANTS = {"xnnpack": [], "builtin": ["--no-xnnpack"]}
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "arm64_check.sh"
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
QEMU_HELPER = Path("/usr/libexec/qemu-binfmt/aarch64-binfmt-P")
APT_COMMANDS = ("apt-get update", "apt-get install -y qemu-user-static binfmt-support mmdebstrap",
                "update-binfmts --enable qemu-aarch64")


def stratified_subset(test, limit: int | None, seed: int):
    """At most ``limit`` test images, both classes kept in proportion (seeded): a quicker emulated run."""
    if not limit or limit >= len(test):
        return test
    rng = np.random.default_rng([seed, 0xA64])
    idx = []
    for label in np.unique(test.labels):
        members = np.flatnonzero(test.labels == label)
        k = max(1, round(limit * len(members) / len(test)))
        idx.extend(rng.choice(members, min(k, len(members)), replace=False).tolist())
    return test.subset(np.sort(np.asarray(idx)))


def _load_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _predict(cmd_prefix: list[str], bundle_dir: str, views: str, out: str, extra: list[str], cwd: Path | None,
             formats: list[str], local_out: Path) -> dict:
    """One process per format (a runtime that crashes under emulation costs its own format only); the
    arrays of all formats, a crashed one recorded as '<format>/skipped'."""
    arrays: dict = {}
    for fmt in formats:
        cmd = [*cmd_prefix, "-m", "firmware_sim.predict_batch", "--artifact", f"{bundle_dir}/artifact",
               "--pixels", views, "--out", f"{out}-{fmt}.npz", "--formats", fmt, *extra]
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if r.returncode != 0:
            arrays[f"{fmt}/skipped"] = np.asarray(f"exit {r.returncode}: {(r.stderr or r.stdout).strip()[-500:]}")
            continue
        arrays.update(_load_npz(Path(f"{local_out}-{fmt}.npz")))
    return arrays


def _environment(arrays: dict) -> dict | None:
    env = arrays.get("environment")
    return None if env is None else json.loads(str(env))


def score_differences(test, pre, host: dict, arm: dict, threshold: float) -> dict:
    """ARM against host for one format: per-image scores (views merged as the device merges them)."""
    _, hs = merge_views(test, pre, host["maps"], host["scores"])
    _, as_ = merge_views(test, pre, arm["maps"], arm["scores"])
    d = np.abs(np.asarray(as_, np.float64) - np.asarray(hs, np.float64))
    flips = np.flatnonzero((np.asarray(hs) > threshold) != (np.asarray(as_) > threshold))
    md = float(np.abs(arm["maps"].astype(np.float64) - host["maps"]).max())
    return {"max_abs_score_diff": float(d.max()), "mean_abs_score_diff": float(d.mean()),
            "max_abs_score_diff_of_threshold": float(d.max() / threshold) if threshold > 0 else None,
            "max_abs_map_diff": md, "identical": bool(d.max() == 0 and md == 0),
            "decision_flips": len(flips),
            "flipped": [{"path": test.paths[i], "label": int(test.labels[i]), "host_score": float(hs[i]),
                         "arm64_score": float(as_[i])} for i in flips]}


def check(bundle: Path, rootfs: Path, venv: str, inside: str, suite: str, out: Path,
          data_root: Path | None = None, limit: int | None = None, log=print) -> dict:
    from edgead.export.pipeline import load_data, load_run, reference  # the pipeline imports this module

    art = bundle / "artifact"
    manifest = load_manifest(art)
    src = manifest.data.get("source") or {}
    if "run" not in src:
        raise EdgeadError(f"{art}: the manifest names no source run; the check needs the run's test images")
    run = load_run(src["run"], int(src.get("task_index", 0)))
    _, test, tasks = load_data(run, data_root)
    test = stratified_subset(test, limit, int(run.results["config"]["train"]["seed"]))
    log(f"arm64 check: {len(test)} test images of {tasks}; float reference ...")
    ref = reference(run.model, run.pre, test)
    work_inside = f"{inside}/work"
    work = rootfs / work_inside.lstrip("/")
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "views.npy", test.images)
    chroot = ["chroot", str(rootfs), "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "HOME=/root",
              "/bin/sh", "-c", f'cd {inside}/bundle && exec "$0" "$@"', f"{venv}/bin/python"]
    runs = {}
    for variant, extra in VARIANTS.items():
        fmts = manifest.formats if variant == "xnnpack" else [f for f in manifest.formats if f.startswith("tflite")]
        if not fmts:
            continue
        log(f"arm64 check: host scores ({variant}) ...")
        host = _predict([sys.executable], str(bundle), str(work / "views.npy"), str(work / f"host-{variant}"),
                        extra, bundle, fmts, work / f"host-{variant}")
        log(f"arm64 check: arm64 scores ({variant}, emulated) ...")
        arm = _predict(chroot, f"{inside}/bundle", f"{work_inside}/views.npy", f"{work_inside}/arm64-{variant}",
                       extra, None, fmts, work / f"arm64-{variant}")
        runs[variant] = (host, arm)
    thr = float(manifest.threshold)
    tol = Tolerance()
    formats: dict[str, dict] = {}
    for variant, (host, arm) in runs.items():
        for fmt in manifest.formats:
            if variant != "xnnpack" and not fmt.startswith("tflite"):
                continue  # the XNNPACK switch concerns LiteRT only
            if f"{fmt}/scores" not in arm or f"{fmt}/scores" not in host:
                why = str(arm.get(f"{fmt}/skipped", host.get(f"{fmt}/skipped", "not scored")))
                formats.setdefault(fmt, {})[variant] = {"skipped": why}
                continue
            h = {"maps": host[f"{fmt}/maps"], "scores": host[f"{fmt}/scores"]}
            a = {"maps": arm[f"{fmt}/maps"], "scores": arm[f"{fmt}/scores"]}
            fid = compare(test, ref, Prediction(a["maps"], a["scores"], None), tol, run.pre)
            formats.setdefault(fmt, {})[variant] = {
                "interpreter": str(arm[f"{fmt}/interpreter"]), "path": str(arm[f"{fmt}/path"]),
                "vs_float": {k: fid[k] for k in ("image_auroc", "pixel_auroc", "map_cosine_mean", "drift",
                                                 "within_tolerance")},
                "vs_host": score_differences(test, run.pre, h, a, thr),
            }
    int8 = [r["vs_host"]["max_abs_score_diff_of_threshold"] for fmt, per in formats.items()
            for r in per.values() if "vs_host" in r and "int8" in fmt]
    worst = max((v for v in int8 if v is not None), default=None)
    result = {
        "command": os.environ.get("EDGEAD_ARM64_COMMAND"),
        "bundle": str(bundle), "suite": suite, "run": src["run"], "tasks": tasks, "test_images": len(test),
        "threshold": thr, "tolerance": asdict(tol),
        "arm64": _environment(runs["xnnpack"][1]),
        "host": _environment(runs["xnnpack"][0]),
        "formats": formats,
        "bar": {"max_int8_score_diff_of_threshold": worst, "limit": MAX_DIFF_OF_THRESHOLD,
                "met": worst is not None and worst <= MAX_DIFF_OF_THRESHOLD},
        "note": "qemu-user emulation: arithmetic is the arm64 instruction set's; no timings are measured",
    }
    atomic_write_json(out, result)
    return result


def missing_tools(path: str | None = None, binfmt: Path = BINFMT, helper: Path = QEMU_HELPER) -> list[str]:
    """What the arm64 check needs on this host and lacks (the same test as scripts/arm64_check.sh): mmdebstrap,
    qemu-user-static, an enabled binfmt entry for aarch64, and root (mmdebstrap and chroot)."""
    missing = []
    if shutil.which("mmdebstrap", path=path) is None:
        missing.append("mmdebstrap")
    if shutil.which("qemu-aarch64-static", path=path) is None and not os.access(helper, os.X_OK):
        missing.append("qemu-user-static")
    try:
        enabled = binfmt.read_text().splitlines()[:1] == ["enabled"]
    except OSError:
        enabled = False
    if not enabled:
        missing.append("binfmt entry qemu-aarch64")
    return missing


def require_tools(path: str | None = None, binfmt: Path = BINFMT, helper: Path = QEMU_HELPER,
                  root: bool | None = None) -> None:
    """Refuse, before any work, an arm64 check this host cannot run; the message gives the apt commands."""
    missing = missing_tools(path, binfmt, helper)
    if missing:
        raise EdgeadError(f"--arm64-check: missing on this host: {', '.join(missing)}. Install and enable them "
                          "(Debian/Ubuntu, as root): " + "; ".join(APT_COMMANDS))
    if not (os.geteuid() == 0 if root is None else root):
        raise EdgeadError("--arm64-check: needs root (mmdebstrap builds the arm64 root and chroot runs it); run "
                          "the export with sudo, or export without --arm64-check and run scripts/arm64_check.sh "
                          "on the bundle as root")
    if not SCRIPT.is_file():
        raise EdgeadError(f"--arm64-check: {SCRIPT} not found (it comes with the edgead source tree)")


def run_script(bundle: Path, out: Path, data_root: Path | None = None, limit: int | None = None,
               suite: str = "stable", log: Callable[[str], None] = lambda m: None) -> dict:
    """scripts/arm64_check.sh on a bundle; its arm64_fidelity.json as a dict. The script's progress lines go to
    ``log``; a failure raises with the tail of what it printed."""
    cmd = ["bash", str(SCRIPT), str(bundle), "--suite", suite, "--out", str(out)]
    if data_root is not None:
        cmd += ["--data", str(data_root)]
    if limit:
        cmd += ["--limit", str(int(limit))]
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable),
           "EDGEAD_ARM64_COMMAND": shlex.join(sys.argv)}  # the export's own command line, for the record
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as p:
        assert p.stdout is not None
        for line in p.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-20:]
            if line.startswith("arm64"):
                log(line)
    if p.returncode != 0:
        raise EdgeadError(f"--arm64-check: {SCRIPT.name} {bundle} failed (exit {p.returncode}):\n" + "\n".join(tail))
    try:
        return json.loads(out.read_text())
    except (OSError, ValueError) as e:
        raise EdgeadError(f"--arm64-check: {out}: unreadable result ({e})") from None


RESULT_NAME = "arm64_fidelity.json"


def check_artifact(artifact: Path, data_root: Path | None = None, limit: int | None = None,
                   log: Callable[[str], None] = lambda m: None) -> dict:
    """The arm64 check of an (unpublished) artifact folder: bundled into a temporary folder, then run; the
    check's whole result is kept beside the artifact's files as arm64_fidelity.json (RESULT_NAME)."""
    from firmware_sim.bundle import make_bundle

    with tempfile.TemporaryDirectory(prefix=".arm64-", dir=artifact.parent) as tmp:
        bundle = Path(tmp) / "bundle"
        make_bundle(artifact, bundle, archive=False)
        res = run_script(bundle, Path(tmp) / RESULT_NAME, data_root, limit, log=log)
    res["bundle"] = "(a temporary bundle of this artifact)"
    atomic_write_json(artifact / RESULT_NAME, res)
    return res


def fold_into_fidelity(fidelity: dict, result: dict, tol: Tolerance) -> dict[str, dict[str, list[dict]]]:
    """Record an arm64 check's numbers in ``fidelity["arm64"]`` and judge them with the export's own tolerance.

    ``result``: arm64_fidelity.json (check()). Each format and kernel family measured on ARM is held to the same
    AUROC drops against the float model as the host's run (recomputed here from the recorded AUROCs, so the
    export's --max-*-auroc-drop apply, not the check's defaults). Returns the drift per format in the form of
    the host's ``drift_detail`` ({format: {'arm64 PATH [family]': [rows]}}); a format that did not run on ARM
    (recorded as skipped) is reported, not judged."""
    per_format: dict[str, dict] = {}
    drifted: dict[str, dict[str, list[dict]]] = {}
    for fmt, per in result.get("formats", {}).items():
        for variant, r in per.items():
            if "vs_float" not in r:
                per_format.setdefault(fmt, {})[variant] = {"skipped": r.get("skipped", "not measured")}
                continue
            rows = []
            for metric, limit in (("image AUROC", tol.image_auroc), ("pixel AUROC", tol.pixel_auroc)):
                a = r["vs_float"].get(metric.split()[0] + "_auroc") or {}
                if a.get("format") is not None and a.get("float") is not None and a["float"] - a["format"] > limit:
                    rows.append({"metric": metric, "float": a["float"], "format": a["format"],
                                 "drop": a["float"] - a["format"], "limit": limit})
            path = r.get("path", "trunk+head")
            vs = r["vs_host"]
            per_format.setdefault(fmt, {})[variant] = {
                "path": path, "interpreter": r.get("interpreter"),
                "image_auroc": r["vs_float"].get("image_auroc"), "pixel_auroc": r["vs_float"].get("pixel_auroc"),
                "vs_host": {k: vs[k] for k in ("max_abs_score_diff", "mean_abs_score_diff",
                                               "max_abs_score_diff_of_threshold", "decision_flips")},
                "drift": [f"{d['metric']} {d['float']:.4f} -> {d['format']:.4f} (drop {d['drop']:.4f}, limit "
                          f"{d['limit']:.4f})" for d in rows],
                "within_tolerance": not rows,
            }
            if rows:
                drifted.setdefault(fmt, {})[f"arm64 {path} [{variant}]"] = rows
    fidelity["arm64"] = {"suite": result.get("suite"), "test_images": result.get("test_images"),
                         "threshold": result.get("threshold"), "machine": (result.get("arm64") or {}),
                         "host": (result.get("host") or {}), "formats": per_format, "bar": result.get("bar"),
                         "note": result.get("note")}
    return drifted


def drift_lines(drifted: dict[str, dict[str, list[dict]]]) -> list[str]:
    """fold_into_fidelity's drift as the export's one-line-per-path form: 'FORMAT (PATH): ...'."""
    return [f"{fmt} ({path}): " + "; ".join(f"{d['metric']} {d['float']:.4f} -> {d['format']:.4f} (drop "
                                           f"{d['drop']:.4f}, limit {d['limit']:.4f})" for d in rows)
            for fmt, per in drifted.items() for path, rows in per.items()]


def target_requirements(text: str, python: str, machine: str = "aarch64") -> list[str]:
    """The requirement lines of ``text`` that apply on (python X.Y, machine), markers removed: `pip download
    --platform` evaluates markers against the host's own Python, not the target's."""
    from packaging.requirements import Requirement

    env = {"python_version": python, "python_full_version": f"{python}.0", "platform_machine": machine,
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"}
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            req.marker = None
            out.append(str(req))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["requirements"]:  # used by the script to download the target's wheels on the host
        p = argparse.ArgumentParser(prog="python -m edgead.export.arm64_check requirements")
        p.add_argument("file", type=Path)
        p.add_argument("--python", required=True, help="Target X.Y, e.g. 3.13")
        p.add_argument("--machine", default="aarch64")
        a = p.parse_args(argv[1:])
        print("\n".join(target_requirements(a.file.read_text(), a.python, a.machine)))
        return 0
    p = argparse.ArgumentParser(prog="python -m edgead.export.arm64_check",
                                description="Host half of scripts/arm64_check.sh (run that script instead).")
    p.add_argument("bundle", type=Path)
    p.add_argument("--rootfs", type=Path, required=True)
    p.add_argument("--venv", required=True, help="The venv inside the root (absolute path there).")
    p.add_argument("--inside", required=True, help="Folder inside the root holding bundle/.")
    p.add_argument("--suite", default="stable")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=None, help="The run's data root, if it has moved.")
    p.add_argument("--limit", type=int, default=None, help="Score at most this many test images.")
    a = p.parse_args(argv)
    try:
        res = check(a.bundle.resolve(), a.rootfs.resolve(), a.venv, a.inside, a.suite, a.out, a.data, a.limit,
                    log=lambda m: print(m, file=sys.stderr))
    except EdgeadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = [f"{fmt} [{v}]: max |ARM - host| {r['vs_host']['max_abs_score_diff']:.3g} "
            f"({100 * (r['vs_host']['max_abs_score_diff_of_threshold'] or 0):.2f} % of the threshold), "
            f"{r['vs_host']['decision_flips']} decision(s) flip; image AUROC {r['vs_float']['image_auroc']['format']}"
            for fmt, per in res["formats"].items() for v, r in per.items() if "vs_host" in r]
    print("\n".join(rows + [f"written: {a.out}"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
