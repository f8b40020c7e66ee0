"""Training recipes on the real categories: chosen on a DEV half of each test set, reported on the other half.

    python benchmarks/bench_recipe.py --data /tmp/real --categories magnetic_tile,battery_weld,bsdata \
        --recipes before,squash-s300,pad-s300,tile-s300 --seeds 0 --tag resize
    python benchmarks/bench_recipe.py --data /tmp/real --recipes before,s1000-b8 --seeds 0,1,2 --tag recipe
    python benchmarks/bench_recipe.py --recipe "mine:steps=600,batch_size=16,lr=0.2" --recipes before,mine ...
    python benchmarks/bench_recipe.py --quick        # tiny synthetic data at 64 px (< 60 s)

A recipe is a training budget (epochs or optimiser steps), batch size, learning rate, input size, model
selection ("pseudo": pseudo-defects on held-out normals every epoch, "last": the last epoch) and resize mode
(squash, pad, tile). `before` is today's defaults. Each (category, recipe, seed) trains PaSTe-MCUNet once on
the category's train/good images (10% held out for selection and the deployment threshold, as `edgead train`),
then evaluates on the two halves of the test set from `edgead.data.dev_split.dev_report_split` (seed
--split-seed, the same for every recipe and seed): image AUROC, pixel AUROC, AUPRO (n/a without masks, e.g.
ELPV), deployed F1 at the stored threshold, training seconds. The summary gives mean and spread (std) over
seeds; the recipe is CHOSEN by its mean dev image AUROC over the categories (among recipes within --max-time
x the `before` training time) and REPORTED on the report half, which played no part in the choice.
Pixel metrics are computed in each mode's frame (firmware_sim.preprocess): squash in the squashed square, pad
and tile in the letterbox frame with the padding left out. Training seconds depend on the machine's load.
Writes benchmarks/results/recipe[_TAG].json and .csv (rows) and recipe[_TAG]_summary.csv.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchkit import RESULTS, check, header, print_table, run_as_script, write_csv, write_json
from edgead.data import TaskStream
from edgead.data.dev_split import dev_report_split
from edgead.data.synth import generate_dataset
from edgead.engine.evaluate import evaluate_split, fit_calibration
from edgead.engine.thresholds import DEFAULT_THRESHOLD_RULE, LEGACY_THRESHOLD_RULE
from edgead.engine.trainer import TrainConfig, train_task
from edgead.models.teacher_student import DetectorConfig, TeacherStudent
from firmware_sim.preprocess import RESIZE_MODES, Preprocess

# The defaults before the budget floor: 20 epochs, batch 32, lr 0.4, 256 px, squash, pseudo-defect selection,
# no floor (explicit epochs; min_steps 0). Files written before min_steps existed read as min_steps 0.
BEFORE = {"epochs": 20, "steps": None, "batch_size": 32, "lr": 0.4, "image_size": 256, "resize": "squash",
          "select": "pseudo", "min_steps": 0}
RECIPES = {
    "before": {},
    # `edgead train`'s defaults since the budget floor (epochs left to TrainConfig; min_steps / floor_steps /
    # floor_batch): 20 epochs at batch 32, or 1000 steps at batch 8 when those would be fewer than 300 steps.
    "floor": {"epochs": None, "min_steps": 300},
    "s1000-b8": {"steps": 1000, "batch_size": 8},
    "s1000-b8-lr0.2": {"steps": 1000, "batch_size": 8, "lr": 0.2},
    "s600-b16": {"steps": 600, "batch_size": 16},
    "s300-b8": {"steps": 300, "batch_size": 8},  # a quarter of s1000-b8's images: studies on a loaded machine
    "s1000-b8-320": {"steps": 1000, "batch_size": 8, "image_size": 320},
    "s1000-b8-last": {"steps": 1000, "batch_size": 8, "select": "last"},
    "squash-s300": {"steps": 300, "batch_size": 16},
    "pad-s300": {"steps": 300, "batch_size": 16, "resize": "pad"},
    "tile-s300": {"steps": 300, "batch_size": 16, "resize": "tile"},
    "s1000-b8-pad": {"steps": 1000, "batch_size": 8, "resize": "pad"},
    "s1000-b8-tile": {"steps": 1000, "batch_size": 8, "resize": "tile"},
}
QUICK_RECIPES = {
    "before": {"epochs": 1, "image_size": 64},
    "s6-b4": {"steps": 6, "batch_size": 4, "image_size": 64},
    "s6-b4-pad": {"steps": 6, "batch_size": 4, "image_size": 64, "resize": "pad"},
    "s6-b4-tile-last": {"steps": 6, "batch_size": 4, "image_size": 64, "resize": "tile", "select": "last"},
}
METRICS = ("image_auroc", "pixel_auroc", "aupro", "deployed_f1")
COLS = ["category", "recipe", "seed", "half", "n_test", *METRICS, "train_s", "steps", "epochs", "selected_epoch"]
SUMMARY_COLS = ["category", "recipe", "half", "seeds", *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")],
                "train_s_mean"]


def parse_recipe(text: str) -> tuple[str, dict]:
    """'NAME:key=value,key=value' -> (name, overrides of BEFORE). Keys: the fields of BEFORE."""
    name, _, body = text.partition(":")
    if not name or not body:
        raise argparse.ArgumentTypeError(f"recipe {text!r}: expected NAME:key=value,... (keys {', '.join(BEFORE)})")
    out: dict = {}
    for item in body.split(","):
        k, _, v = item.partition("=")
        k = k.strip()
        if k not in BEFORE:
            raise argparse.ArgumentTypeError(f"recipe {name!r}: unknown key {k!r}; expected one of {', '.join(BEFORE)}")
        out[k] = None if v in ("", "none") else (v if k in ("resize", "select") else
                                                   float(v) if k == "lr" else int(v))
    return name, out


def resolve(name: str, overrides: dict) -> dict:
    """The full recipe: BEFORE with the overrides; a steps budget replaces the epochs."""
    r = {**BEFORE, **overrides}
    if r["resize"] not in RESIZE_MODES:
        raise SystemExit(f"recipe {name!r}: resize {r['resize']!r}, expected one of {', '.join(RESIZE_MODES)}")
    if r["select"] not in ("pseudo", "last"):
        raise SystemExit(f"recipe {name!r}: select {r['select']!r}, expected pseudo or last")
    return r


class RecipeData:
    """Each category's loaded task per (input size, resize mode, seed), and its fixed dev / report split."""

    def __init__(self, root: Path, split_seed: int):
        self.root, self.split_seed, self.cache = root, split_seed, {}

    def get(self, category: str, size: int, resize: str, seed: int):
        key = (category, size, resize, seed)
        if key not in self.cache:
            self.cache = {k: v for k, v in self.cache.items() if k[:3] == key[:3]}  # bound RAM: one geometry
            pre = Preprocess(image_size=size, resize_mode=resize)
            d = TaskStream(self.root, [category]).tasks[0].load(pre, val_fraction=0.1, seed=seed)
            dev, rep = dev_report_split(d.test.labels, d.test.defect_types, self.split_seed, key=category)
            self.cache[key] = (pre, d, {"dev": d.test.subset(dev), "report": d.test.subset(rep)})
        return self.cache[key]


