"""Deployment threshold rules on the real categories: chosen on a DEV half of each test set, reported on the other.

    python benchmarks/bench_threshold.py --data /tmp/real --seeds 0,1 --tag real6
    python benchmarks/bench_threshold.py --from benchmarks/results/threshold_real6.json --rules quantile:0.9,sigma:2
    python benchmarks/bench_threshold.py --quick        # tiny synthetic data at 64 px (< 60 s)

Each (category, seed) trains PaSTe-MCUNet once with today's defaults (bench_recipe's `before`), then scores the
category's held-out normals (10 % of train/good, what `edgead train` calibrates on), pseudo-defects pasted into
them (edgead.engine.selection) and the two halves of the test set (edgead.data.dev_split, the same halves as
bench_recipe). The scores are saved, so other rules can be evaluated later without training (--from).
For every rule (edgead.engine.thresholds) the threshold comes from the held-out normals (and pseudo-defects)
only; the deployed F1 (images above the threshold called anomalous), the false-alarm rate, the defect catch
rate and the balanced accuracy (their mean) are measured on each half. The rule is CHOSEN by its mean DEV
balanced accuracy over the categories (--objective f1: by F1) and REPORTED on the report half; `best` is the
F1 of the best threshold on each report half itself, an upper bound no rule can reach.
Why balanced accuracy and not F1: the test sets are about half defective, and there F1 rewards calling almost
everything anomalous (the F1-best rule on them is the median of the normals: half of the good parts
rejected); balanced accuracy weighs a missed defect and a rejected good part alike, whatever the mix.
Writes benchmarks/results/threshold[_TAG].json and .csv.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from bench_decisions import split_rules
from bench_recipe import BEFORE, QUICK_RECIPES, RecipeData, dataset, resolve, train_one
from benchkit import RESULTS, check, header, print_table, run_as_script, write_csv, write_json
from edgead.engine.selection import make_pseudo_defects
from edgead.engine.tensors import predict_images
from edgead.engine.thresholds import (
    DEFAULT_THRESHOLD_RULE,
    LEGACY_THRESHOLD_RULE,
    ThresholdRule,
    best_f1_threshold,
    deployed_balanced_accuracy,
    deployed_f1,
)
from edgead.engine.views import predict_split
from firmware_sim.decisions import ceiling

CATEGORIES = "magnetic_tile,battery_weld,bsdata,mpdd_metal_plate,elpv_mono,elpv_poly"
RULES = ("quantile:0.5,quantile:0.75,quantile:0.9,quantile:0.95,quantile:0.99,quantile:1,sigma:0,sigma:0.5,sigma:1,"
         "sigma:1.5,sigma:2,sigma:3,pseudo-f1,far:0.05,far:0.1,pseudo-band:0.7,0.1")
HALVES = ("dev", "report")
# ceiling: the best balanced accuracy over all thresholds on the half itself (evaluation only: uses its labels)
METRICS = ("f1", "fpr", "tpr", "bacc", "ceiling")
OBJECTIVES = {"bacc": "balanced accuracy (mean of defect catch rate and good-part pass rate)",
              "f1": "deployed F1"}


def score_one(data: RecipeData, category: str, recipe: dict, seed: int, weights: str | None) -> dict:
    """Train once; the scores every rule needs, as lists (saved, so rules can be re-evaluated)."""
    model, pre, halves, _, train_s = train_one(data, category, recipe, seed, weights)
    _, d, _ = data.get(category, recipe["image_size"], recipe["resize"], seed)
    _, normal = predict_split(model, d.val, pre)
    _, pseudo = predict_images(model, make_pseudo_defects(d.val.images, seed)[0], pre)
    out = {"category": category, "seed": seed, "train_s": train_s,
           "normal": normal.tolist(), "pseudo": pseudo.tolist()}
    for half, split in halves.items():
        _, s = predict_split(model, split, pre)
        out[half] = {"labels": split.labels.astype(int).tolist(), "scores": s.tolist()}
    return out


def evaluate_rules(runs: list[dict], rules: list[ThresholdRule]) -> list[dict]:
    """One row per (category, seed, rule): threshold and, per half, deployed F1, false-alarm rate (fpr),
    defect catch rate (tpr) and balanced accuracy (bacc)."""
    rows = []
    for r in runs:
        normal, pseudo = np.asarray(r["normal"]), np.asarray(r["pseudo"])
        for rule in rules:
            thr = rule.threshold(normal, pseudo)
            row = {"category": r["category"], "seed": r["seed"], "rule": str(rule), "threshold": thr,
                   "n_normal": len(normal)}
            for h in HALVES:
                y, s = np.asarray(r[h]["labels"]), np.asarray(r[h]["scores"])
                row[f"f1_{h}"] = deployed_f1(y, s, thr)
                row[f"fpr_{h}"] = float((s[y == 0] > thr).mean())
                row[f"tpr_{h}"] = float((s[y == 1] > thr).mean())
                row[f"bacc_{h}"] = deployed_balanced_accuracy(y, s, thr)
                row[f"ceiling_{h}"] = ceiling(y, s)["ceiling"]
            rows.append(row)
        rep = r["report"]
        y, s = np.asarray(rep["labels"]), np.asarray(rep["scores"])
        best = best_f1_threshold(s[y == 0], s[y == 1])
        rows.append({"category": r["category"], "seed": r["seed"], "rule": "best", "threshold": best,
                     "n_normal": len(normal), "f1_report": deployed_f1(y, s, best),
                     "ceiling_report": ceiling(y, s)["ceiling"]})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per rule: the mean over categories of each category's mean over seeds (a None F1 counts as 0: a rule
    that calls nothing anomalous has found no defect), and the per-category report F1."""
    cats = sorted({r["category"] for r in rows})
    out = []
    for rule in dict.fromkeys(r["rule"] for r in rows):
        s = {"rule": rule}
        for h in HALVES:
            for m in METRICS:
                per = []
                for c in cats:
                    v = [r[f"{m}_{h}"] for r in rows if r["rule"] == rule and r["category"] == c and f"{m}_{h}" in r]
                    if v:
                        per.append(float(np.mean([0.0 if x is None else x for x in v])))
                s[f"{m}_{h}"] = float(np.mean(per)) if len(per) == len(cats) else None
                if h == "report" and m == "f1" and len(per) == len(cats):
                    s.update({f"f1_report_{c}": p for c, p in zip(cats, per, strict=True)})
        out.append(s)
    return out


