"""anomalib's STFPM beside edgead's PaSTe-MCUNet and STFPM-MCUNet: same data, same split (issue #7).

    python benchmarks/bench_peer.py                        # synthetic nut, 256 px, 15 epochs
    python benchmarks/bench_peer.py --data /tmp/bench_mt --category magnetic_tile --max-train 100 --tag mt
    python benchmarks/bench_peer.py --quick                # tiny synthetic data at 64 px, 1 epoch

Our side trains with edgead's trainer (benchmarks/bench_single_task.run_one: ImageNet MCUNet-in3 teacher,
10% of the normal training images held out for model selection). The peer side is anomalib 2.7.0's STFPM
in a virtual environment of its own (benchmarks/peer_venv.py builds it from the registry, or reuses it;
`--venv`, default $EDGEAD_PEER_VENV or ~/.cache/edgead/peer-venv), run by benchmarks/peer_anomalib.py on an
MVTec-layout copy (hard links) of exactly the images our side trains and tests on: the same 90% of the
normal training images, every test image and mask. Same epochs, image size, batch size, seed and torch
thread count on both sides. Peer backbones: ResNet18 (anomalib's default; random teacher, as no ResNet18
ImageNet weights can be had offline) and MobileNetV2 (torchvision's ImageNet weights from a registry
package). Both sides: image and pixel AUROC with scikit-learn's definition, p50 and minimum latency of
one float32 frame (normalise + forward, batch 1), parameters (fp32 bytes) and the saved state dict's size.
If the peer cannot be built or run, the reason is printed as `error: ...` and kept in the JSON, our rows
are still measured and written, and the exit code is 1.
Writes OUT/peer[_TAG].json, .csv and .png (OUT: benchmarks/results; --quick: tag "quick").
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench_single_task import run_one, subsample
from benchkit import RESULTS, check, header, print_table, write_csv, write_json
from edgead.data.layout import scan_mvtec
from edgead.data.stream import split_validation
from edgead.data.synth import generate_dataset
from edgead.engine.trainer import TrainConfig
from edgead.errors import EdgeadError
from latency import random_frames, time_ms, torch_predict
from peer_anomalib import BACKBONES, RESULT_MARKER  # stdlib + numpy only
from peer_venv import PeerUnavailable, default_venv, ensure_peer_venv, venv_python

PEER_SCRIPT = Path(__file__).resolve().parent / "peer_anomalib.py"
PEER_BACKBONES = tuple(BACKBONES)
COLS = ["model", "backbone", "framework", "teacher", "image_auroc", "pixel_auroc", "p50_ms", "min_ms",
        "params", "param_bytes", "state_dict_bytes", "epoch_s", "train_images"]
AUROC_AGREEMENT = 1e-4


# -- the data: one split for both sides -----------------------------------------------------------------
def _link(src: Path, dst: Path) -> None:
    # anomalib drops files whose resolved path lies outside its root, so symlinks will not do: hard links
    # where the filesystem allows, else copies.
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        import shutil

        shutil.copy2(src, dst)


def prepare_peer_data(root: Path, category: str, out: Path, *, seed: int,
                      val_fraction: float = TrainConfig.val_fraction) -> dict:
    """OUT/<category> in MVTec layout with the images edgead trains on (its seeded split of train/good minus
    the held-out fraction) and every test image and mask; masks renamed <image stem>_mask<ext>, the only
    names anomalib's MVTecAD pairs by (edgead also takes <stem>.png). Returns the counts and file names."""
    idx = scan_mvtec(root, category)
    train_idx, _ = split_validation(len(idx.train), val_fraction, seed, key=category)
    dst = out / category
    train = [idx.train[i].path for i in train_idx]
    for p in train:
        _link(p, dst / "train" / "good" / (p.stem + p.suffix.lower()))
    for e in idx.test:
        _link(e.path, dst / "test" / e.defect_type / (e.path.stem + e.path.suffix.lower()))
        if e.mask_path is not None:  # scan_mvtec has already refused a defective image without one
            mask_name = f"{e.path.stem}_mask{e.mask_path.suffix.lower()}"
            _link(e.mask_path, dst / "ground_truth" / e.defect_type / mask_name)
    return {"root": str(out), "category": category, "train_images": len(train),
            "held_out_images": len(idx.train) - len(train), "test_images": len(idx.test),
            "test_anomalous": sum(e.label for e in idx.test), "train_files": sorted(p.name for p in train)}


