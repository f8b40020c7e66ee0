"""The training budget floor, chosen on DEV halves from saved recipe results (no training).

    python benchmarks/bench_budget.py                      # from benchmarks/results/recipe_six_3seeds.json
    python benchmarks/bench_budget.py --from FILE --floor s1000-b8 --grid 0,50,100,200,300,500,1000

A floor rule (TrainConfig.min_steps / floor_steps / floor_batch): when the default epochs (`before`: 20 epochs
at batch 32) would give a category fewer than T optimiser steps, that category trains with the floor recipe
(`s1000-b8`: 1000 steps at batch 8) instead. Per category the rule therefore reduces to one of two recipes the
saved file already measured on every seed, so each T is evaluated from the file's rows: image AUROC on the DEV
and REPORT halves (mean over seeds) and training seconds. T is CHOSEN on DEV: the best mean DEV image AUROC
among the T that cost no category more than --max-loss DEV image AUROC and train at most --max-time x as long
as `before` (ties: the smaller T). The issue's bars are then checked on REPORT: no category loses more than
--max-loss, categories below 100 training images gain, mean training time at most --max-time x `before`.
Training seconds were measured on a shared 2-core machine and vary with its load.
Writes benchmarks/results/decisions_budget.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchkit import RESULTS, check, header, print_table, run_as_script, write_json

HALVES = ("dev", "report")
SMALL = 100  # training images below which a category must gain (the bar)


def per_category(rows: list[dict], recipe: str) -> dict[str, dict]:
    """Category -> mean over seeds of DEV / REPORT image AUROC, training seconds and optimiser steps."""
    out = {}
    for c in sorted({r["category"] for r in rows if r["recipe"] == recipe}):
        g = {h: [r for r in rows if r["recipe"] == recipe and r["category"] == c and r["half"] == h] for h in HALVES}
        out[c] = {**{f"auroc_{h}": float(np.mean([r["image_auroc"] for r in g[h]])) for h in HALVES},
                  "train_s": float(np.mean([r["train_s"] for r in g["dev"]])),
                  "steps": int(np.median([r["steps"] for r in g["dev"]])), "seeds": len(g["dev"])}
    return out


def evaluate(before: dict, floor: dict, t: int) -> dict:
    """The rule 'floor recipe when the default epochs give fewer than t steps', per category and overall."""
    cats = {c: ("floor" if before[c]["steps"] < t else "before") for c in before}
    pick = {c: (floor if cats[c] == "floor" else before)[c] for c in cats}
    out = {"min_steps": t, "floored": sorted(c for c, k in cats.items() if k == "floor"),
           "per_category": {c: {**{f"auroc_{h}": pick[c][f"auroc_{h}"] for h in HALVES},
                                **{f"gain_{h}": pick[c][f"auroc_{h}"] - before[c][f"auroc_{h}"] for h in HALVES},
                                "train_s": pick[c]["train_s"], "recipe": cats[c]} for c in cats}}
    for h in HALVES:
        out[f"auroc_{h}"] = float(np.mean([pick[c][f"auroc_{h}"] for c in cats]))
        out[f"worst_gain_{h}"] = float(min(v[f"gain_{h}"] for v in out["per_category"].values()))
    out["time_ratio"] = sum(p["train_s"] for p in pick.values()) / sum(before[c]["train_s"] for c in cats)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="from_json", default=str(RESULTS / "recipe_six_3seeds.json"),
                   help="a saved bench_recipe results file holding `before` and the floor recipe on every seed")
    p.add_argument("--floor", default="s1000-b8", help="the recipe a floored category trains with")
    p.add_argument("--grid", default="0,50,100,200,300,500,1000", help="comma list of min_steps values T")
    p.add_argument("--max-loss", type=float, default=0.005, help="largest image AUROC loss of any category")
    p.add_argument("--max-time", type=float, default=1.5, help="largest mean training time, x before")
    p.add_argument("--train-images", default=None,
                   help="comma list CATEGORY=N of training images per category (default: read from each "
                        "category's dataset.json under the recipe file's --data root, else /tmp/real)")
    p.add_argument("--out", default=str(RESULTS / "decisions_budget.json"))
    a = p.parse_args(argv)
    try:
        src = json.loads(Path(a.from_json).read_text())
        rows = src["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--from {a.from_json}: not a saved bench_recipe results file ({type(e).__name__}: {e})") \
            from None
    before, floor = per_category(rows, "before"), per_category(rows, a.floor)
    if not before or set(floor) != set(before):
        raise SystemExit(f"--from {a.from_json}: needs `before` and {a.floor!r} on the same categories "
                         f"(have {sorted(before)} and {sorted(floor)})")
    n_train = _train_images(a, src, sorted(before))
    grid = sorted({int(v) for v in a.grid.split(",") if v.strip()})
    table = [evaluate(before, floor, t) for t in grid]
    ok = [r for r in table if r["worst_gain_dev"] >= -a.max_loss and r["time_ratio"] <= a.max_time]
    chosen = max(ok, key=lambda r: (round(r["auroc_dev"], 6), -r["min_steps"]))
    small = [c for c, n in n_train.items() if n is not None and n < SMALL]
    pc = chosen["per_category"]
    checks = [
        check(f"min_steps {chosen['min_steps']}: no category loses more than {a.max_loss} REPORT image AUROC",
              chosen["worst_gain_report"] >= -a.max_loss,
              ", ".join(f"{c} {v['gain_report']:+.4f}" for c, v in pc.items())),
        check(f"min_steps {chosen['min_steps']}: the categories below {SMALL} training images gain on REPORT",
              bool(small) and all(pc[c]["gain_report"] > 0 for c in small),
              ", ".join(f"{c} ({n_train[c]} images) {pc[c]['gain_report']:+.4f}" for c in small) or "none"),
        check(f"min_steps {chosen['min_steps']}: mean training time at most {a.max_time}x before",
              chosen["time_ratio"] <= a.max_time, f"{chosen['time_ratio']:.2f}x"),
    ]
    print_table([{k: v for k, v in r.items() if k != "per_category"} | {"floored": ",".join(r["floored"])}
                 for r in table], ["min_steps", "floored", "auroc_dev", "worst_gain_dev", "auroc_report",
                                   "worst_gain_report", "time_ratio"])
    print(f"chosen on DEV: min_steps {chosen['min_steps']} (floor recipe {a.floor})")
    write_json(Path(a.out), {**header(argv), "args": vars(a), "source": {"file": Path(a.from_json).name,
                                                                        "command": src.get("command")},
                             "recipes": {"before": src["recipes"]["before"], "floor": src["recipes"][a.floor]},
                             "train_images": n_train, "before_steps": {c: v["steps"] for c, v in before.items()},
                             "chosen": chosen["min_steps"], "checks": checks, "table": table})
    print(f"wrote {a.out}")
    return 0


def _train_images(a, src: dict, cats: list[str]) -> dict[str, int | None]:
    """Training images per category (train/good, before the 10 % held out), from dataset.json or --train-images."""
    if a.train_images:
        given = dict(item.split("=") for item in a.train_images.split(","))
        return {c: int(given[c]) if c in given else None for c in cats}
    out = {}
    for c in cats:
        roots = [Path(d) for d in (src.get("args", {}).get("data"), "/tmp/real") if d]
        meta = next((r / c / "dataset.json" for r in roots if (r / c / "dataset.json").is_file()), None)
        out[c] = json.loads(meta.read_text())["counts"]["train"]["good"] if meta else None
    return out


if __name__ == "__main__":
    run_as_script(main)
