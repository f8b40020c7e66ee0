"""Continual-learning quality: fine-tuning, image replay and compressed (latent) replay over a task stream.

    python benchmarks/bench_cl_quality.py --image-size 128 --epochs 3 --seeds 0,1      # 4 synthetic tasks
    python benchmarks/bench_cl_quality.py --extra-data /tmp/mt                          # + magnetic_tile
    python benchmarks/bench_cl_quality.py --quick                                       # 64 px, 2 tasks, < 90 s

Strategies: finetune; replay (raw images); compressed-replay with the codecs fp32, int8-channel,
int8-tensor, int4-channel and pca, first at the same sample count (`--memory-size`), then at an equal
byte budget (`--budget`, default 2.46 MB = 2,460,000 B) for replay and every codec. PaSTe-MCUNet with the
ImageNet teacher; each run is one `run_stream` in its own temporary out dir. Reported per configuration
(mean and std over the seeds): final average image and pixel AUROC, relative and absolute forgetting of
image AUROC and pixel F1, additional_bytes (what the replay memory occupies) and buffer samples.
Writes benchmarks/results/cl_quality[_TAG].json and .csv (cl_quality_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchkit import RESULTS, check, header, print_table, run_as_script, write_csv, write_json
from edgead.cl.config import ReplayConfig
from edgead.cl.runner import run_stream
from edgead.data import TaskStream
from edgead.data.synth import generate_dataset
from edgead.engine.trainer import TrainConfig
from edgead.models.teacher_student import DetectorConfig

CODECS = ("fp32", "int8-channel", "int8-tensor", "int4-channel", "pca")
METRIC_KEYS = ("image_auroc", "pixel_auroc", "img_forget_rel", "img_forget_abs", "pixf1_forget_rel",
               "pixf1_forget_abs", "additional_bytes", "buffer_samples", "wall_s")


def configurations(memory_size: int, budget: int, codecs) -> list[dict]:
    confs = [{"setting": "none", "strategy": "finetune", "codec": None}]
    for setting, kw in (("count", {"memory_size": memory_size}), ("budget", {"budget_bytes": budget})):
        confs.append({"setting": setting, "strategy": "replay", "codec": None, **kw})
        confs += [{"setting": setting, "strategy": "compressed-replay", "codec": c, **kw} for c in codecs]
    # The smarter selection policy (k-center coverage of the latent space) against the seeded-random default.
    confs += [{"setting": "budget-coverage", "strategy": "compressed-replay", "codec": c, "policy": "coverage",
               "budget_bytes": budget} for c in codecs]
    return confs


def label(c: dict) -> str:
    name = c["strategy"] if c["codec"] is None else f"latent-{c['codec']}"
    return name + ("-coverage" if c.get("policy") == "coverage" else "")


def run_one(root: Path, tasks: list[str], conf: dict, *, image_size: int, epochs: int, seed: int,
            weights: str | None, tmp: Path) -> dict:
    det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=image_size)
    cfg = TrainConfig(epochs=epochs, seed=seed, progress=False)
    out = Path(tempfile.mkdtemp(prefix="cl_", dir=tmp))
    kw = {k: conf[k] for k in ("memory_size", "budget_bytes", "policy", "device_trunk") if k in conf}
    t0 = time.perf_counter()
    try:
        replay = ReplayConfig(strategy=conf["strategy"], codec=conf["codec"], **kw)
        res = run_stream(TaskStream(root, tasks), det, cfg, replay, out, weights=weights, log=lambda m: None,
                         command="bench_cl_quality")
    finally:
        wall = time.perf_counter() - t0
        shutil.rmtree(out, ignore_errors=True)
    m, mem = res["metrics"], res["memory"]
    return {
        "image_auroc": m["image_auroc"]["final_average"],
        "pixel_auroc": m["pixel_auroc"]["final_average"],
        "img_forget_rel": m["image_auroc"]["forgetting_relative"],
        "img_forget_abs": m["image_auroc"]["forgetting_absolute"],
        "pixf1_forget_rel": m["pixel_f1"]["forgetting_relative"],
        "pixf1_forget_abs": m["pixel_f1"]["forgetting_absolute"],
        "additional_bytes": mem["additional_bytes"],
        "buffer_samples": int(sum(mem["buffer_samples"].values())),
        "buffer_per_task": mem["buffer_samples"],
        "image_auroc_matrix": m["image_auroc"]["matrix"],
        "wall_s": wall,
    }


def aggregate(runs: list[dict]) -> list[dict]:
    out = []
    keys = []
    for r in runs:
        k = (r["setting"], r["method"])
        if k not in keys:
            keys.append(k)
    for setting, method in keys:
        g = [r for r in runs if (r["setting"], r["method"]) == (setting, method)]
        row = {"setting": setting, "method": method, "seeds": len(g)}
        for k in METRIC_KEYS:
            vals = np.array([np.nan if r[k] is None else r[k] for r in g], dtype=float)
            row[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else None
            row[f"{k}_std"] = float(np.nanstd(vals)) if np.isfinite(vals).any() else None
        out.append(row)
    return out


def expectations(agg: list[dict]) -> list[dict]:
    by = {(r["setting"], r["method"]): r for r in agg}
    out = []
    ft, rp = by.get(("none", "finetune")), by.get(("count", "replay"))
    if ft and rp:
        out.append(check("fine-tuning forgets clearly more than replay (abs. image-AUROC forgetting, by >= 0.02)",
                         ft["img_forget_abs"] >= rp["img_forget_abs"] + 0.02,
                         f"finetune {ft['img_forget_abs']:.3f} vs replay {rp['img_forget_abs']:.3f}; "
                         f"final image AUROC {ft['image_auroc']:.3f} vs {rp['image_auroc']:.3f}"))
    f32, i8 = by.get(("count", "latent-fp32")), by.get(("count", "latent-int8-channel"))
    if f32 and i8:
        di, dp = i8["image_auroc"] - f32["image_auroc"], i8["pixel_auroc"] - f32["pixel_auroc"]
        ratio = i8["additional_bytes"] / f32["additional_bytes"]
        out.append(check("int8-channel within 0.01 image AUROC of fp32 (same sample count)", abs(di) <= 0.01,
                         f"{i8['image_auroc']:.4f} vs {f32['image_auroc']:.4f}, diff {di:+.4f}"))
        out.append(check("int8-channel within 0.01 pixel AUROC of fp32 (same sample count)", abs(dp) <= 0.01,
                         f"{i8['pixel_auroc']:.4f} vs {f32['pixel_auroc']:.4f}, diff {dp:+.4f}"))
        out.append(check("int8-channel at about a quarter of fp32's bytes (ratio in [0.2, 0.35])", 0.2 <= ratio <= 0.35,
                         f"{i8['additional_bytes']:,.0f} B vs {f32['additional_bytes']:,.0f} B, ratio {ratio:.3f}"))
    if ft and rp:
        out.append(check("fine-tuning forgets clearly more than replay (relative pixel-F1 forgetting, CLAD's "
                         "default, by >= 0.05)", ft["pixf1_forget_rel"] >= rp["pixf1_forget_rel"] + 0.05,
                         f"finetune {ft['pixf1_forget_rel']:.3f} vs replay {rp['pixf1_forget_rel']:.3f}; final "
                         f"pixel AUROC {ft['pixel_auroc']:.3f} vs {rp['pixel_auroc']:.3f}"))
    for (s, m), cov in by.items():
        rnd = by.get(("budget", m.removesuffix("-coverage")))
        if s == "budget-coverage" and rnd:
            out.append(check(f"{m} vs random selection at the byte budget (reported, not a target)", True,
                             f"image AUROC {cov['image_auroc']:.3f} vs {rnd['image_auroc']:.3f}, pixel AUROC "
                             f"{cov['pixel_auroc']:.3f} vs {rnd['pixel_auroc']:.3f}"))
    rb = by.get(("budget", "replay"))
    comp = [r for (s, m), r in by.items() if s == "budget" and m.startswith("latent-")]
    if rb and comp:
        best = max(comp, key=lambda r: r["image_auroc"])
        out.append(check("at the byte budget the best compressed replay >= image replay (final image AUROC)",
                         best["image_auroc"] >= rb["image_auroc"],
                         f"{best['method']} {best['image_auroc']:.3f} vs replay {rb['image_auroc']:.3f}"))
        out.append(check("at the byte budget the best compressed replay forgets <= image replay (abs. image AUROC)",
                         best["img_forget_abs"] <= rb["img_forget_abs"],
                         f"{best['method']} {best['img_forget_abs']:.3f} vs replay {rb['img_forget_abs']:.3f}"))
    return out


def save(runs: list[dict], meta: dict, a, tasks: list[str], *, final: bool, complete: bool | None = None) -> None:
    agg = aggregate(runs)
    checks = []
    if final:
        cols = ["setting", "method", "seeds", "image_auroc", "image_auroc_std", "pixel_auroc", "pixel_auroc_std",
                "img_forget_rel", "img_forget_abs", "img_forget_abs_std", "pixf1_forget_rel", "pixf1_forget_abs",
                "additional_bytes", "buffer_samples"]
        print(f"\ntasks: {tasks}; seeds {a.seeds}; {a.epochs} epochs; {a.image_size} px; "
              f"memory size {a.memory_size}; budget {a.budget:,} B")
        print_table(agg, cols)
        checks = expectations(agg)
    tag = f"_{a.tag}" if a.tag else ""
    Path(a.out_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(a.out_dir) / f"cl_quality{tag}.json", {**meta, "args": vars(a), "tasks": tasks, "complete": final if complete is None else complete,
                                                    "summary": agg, "runs": runs, "checks": checks})
    write_csv(Path(a.out_dir) / f"cl_quality{tag}.csv",
              [{k: v for k, v in r.items() if k not in ("buffer_per_task", "image_auroc_matrix")} for r in runs])
    if final:
        print(f"wrote {Path(a.out_dir) / f'cl_quality{tag}.json'} and .csv")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="MVTec-layout root holding --tasks (default: generate synthetic)")
    p.add_argument("--tasks", default="brick,grass,nut,pill")
    p.add_argument("--extra-data", default=None, help="a second root whose --extra-task is appended (fifth task)")
    p.add_argument("--extra-task", default="magnetic_tile")
    p.add_argument("--image-size", type=int, default=128, help="synthetic image side and model input size")
    p.add_argument("--train", type=int, default=40, help="synthetic train images per task")
    p.add_argument("--test", type=int, default=12, help="synthetic good test images per task")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--memory-size", type=int, default=30, help="buffer samples for the same-count comparison")
    p.add_argument("--budget", type=int, default=2_460_000, help="byte budget for the equal-budget comparison")
    p.add_argument("--codecs", default=",".join(CODECS))
    p.add_argument("--only", default="", help="run only these settings: comma list of none,count,budget,budget-coverage")
    p.add_argument("--weights", default=os.environ.get("EDGEAD_WEIGHTS_DIR"))
    p.add_argument("--tag", default="")
    p.add_argument("--out", "--out-dir", dest="out_dir", default=str(RESULTS), help="folder for the results files")
    p.add_argument("--quick", action="store_true",
                   help="64 px, 2 tasks, 1 epoch, 1 seed; finetune, replay, fp32 and int8-channel at a sample count")
    p.add_argument("--from-json", default=None,
                   help="recompute the summary and checks from the runs of saved (possibly partial) results files, comma-separated")
    a = p.parse_args(argv)
    if a.from_json:
        import json

        # Several files (e.g. one per seed, run in parallel) merge into one summary under --tag.
        files = [json.loads(Path(f).read_text()) for f in a.from_json.split(",")]
        saved = files[0]
        meta = {"command": " | ".join(f["command"] for f in files), "date": saved["date"], "machine": saved["machine"]}
        seeds = ",".join(str(f["args"]["seeds"]) for f in files)
        args = argparse.Namespace(**{**saved["args"], "tag": a.tag or saved["args"].get("tag", ""), "seeds": seeds,
                                     "out_dir": a.out_dir})
        runs = [r for f in files for r in f["runs"]]
        save(runs, meta, args, saved["tasks"], final=True, complete=all(f.get("complete", False) for f in files))
        return 0
    if a.quick:
        a.data, a.extra_data, a.tasks, a.image_size, a.train, a.test = None, None, "brick,nut", 64, 8, 4
        a.epochs, a.seeds, a.memory_size, a.tag = 1, "0", 4, a.tag or "quick"
        a.codecs, a.only = "fp32,int8-channel", a.only or "none,count"
    meta = header(argv)
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    codecs = [c.strip() for c in a.codecs.split(",") if c.strip()]
    confs = configurations(a.memory_size, a.budget, codecs)
    if a.only:
        confs = [c for c in confs if c["setting"] in a.only.split(",")]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_cl_") as td:
        tmp = Path(td)
        root = Path(a.data) if a.data else generate_dataset(tmp / "synth", tasks, seed=0, image_size=a.image_size,
                                                            n_train=a.train, n_test=a.test)
        if a.extra_data:  # one root holding every task: symlink the categories side by side
            merged = tmp / "merged"
            merged.mkdir()
            for t in tasks:
                (merged / t).symlink_to((root / t).resolve(), target_is_directory=True)
            (merged / a.extra_task).symlink_to((Path(a.extra_data) / a.extra_task).resolve(),
                                               target_is_directory=True)
            root, tasks = merged, [*tasks, a.extra_task]
        for seed in seeds:
            for conf in confs:
                r = run_one(root, tasks, conf, image_size=a.image_size, epochs=a.epochs, seed=seed,
                            weights=a.weights, tmp=tmp)
                row = {"setting": conf["setting"], "method": label(conf), "strategy": conf["strategy"],
                       "codec": conf["codec"], "memory_size": conf.get("memory_size"),
                       "budget_bytes": conf.get("budget_bytes"), "seed": seed, **r}
                runs.append(row)
                print(f"seed {seed} {row['setting']:6s} {row['method']:20s} img {r['image_auroc']:.3f} "
                      f"pix {r['pixel_auroc']:.3f} forget(img abs) {r['img_forget_abs']:.3f} "
                      f"bytes {r['additional_bytes']:,} samples {r['buffer_samples']} ({r['wall_s']:.0f} s)",
                      flush=True)
                save(runs, meta, a, tasks, final=False)  # partial results survive an interrupted run
    save(runs, meta, a, tasks, final=True)
    return 0


if __name__ == "__main__":
    run_as_script(main)