# -- the peer: anomalib in its own venv -----------------------------------------------------------------
def parse_peer_output(stdout: str, stderr: str, returncode: int) -> dict:
    """The JSON after RESULT_MARKER on the peer's stdout; a failed or silent run raises with its last
    lines."""
    if returncode == 0:
        for line in reversed(stdout.splitlines()):
            if line.startswith(RESULT_MARKER):
                try:
                    return json.loads(line[len(RESULT_MARKER):])
                except ValueError as e:
                    raise PeerUnavailable(f"anomalib run printed an unreadable result line ({e})") from None
    lines = [ln for ln in (stdout + "\n" + stderr).splitlines() if ln.strip()]
    what = (f"failed with exit code {returncode}" if returncode
            else f"printed no '{RESULT_MARKER.strip()}' line")
    raise PeerUnavailable(f"anomalib run ({PEER_SCRIPT.name}) {what}; its last lines:\n"
                          + "\n".join("  " + ln for ln in lines[-15:]))


def run_peer(venv: Path, data: dict, a: argparse.Namespace, workdir: Path) -> dict:
    cmd = [str(venv_python(venv)), str(PEER_SCRIPT), "--root", data["root"], "--category", data["category"],
           "--backbones", ",".join(a.peer_backbones), "--epochs", str(a.epochs),
           "--image-size", str(a.image_size), "--batch-size", str(TrainConfig.batch_size),
           "--threads", str(a.threads), "--seed", str(a.seed), "--latency-runs", str(a.latency_runs),
           "--workdir", str(workdir)]
    # Nothing of edgead's environment leaks in: no PYTHONPATH, no user site; the hub is off (no network).
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env.update(OMP_NUM_THREADS=str(a.threads), HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    print(f"anomalib STFPM ({', '.join(a.peer_backbones)}): {a.epochs} epochs in {venv} ...", flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, env=env, check=False,
                       stdin=subprocess.DEVNULL)
    return parse_peer_output(r.stdout, r.stderr, r.returncode)


def peer_rows(result: dict) -> list[dict]:
    fw = f"anomalib {result['versions']['anomalib']} (torch {result['versions']['torch']})"
    return [{**r, "model": "STFPM", "framework": fw, "status": "ok"} for r in result["rows"]]


def unavailable_rows(backbones: list[str], reason: str) -> list[dict]:
    return [{"model": "STFPM", "backbone": b, "framework": "anomalib", "status": "unavailable",
             "note": reason.splitlines()[0]} for b in backbones]


# -- our side -------------------------------------------------------------------------------------------
def state_dict_bytes(model) -> int:
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue())