def choose(summary: list[dict], objective: str = "bacc") -> dict:
    """The rule with the best mean DEV ``objective`` (bacc or f1); its REPORT numbers beside those of the rule
    used before this benchmark existed (LEGACY_THRESHOLD_RULE)."""
    ranked = [s for s in summary if s["rule"] != "best" and s[f"{objective}_dev"] is not None]
    chosen = max(ranked, key=lambda s: s[f"{objective}_dev"])
    before = next((s for s in summary if s["rule"] == LEGACY_THRESHOLD_RULE), None)
    out = {"chosen": chosen["rule"], "objective": objective, "by": f"mean DEV {OBJECTIVES[objective]} over the "
           "categories", "before": LEGACY_THRESHOLD_RULE, "default_now": DEFAULT_THRESHOLD_RULE}
    for m in METRICS:
        out[f"chosen_report_{m}"] = chosen[f"{m}_report"]
        out[f"before_report_{m}"] = before[f"{m}_report"] if before else None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="dataset root holding the converted categories (MVTec layout)")
    p.add_argument("--categories", default=CATEGORIES)
    p.add_argument("--seeds", default="0", help="comma list of training seeds")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the dev / report split")
    p.add_argument("--rules", default=RULES, help="comma list of threshold rules (edgead.engine.thresholds)")
    p.add_argument("--objective", choices=list(OBJECTIVES), default="bacc",
                   help="what the rule is chosen by on DEV: bacc (default; independent of the test sets' defect "
                        "share) or f1")
    p.add_argument("--from", dest="from_json", default=None,
                   help="a saved threshold results file: evaluate --rules on its scores, train nothing")
    p.add_argument("--weights", default=os.environ.get("EDGEAD_WEIGHTS_DIR"),
                   help="MCUNet-in3 weights file or folder (default $EDGEAD_WEIGHTS_DIR)")
    p.add_argument("--tag", default="", help="suffix of the results file names")
    p.add_argument("--out-dir", default=str(RESULTS), help="folder for the results files")
    p.add_argument("--quick", action="store_true", help="tiny synthetic data at 64 px, one epoch")
    a = p.parse_args(argv)
    rules = [ThresholdRule.parse(t) for t in split_rules(a.rules)]
    meta = header(argv)
    if a.from_json:
        try:
            src = json.loads(Path(a.from_json).read_text())
            src["runs"], src["command"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"--from {a.from_json}: not a saved threshold results file with scores "
                             f"({type(e).__name__}: {e})") from None
        runs, meta["scores_from"] = src["runs"], {"file": Path(a.from_json).name, "command": src["command"]}
        return _save(runs, rules, meta, a, final=True)
    recipe = resolve("quick" if a.quick else "before", QUICK_RECIPES["before"] if a.quick else {})
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_threshold_") as td:
        root, cats = dataset(a, Path(td), n_train=20, n_test=8)
        data = RecipeData(root, a.split_seed)
        for cat in cats:
            for seed in seeds:
                runs.append(score_one(data, cat, recipe, seed, a.weights))
                print(f"{cat} seed={seed}: {len(runs[-1]['normal'])} held-out normals "
                      f"({runs[-1]['train_s']:.0f} s train)", flush=True)
                _save(runs, rules, meta, a, final=False)
    return _save(runs, rules, meta, a, final=True)


def _save(runs, rules, meta, a, *, final: bool) -> int:
    tag = f"_{a.tag}" if a.tag else ""
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = evaluate_rules(runs, rules)
    summary = summarize(rows)
    choice = choose(summary, a.objective)
    checks = []
    if final and choice["before_report_f1"] is not None:
        checks.append(check(f"chosen rule {choice['chosen']} vs the earlier {choice['before']}: REPORT deployed F1, "
                            "false alarms and balanced accuracy (reported)", True,
                            ", ".join(f"{m} {choice[f'chosen_report_{m}']:.3f} vs {choice[f'before_report_{m}']:.3f}"
                                      for m in METRICS)))
    write_json(out / f"threshold{tag}.json", {**meta, "args": vars(a), "recipe": {**BEFORE},
                                              "complete": final, "rules": [str(r) for r in rules],
                                              "summary": summary, "choice": choice, "checks": checks,
                                              "rows": rows, "runs": runs})
    write_csv(out / f"threshold{tag}.csv", summary)
    if final:
        print_table(summary, ["rule", "bacc_dev", "f1_dev", "fpr_dev", "bacc_report", "ceiling_report", "f1_report",
                              "fpr_report", "tpr_report"])
        print(f"chosen on DEV by {choice['objective']}: {choice['chosen']}; report F1 "
              f"{choice['chosen_report_f1']:.3f}, false alarms {choice['chosen_report_fpr']:.3f} (before, "
              f"{choice['before']}: {choice['before_report_f1']}, {choice['before_report_fpr']})")
        print(f"wrote {out}/threshold{tag}.json and .csv")
    return 0


if __name__ == "__main__":
    run_as_script(main)
