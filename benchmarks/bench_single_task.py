"""Single-task quality of PaSTe-MCUNet and STFPM-MCUNet, ImageNet teacher vs random teacher.

    python benchmarks/bench_single_task.py --data /tmp/mt --category magnetic_tile --synth brick \
        --epochs 5 --max-train 200 --image-size 256 --seeds 0
    python benchmarks/bench_single_task.py --quick        # tiny synthetic data, 64 px, 1 epoch (< 60 s)
    python benchmarks/bench_single_task.py --data /tmp/mt --synth "" --models paste --pretrained true \
        --epochs 3,10 --max-train 100,400 --tag mt_limits   # what limits PaSTe on Magnetic-Tile

Each configuration is one `run_stream` over a one-task stream (strategy finetune) in its own temporary
out dir; image AUROC, pixel AUROC and AUPRO come from its results.json, as do the mean training time per
epoch, the parameter count (`memory.params`) and the MACs (`cost.macs`). `--max-train N` trains on N
seeded-random training images (a temporary MVTec-layout copy made of symlinks; the held-out 10% for
model selection comes out of those N). `--epochs` and `--max-train` take comma lists and run the grid.
Writes benchmarks/results/single_task[_TAG].json and .csv (single_task_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchkit import RESULTS, check, header, print_table, run_as_script, write_csv, write_json
from edgead.cl.config import ReplayConfig
from edgead.cl.runner import run_stream
from edgead.data import TaskStream
from edgead.data.synth import generate_dataset
from edgead.engine.trainer import TrainConfig
from edgead.models.teacher_student import DetectorConfig

COLS = ["dataset", "model", "teacher", "epochs", "train_images", "seed", "image_auroc", "pixel_auroc", "aupro",
        "epoch_s", "selected_epoch", "wall_s", "params", "macs"]
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def _ints(text: str) -> list[int]:
    return [int(v) for v in str(text).split(",") if v.strip()]


def _bools(text: str) -> list[bool]:
    table = {"true": [True], "false": [False], "both": [True, False]}
    if text.lower() not in table:
        raise argparse.ArgumentTypeError(f"{text!r}: expected true, false or both")
    return table[text.lower()]


def subsample(root: Path, category: str, n: int, seed: int, tmp: Path) -> Path:
    """A temporary MVTec-layout root whose category has N seeded-random train images (symlinks)."""
    import numpy as np

    src = root / category
    good = sorted(p for p in (src / "train" / "good").iterdir() if p.suffix.lower() in IMAGE_EXT)
    if n <= 0 or n >= len(good):
        return root
    keep = sorted(np.random.default_rng(seed).choice(len(good), size=n, replace=False).tolist())
    out = tmp / f"sub_{category}_{n}_{seed}"
    dst = out / category / "train" / "good"
    dst.mkdir(parents=True)
    for i in keep:
        (dst / good[i].name).symlink_to(good[i].resolve())
    for sub in ("test", "ground_truth"):
        if (src / sub).exists():
            (out / category / sub).symlink_to((src / sub).resolve(), target_is_directory=True)
    return out


def run_one(root: Path, category: str, *, model: str, pretrained: bool, epochs: int, image_size: int,
            seed: int, weights: str | None, tmp: Path) -> dict:
    det = DetectorConfig.defaults(model, "mcunet-in3", image_size=image_size, pretrained=pretrained)
    cfg = TrainConfig(epochs=epochs, seed=seed, progress=False)
    out = Path(tempfile.mkdtemp(prefix=f"run_{model}_", dir=tmp))
    t0 = time.perf_counter()
    res = run_stream(TaskStream(root, [category]), det, cfg, ReplayConfig("finetune"), out,
                     weights=weights if pretrained else None, log=lambda m: None, command="bench_single_task")
    wall = time.perf_counter() - t0
    m = res["metrics"]
    t = res["timings"]["per_task"][0]
    return {
        "image_auroc": m["image_auroc"]["final_average"],
        "pixel_auroc": m["pixel_auroc"]["final_average"],
        "aupro": m["aupro"]["final_average"],
        "image_f1": m["image_f1"]["final_average"],
        "epoch_s": res["timings"]["mean_epoch_seconds"],
        "prepare_s": t["prepare_seconds"],
        "eval_s": t["eval_seconds"],
        "selected_epoch": t["selected_epoch"],
        "wall_s": wall,
        "params": _total(res["memory"]["params"]),
        "fp32_bytes": res["memory"]["architecture_bytes"]["fp32"],
        "macs": _total(res["cost"]["macs"]),
    }


def _total(v):
    return v["total"] if isinstance(v, dict) else v


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="MVTec-layout root of the real dataset (e.g. converted Magnetic-Tile)")
    p.add_argument("--category", default="magnetic_tile", help="category under --data")
    p.add_argument("--synth", default="brick", help="synthetic categories to add, comma list ('' for none)")
    p.add_argument("--synth-size", type=int, default=256, help="synthetic image side")
    p.add_argument("--synth-train", type=int, default=40)
    p.add_argument("--synth-test", type=int, default=12)
    p.add_argument("--models", default="paste,stfpm")
    p.add_argument("--pretrained", type=_bools, default=[True, False], help="true, false or both (default)")
    p.add_argument("--epochs", default="5", help="comma list")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--max-train", default="0", help="comma list of train-image counts (0 = all)")
    p.add_argument("--seeds", default="0", help="comma list")
    p.add_argument("--weights", default=os.environ.get("EDGEAD_WEIGHTS_DIR"),
                   help="MCUNet-in3 weights file or folder (default $EDGEAD_WEIGHTS_DIR)")
    p.add_argument("--tag", default="", help="suffix of the results file names")
    p.add_argument("--out", "--out-dir", dest="out_dir", default=str(RESULTS), help="folder for the results files")
    p.add_argument("--quick", action="store_true", help="tiny synthetic data at 64 px, 1 epoch")
    p.add_argument("--from-json", default=None,
                   help="recompute the table and checks from the rows of a saved (possibly partial) results file")
    a = p.parse_args(argv)
    if a.from_json:
        import json

        saved = json.loads(Path(a.from_json).read_text())
        print_table(saved["rows"], COLS)
        saved["checks"] = expectations(saved["rows"])
        write_json(a.from_json, saved)
        return 0
    if a.quick:
        a.data, a.synth, a.synth_size, a.synth_train, a.synth_test = None, "brick", 64, 8, 4
        a.epochs, a.image_size, a.max_train, a.seeds, a.tag = "1", 64, "0", "0", a.tag or "quick"
    meta = header(argv)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_single_") as td:
        tmp = Path(td)
        datasets: list[tuple[str, Path, str]] = []
        if a.data:
            datasets.append((a.category, Path(a.data), a.category))
        synth = [c.strip() for c in a.synth.split(",") if c.strip()]
        if synth:
            sroot = generate_dataset(tmp / "synth", synth, seed=0, image_size=a.synth_size,
                                     n_train=a.synth_train, n_test=a.synth_test)
            datasets += [(f"synth-{c}", sroot, c) for c in synth]
        for name, root, cat in datasets:
            for n in _ints(a.max_train):
                for seed in _ints(a.seeds):
                    sub = subsample(root, cat, n, seed, tmp)
                    n_train = len(list((sub / cat / "train" / "good").iterdir()))
                    for epochs in _ints(a.epochs):
                        for model in models:
                            for pre in a.pretrained:
                                r = run_one(sub, cat, model=model, pretrained=pre, epochs=epochs,
                                            image_size=a.image_size, seed=seed, weights=a.weights, tmp=tmp)
                                row = {"dataset": name, "model": model, "teacher": "imagenet" if pre else "random",
                                       "epochs": epochs, "train_images": n_train, "seed": seed, **r}
                                rows.append(row)
                                print(f"{name} {model} {row['teacher']} ep={epochs} n={n_train} seed={seed}: "
                                      f"img {r['image_auroc']:.3f} pix {r['pixel_auroc']:.3f} "
                                      f"aupro {r['aupro']:.3f} ({r['wall_s']:.0f} s)", flush=True)
                                _save(rows, meta, a, [], final=False)
    print()
    print_table(rows, COLS)
    checks = expectations(rows)
    _save(rows, meta, a, checks, final=True)
    print(f"wrote {RESULTS}/single_task{'_' + a.tag if a.tag else ''}.json and .csv")
    return 0


def _save(rows, meta, a, checks, *, final: bool) -> None:
    tag = f"_{a.tag}" if a.tag else ""
    Path(a.out_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(a.out_dir) / f"single_task{tag}.json", {**meta, "args": vars(a), "complete": final,
                                                     "rows": rows, "checks": checks})
    write_csv(Path(a.out_dir) / f"single_task{tag}.csv", rows)


def _mean(rows, key="image_auroc"):
    vals = [r[key] for r in rows if r[key] is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def expectations(rows: list[dict]) -> list[dict]:
    """PASS/FAIL lines: pretrained beats random, PaSTe within 0.02 of STFPM, PaSTe >= 0.85 on Magnetic-Tile."""
    out = []
    groups = sorted({(r["dataset"], r["epochs"], r["train_images"]) for r in rows})
    for ds, ep, n in groups:
        g = [r for r in rows if (r["dataset"], r["epochs"], r["train_images"]) == (ds, ep, n)]
        tag = f"{ds}, {ep} ep, {n} train"
        for model in sorted({r["model"] for r in g}):
            pre = _mean([r for r in g if r["model"] == model and r["teacher"] == "imagenet"])
            rnd = _mean([r for r in g if r["model"] == model and r["teacher"] == "random"])
            if pre == pre and rnd == rnd:
                out.append(check(f"{model} pretrained beats random teacher [{tag}]", pre >= rnd + 0.05,
                                 f"image AUROC {pre:.3f} vs {rnd:.3f}"))
        paste = _mean([r for r in g if r["model"] == "paste" and r["teacher"] == "imagenet"])
        stfpm = _mean([r for r in g if r["model"] == "stfpm" and r["teacher"] == "imagenet"])
        if paste == paste and stfpm == stfpm:
            out.append(check(f"PaSTe within 0.02 image AUROC of STFPM [{tag}]", paste >= stfpm - 0.02,
                             f"{paste:.3f} vs {stfpm:.3f}, diff {paste - stfpm:+.3f}"))
        if ds == "magnetic_tile" and paste == paste:
            out.append(check(f"PaSTe-MCUNet image AUROC >= 0.85 on Magnetic-Tile [{tag}]", paste >= 0.85,
                             f"{paste:.3f}"))
    return out


if __name__ == "__main__":
    run_as_script(main)