def run_ours(root: Path, category: str, model: str, a: argparse.Namespace, tmp: Path,
             train_images: int) -> dict:
    """One bench_single_task run (ImageNet teacher), then latency and size of its saved checkpoint."""
    import torch

    import edgead
    from edgead.engine.checkpoint import load_checkpoint

    work = tmp / f"ours_{model}"
    work.mkdir()
    r = run_one(root, category, model=model, pretrained=True, epochs=a.epochs, image_size=a.image_size,
                seed=a.seed, weights=a.weights, tmp=work)
    (ckpt,) = work.glob("run_*/checkpoints/task_00.pt")  # run_one's own run folder, the only one in `work`
    net, pre, _ = load_checkpoint(ckpt)
    ms = time_ms(torch_predict(net.eval(), pre), random_frames(a.image_size), a.latency_runs)
    return {"model": "PaSTe" if model == "paste" else "STFPM", "backbone": "mcunet-in3",
            "framework": f"edgead {edgead.__version__} (torch {torch.__version__.split('+')[0]})",
            "teacher": "imagenet", "status": "ok",
            "image_auroc": r["image_auroc"], "pixel_auroc": r["pixel_auroc"],
            "p50_ms": float(np.percentile(ms, 50)), "min_ms": float(min(ms)),
            "params": r["params"], "param_bytes": r["fp32_bytes"], "state_dict_bytes": state_dict_bytes(net),
            "epoch_s": r["epoch_s"], "train_s": r["epoch_s"] * a.epochs,
            "selected_epoch": r["selected_epoch"], "train_images": train_images, "epochs": a.epochs,
            "image_size": a.image_size, "threads": torch.get_num_threads(), "latency_runs": a.latency_runs,
            "optimizer": f"edgead's: SGD lr {TrainConfig.lr}, momentum {TrainConfig.momentum}, weight "
                         f"decay {TrainConfig.weight_decay}, batch {TrainConfig.batch_size}, epoch chosen on "
                         "held-out normals with pasted pseudo-defects"}


# -- table, checks, plot --------------------------------------------------------------------------------
def expectations(rows: list[dict], data: dict) -> list[dict]:
    """Same split on both sides, and anomalib's own AUROC equal to the one computed from its raw outputs."""
    out = []
    for r in (r for r in rows if r["framework"].startswith("anomalib") and r["status"] == "ok"):
        same = (r["train_images"], r["test_images"]) == (data["train_images"], data["test_images"])
        out.append(check(f"anomalib STFPM-{r['backbone']} saw the same split as edgead", same,
                         f"train {r['train_images']} vs {data['train_images']}, "
                         f"test {r['test_images']} vs {data['test_images']}"))
        pairs = [(r["image_auroc"], r["anomalib_image_auroc"]), (r["pixel_auroc"], r["anomalib_pixel_auroc"])]
        diff = max(abs(x - y) for x, y in pairs if x is not None and y is not None)
        out.append(check(f"anomalib STFPM-{r['backbone']}: its own AUROC equals scikit-learn's on its "
                         "outputs", diff <= AUROC_AGREEMENT, f"largest difference {diff:.2g}"))
    return out