def dataset(a, tmp: Path, n_train: int, n_test: int) -> tuple[Path, list[str]]:
    """(root, categories) of a benchmark over categories: ``--data`` and ``--categories`` (each checked before
    anything trains), or with ``--quick`` two generated categories at 64 px in ``tmp`` (tag "quick")."""
    if a.quick:
        a.tag = a.tag or "quick"
        return generate_dataset(tmp / "synth", ["nut", "brick"], seed=0, image_size=64, n_train=n_train,
                                n_test=n_test), ["nut", "brick"]
    if not a.data:
        raise SystemExit("--data: give the dataset root (or --quick)")
    root, cats = Path(a.data), [c.strip() for c in a.categories.split(",") if c.strip()]
    TaskStream(root, cats)  # every category exists before anything trains
    return root, cats


def run_one(data: RecipeData, category: str, recipe: dict, seed: int, weights: str | None) -> list[dict]:
    """Train once, evaluate on both halves: one row per half."""
    model, pre, halves, report, train_s = train_one(data, category, recipe, seed, weights)
    rows = []
    for half, split in halves.items():
        m = evaluate_split(model, split, pre)
        rows.append({"half": half, "n_test": len(split), **{k: m.get(k) for k in METRICS}, "train_s": train_s,
                     "steps": report["steps"], "epochs": report["epochs"],
                     "selected_epoch": report["selected_epoch"]})
    return rows


def train_one(data: RecipeData, category: str, recipe: dict, seed: int, weights: str | None):
    """PaSTe-MCUNet trained with ``recipe`` on a category, calibrated on its held-out normals:
    (model, preprocess, {"dev": split, "report": split}, training report, training seconds)."""
    import torch

    pre, d, halves = data.get(category, recipe["image_size"], recipe["resize"], seed)
    det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=recipe["image_size"])
    torch.manual_seed(seed)
    model = TeacherStudent(det, weights=weights)
    cfg = TrainConfig(epochs=recipe["epochs"], steps=recipe["steps"], batch_size=recipe["batch_size"],
                      lr=recipe["lr"], seed=seed, select_every=0 if recipe["select"] == "last" else 1,
                      resize=recipe["resize"], progress=False, min_steps=recipe.get("min_steps", 0))
    t0 = time.perf_counter()
    # The same seed for the task as `edgead train` gives a single-task run (seed * 1000 + task index 0).
    report = train_task(model, d.train.images, d.val.images, pre, cfg, seed=seed * 1000)
    model.calibration = fit_calibration(model, d.val, pre, rule=recipe.get("threshold_rule", DEFAULT_THRESHOLD_RULE))
    train_s = time.perf_counter() - t0
    return model, pre, halves, report, train_s