def plot(rows: list[dict], path: Path, title: str) -> Path:
    from edgead.plotting import pyplot, save_png

    plt = pyplot()
    ok = [r for r in rows if r["status"] == "ok"]
    labels = [f"{r['model']}\n{r['backbone']}\n{r['framework'].split(' (')[0]}\n{r['teacher']}" for r in ok]
    x = np.arange(len(ok))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = ((axes[0], (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC")), "%.3f",
               "AUROC (test split)"),
              (axes[1], (("p50_ms", "p50"), ("min_ms", "min")), "%.1f", "latency, ms (batch 1, fp32)"))
    for ax, series, fmt, name in panels:
        for dx, (key, label) in zip((-0.2, 0.2), series, strict=True):
            bars = ax.bar(x + dx, [np.nan if r.get(key) is None else r[key] for r in ok], 0.4, label=label)
            ax.bar_label(bars, fmt=fmt, fontsize=7)
        ax.set_title(name)
        ax.legend(fontsize=8, loc="upper left", ncols=2)
    axes[0].set_ylim(0, 1.2)
    axes[1].set_ylim(0, 1.2 * max([r["p50_ms"] for r in ok], default=1.0))
    bars = axes[2].bar(x, [r["param_bytes"] / 2**20 for r in ok], 0.6, color="tab:gray")
    axes[2].bar_label(bars, fmt="%.1f", fontsize=7)
    axes[2].set_title("parameters, MiB (fp32)")
    for ax in axes:
        ax.set_xticks(x, labels, fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    missing = [f"{r['model']}-{r['backbone']} ({r['framework']})" for r in rows if r["status"] != "ok"]
    fig.suptitle(title + "; bar labels: model, backbone, library, teacher weights"
                 + (f"\nnot measured: {', '.join(missing)}" if missing else ""), fontsize=9)
    return save_png(fig, path)


# -- the command ------------------------------------------------------------------------------------------
def _names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in allowed]
    if bad:
        raise EdgeadError(f"{what} {text!r}: unknown {bad}; expected a comma list of {list(allowed)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="MVTec-layout root (default: generate synthetic data)")
    p.add_argument("--category", default=None, help="category under --data (required with --data)")
    p.add_argument("--synth", default="nut", help="synthetic category when --data is not given")
    p.add_argument("--synth-size", type=int, default=256)
    p.add_argument("--synth-train", type=int, default=40)
    p.add_argument("--synth-test", type=int, default=12)
    p.add_argument("--max-train", type=int, default=0,
                   help="train on N seeded-random normal images (0 = all)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default="paste,stfpm", help="our side: paste, stfpm (MCUNet-in3)")
    p.add_argument("--peer-backbones", default=",".join(PEER_BACKBONES), help="anomalib STFPM backbones")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads on both sides (training and latency)")
    p.add_argument("--latency-runs", type=int, default=50)
    p.add_argument("--venv", default=None, help="the peer venv (default $EDGEAD_PEER_VENV or "
                                                "~/.cache/edgead/peer-venv); built there if absent")
    p.add_argument("--python", default=sys.executable, help="interpreter the peer venv is created from")
    p.add_argument("--weights", default=os.environ.get("EDGEAD_WEIGHTS_DIR"),
                   help="MCUNet-in3 weights file or folder (default $EDGEAD_WEIGHTS_DIR)")
    p.add_argument("--out", default=str(RESULTS), help="folder for peer[_TAG].json/.csv/.png")
    p.add_argument("--tag", default="")
    p.add_argument("--quick", action="store_true", help="synthetic nut at 64 px, 9 training images, 1 epoch")
    p.add_argument("--from-json", default=None,
                   help="redraw the table, checks, CSV and PNG of a saved peer*.json (nothing is trained)")
    a = p.parse_args(argv)
    if a.from_json:
        return a
    if a.quick:
        a.data, a.synth, a.synth_size, a.synth_train, a.synth_test = None, "nut", 64, 10, 4
        a.epochs, a.image_size, a.max_train, a.latency_runs, a.tag = 1, 64, 0, 5, a.tag or "quick"
    a.models = _names(a.models, ("paste", "stfpm"), "--models")
    a.peer_backbones = _names(a.peer_backbones, PEER_BACKBONES, "--peer-backbones")
    if a.data and not a.category:
        raise EdgeadError("--data needs --category (the folder under the root, e.g. magnetic_tile)")
    for name, v, low in (("epochs", a.epochs, 1), ("image-size", a.image_size, 32), ("threads", a.threads, 1),
                         ("latency-runs", a.latency_runs, 1), ("max-train", a.max_train, 0)):
        if v < low:
            raise EdgeadError(f"--{name} {v}: expected >= {low}")
    a.venv = str(Path(a.venv).expanduser() if a.venv else default_venv())
    return a


def write_outputs(result: dict, out_dir: Path, stem: str) -> None:
    """Table on stdout, then the JSON, CSV and PNG (the checks recomputed from the rows)."""
    rows, data, args = result["rows"], result["data"], result["args"]
    print()
    print_table(rows, COLS)
    result["checks"] = expectations(rows, data)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"{stem}.json", result)
    write_csv(out_dir / f"{stem}.csv", [{k: r.get(k) for k in [*COLS, "status", "note"]} for r in rows])
    plot(rows, out_dir / f"{stem}.png",
         f"{data['category']}, {args['image_size']} px, {args['epochs']} epochs, "
         f"{data['train_images']} training images, {args['threads']} thread(s)")
    print(f"wrote {out_dir / stem}.json, .csv and .png")


def redraw(path: Path) -> int:
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EdgeadError(f"{path}: not a readable bench_peer results file "
                          f"({type(e).__name__}: {e})") from None
    missing = [k for k in ("rows", "data", "args") if not isinstance(result, dict) or k not in result]
    if missing:
        raise EdgeadError(f"{path}: not a bench_peer results file (no {', '.join(missing)})")
    write_outputs(result, path.parent, path.stem)
    return 1 if result.get("peer_error") else 0


def main(argv: list[str] | None = None) -> int:
    import torch

    a = parse_args(argv)
    if a.from_json:
        return redraw(Path(a.from_json))
    meta = header(argv)
    torch.set_num_threads(a.threads)
    stem = f"peer{'_' + a.tag if a.tag else ''}"
    with tempfile.TemporaryDirectory(prefix="bench_peer_") as td:
        tmp = Path(td)
        if a.data:
            root, category = Path(a.data), a.category
        else:
            root, category = generate_dataset(tmp / "synth", [a.synth], seed=0, image_size=a.synth_size,
                                              n_train=a.synth_train, n_test=a.synth_test), a.synth
        scan_mvtec(root, category)  # a missing or malformed dataset stops here, named, before anything runs
        root = subsample(root, category, a.max_train, a.seed, tmp)
        data = prepare_peer_data(root, category, tmp / "peer_data", seed=a.seed)
        print(f"{category}: {data['train_images']} training images (+{data['held_out_images']} held out by "
              f"edgead), {data['test_images']} test images ({data['test_anomalous']} defective)", flush=True)
        # The peer first: a venv that cannot be built is reported before minutes of our training.
        error, env_info = None, None
        try:
            env_info = ensure_peer_venv(Path(a.venv), python=a.python, log=lambda m: print(m, flush=True))
            workdir = tmp / "peer_work"
            workdir.mkdir()
            peers = peer_rows(run_peer(Path(a.venv), data, a, workdir))
        except PeerUnavailable as e:
            error = str(e)
            print(f"error: {error}", file=sys.stderr, flush=True)
            peers = unavailable_rows(a.peer_backbones, error)
        ours = []
        for model in a.models:
            print(f"edgead {model}-mcunet-in3: {a.epochs} epochs ...", flush=True)
            ours.append(run_ours(root, category, model, a, tmp, data["train_images"]))
    rows = ours + peers
    data.pop("root")  # a temporary folder, gone now
    result = {**meta, "args": vars(a), "data": {"source": a.data or f"synthetic {a.synth}", **data},
              "peer_environment": env_info, "peer_error": error, "rows": rows, "checks": [], "notes": NOTES}
    write_outputs(result, Path(a.out), stem)
    return 1 if error else 0


NOTES = [
    "Split: anomalib trains on exactly the normal images edgead trains on (edgead holds 10% out for model "
    "selection; anomalib, with validation off, keeps its last epoch) and both test on every test image.",
    "Teachers: edgead's MCUNet-in3 and anomalib's MobileNetV2 use ImageNet weights; anomalib's default "
    "ResNet18 teacher is random, as its ImageNet weights cannot be had offline here.",
    "Optimisers are each library's own: SGD lr 0.4, momentum 0.9, batch 32; weight decay 1e-4 (edgead) vs "
    "1e-3 (anomalib).",
    "anomalib's MobileNetV2 runs timm's mobilenetv2_100 features_only model, which keeps and computes all "
    "seven block stages although STFPM reads blocks.1/2/4: its latency and size include the unused ones.",
    "Latency: same machine, same torch thread count, fp32, batch 1, normalise + forward on seeded frames; "
    "the two sides run different torch builds (edgead's CPU build vs the peer venv's 2.14.1). Each model is "
    "timed right after its own training, minutes apart, so on a shared machine the load differs between "
    "rows: min_ms (the least disturbed call) is the steadier comparison, p50_ms the typical one.",
]


if __name__ == "__main__":
    try:
        sys.exit(main())
    except EdgeadError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