def _stats(vals: list) -> tuple[float | None, float | None]:
    v = [x for x in vals if x is not None]
    if not v:
        return None, None  # n/a (e.g. pixel metrics without masks), never 0
    return float(np.mean(v)), float(np.std(v))


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds per (category, recipe, half)."""
    out = []
    for key in sorted({(r["category"], r["recipe"], r["half"]) for r in rows}, key=lambda k: (k[0], k[2], k[1])):
        g = [r for r in rows if (r["category"], r["recipe"], r["half"]) == key]
        s = {"category": key[0], "recipe": key[1], "half": key[2], "seeds": len(g)}
        for m in METRICS:
            s[f"{m}_mean"], s[f"{m}_std"] = _stats([r[m] for r in g])
        s["train_s_mean"] = float(np.mean([r["train_s"] for r in g]))
        out.append(s)
    return out


def choose(summary: list[dict], max_time: float) -> dict:
    """Per recipe, the mean over categories (only recipes run on every category); the choice on DEV."""
    cats = sorted({s["category"] for s in summary})
    recipes = sorted({s["recipe"] for s in summary})
    table = {}
    for rec in recipes:
        per = {h: [s for s in summary if s["recipe"] == rec and s["half"] == h] for h in ("dev", "report")}
        if len(per["dev"]) != len(cats):
            continue
        table[rec] = {h: {m: _stats([s[f"{m}_mean"] for s in per[h]])[0] for m in METRICS} for h in per}
        table[rec]["train_s"] = float(sum(s["train_s_mean"] for s in per["dev"]))
    out = {"categories": cats, "per_recipe": table, "chosen": None, "max_time": max_time}
    if "before" not in table:  # e.g. resize modes at one budget: the best on dev, no time limit to apply
        ok = [r for r, v in table.items() if v["dev"]["image_auroc"] is not None]
        out["chosen"] = max(ok, key=lambda r: table[r]["dev"]["image_auroc"]) if ok else None
        return out
    limit = max_time * table["before"]["train_s"]
    ok = {r: v for r, v in table.items() if v["train_s"] <= limit and v["dev"]["image_auroc"] is not None}
    if ok:
        chosen = max(ok, key=lambda r: ok[r]["dev"]["image_auroc"])
        out["chosen"] = chosen
        out["time_ratio"] = table[chosen]["train_s"] / table["before"]["train_s"]
        out["report_gain_image_auroc"] = (table[chosen]["report"]["image_auroc"]
                                          - table["before"]["report"]["image_auroc"])
    return out


def expectations(choice: dict) -> list[dict]:
    """The issue's bars, on the REPORT half of the recipe chosen on DEV."""
    if not choice.get("chosen") or "before" not in choice["per_recipe"]:
        return []
    rec, before = choice["per_recipe"][choice["chosen"]], choice["per_recipe"]["before"]
    gain, ratio = choice["report_gain_image_auroc"], choice["time_ratio"]
    out = [check(f"chosen recipe {choice['chosen']!r}: mean report image AUROC >= before + 0.03 over "
                 f"{len(choice['categories'])} categories", gain >= 0.03,
                 f"{rec['report']['image_auroc']:.3f} vs {before['report']['image_auroc']:.3f}, {gain:+.3f}"),
           check(f"chosen recipe {choice['chosen']!r}: training time <= {choice['max_time']}x before",
                 ratio <= choice["max_time"], f"{ratio:.2f}x")]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="dataset root holding the converted categories (MVTec layout)")
    p.add_argument("--categories", default="magnetic_tile,battery_weld,bsdata,mpdd_metal_plate,elpv_mono,elpv_poly")
    p.add_argument("--recipes", default="before,s1000-b8", help=f"comma list of names: {', '.join(RECIPES)}, "
                   "or ones given with --recipe")
    p.add_argument("--recipe", action="append", type=parse_recipe, default=[],
                   help="define a recipe NAME:key=value,... (keys: " + ", ".join(BEFORE) + ")")
    p.add_argument("--seeds", default="0", help="comma list of training seeds")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the dev / report split")
    p.add_argument("--max-time", type=float, default=1.5, help="a chosen recipe trains at most this x before")
    p.add_argument("--weights", default=os.environ.get("EDGEAD_WEIGHTS_DIR"),
                   help="MCUNet-in3 weights file or folder (default $EDGEAD_WEIGHTS_DIR)")
    p.add_argument("--threshold-rule", default=None,
                   help="the deployment threshold rule behind deployed_f1 (default: edgead's default)")
    p.add_argument("--tag", default="", help="suffix of the results file names")
    p.add_argument("--out-dir", default=str(RESULTS), help="folder for the results files")
    p.add_argument("--quick", action="store_true", help="tiny synthetic data at 64 px, budgets of a few steps")
    p.add_argument("--merge", default=None,
                   help="comma list of saved results files: recompute the summary, choice and checks over all "
                        "their rows (e.g. categories measured in separate runs) and write them under --tag")
    a = p.parse_args(argv)
    if a.merge:
        return _merge(a, argv)
    known = {**(QUICK_RECIPES if a.quick else RECIPES), **dict(a.recipe)}
    names = list(QUICK_RECIPES) if a.quick else [n.strip() for n in a.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--recipes: unknown {unknown}; known: {', '.join(known)}")
    recipes = {n: resolve(n, known[n]) for n in names}
    rule = a.threshold_rule or DEFAULT_THRESHOLD_RULE
    recipes = {n: {**r, "threshold_rule": rule} for n, r in recipes.items()}
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    meta = header(argv)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_recipe_") as td:
        root, cats = dataset(a, Path(td), n_train=10, n_test=6)
        data = RecipeData(root, a.split_seed)
        # Geometry-major order: each category's data is loaded once per (size, resize mode).
        for cat in cats:
            for name, rec in sorted(recipes.items(), key=lambda kv: (kv[1]["image_size"], kv[1]["resize"])):
                for seed in seeds:
                    for r in run_one(data, cat, rec, seed, a.weights):
                        rows.append({"category": cat, "recipe": name, "seed": seed, **r})
                    dev = rows[-2]
                    print(f"{cat} {name} seed={seed}: dev img {dev['image_auroc']:.3f} "
                          f"pix {dev['pixel_auroc'] if dev['pixel_auroc'] is None else round(dev['pixel_auroc'], 3)}"
                          f" ({dev['train_s']:.0f} s train)", flush=True)
                    _save(rows, meta, a, recipes, final=False)
    print()
    summary = _save(rows, meta, a, recipes, final=True)
    print_table([s for s in summary if s["half"] == "report"],
                ["category", "recipe", "seeds", "image_auroc_mean", "image_auroc_std", "pixel_auroc_mean",
                 "aupro_mean", "deployed_f1_mean", "train_s_mean"])
    tag = f"_{a.tag}" if a.tag else ""
    print(f"wrote {a.out_dir}/recipe{tag}.json, .csv and _summary.csv")
    return 0


def _merge(a, argv) -> int:
    import json

    rows, recipes, sources = [], {}, []
    for f in a.merge.split(","):
        d = json.loads(Path(f).read_text())
        for name, rec in d["recipes"].items():
            # files from before the rule or the budget floor were recorded
            rec = {"threshold_rule": LEGACY_THRESHOLD_RULE, "min_steps": 0, **rec}
            if recipes.setdefault(name, rec) != rec:
                raise SystemExit(f"{f}: recipe {name!r} differs from another file's ({rec} vs {recipes[name]})")
        cats = {c.strip() for c in a.categories.split(",")}
        rows += [r for r in d["rows"] if r["category"] in cats]  # --categories: e.g. leave out an unfinished one
        sources.append({"file": Path(f).name, "command": d["command"], "date": d["date"],
                        "complete": d["complete"]})
    summary = _save(rows, {**header(argv), "merged_from": sources}, a, recipes, final=True)
    print_table([s for s in summary if s["half"] == "report"],
                ["category", "recipe", "seeds", "image_auroc_mean", "pixel_auroc_mean", "train_s_mean"])
    return 0


def _save(rows, meta, a, recipes, *, final: bool) -> list[dict]:
    tag = f"_{a.tag}" if a.tag else ""
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    choice = choose(summary, a.max_time)
    checks = expectations(choice) if final else []
    write_json(out / f"recipe{tag}.json", {**meta, "args": {k: v for k, v in vars(a).items() if k != "recipe"},
                                           "recipes": recipes, "complete": final, "rows": rows,
                                           "summary": summary, "choice": choice, "checks": checks})
    write_csv(out / f"recipe{tag}.csv", rows)
    write_csv(out / f"recipe{tag}_summary.csv", summary)
    return summary


if __name__ == "__main__":
    run_as_script(main)
