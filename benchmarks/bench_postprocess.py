"""Score post-processing (map blur, max or top-k mean) on the real categories: chosen on DEV halves, reported on REPORT.

    nice -n 10 python benchmarks/bench_postprocess.py --data /tmp/real --seeds 0 --tag real6_s0
    python benchmarks/bench_postprocess.py --from A.json,B.json --tag real6     # re-evaluate saved scores
    python benchmarks/bench_postprocess.py --quick        # tiny synthetic data at 64 px (< 60 s)

Each (category, seed) trains PaSTe-MCUNet ONCE with edgead's default recipe (bench_recipe's `floor`), then
computes the raw anomaly maps (no post-processing) of the held-out normals (10 % of train/good), of
pseudo-defects pasted into them (edgead.engine.selection) and of the two halves of the test set
(edgead.data.dev_split, the same halves as bench recipe / bench threshold), and scores them under every
candidate post-processing (firmware_sim.anomaly_map.ScorePost, the code the host, the export fidelity check and
the device run): one training, many scorings. Model selection during training used the plain maximum.
Per candidate and threshold rule (the threshold from the held-out normals and pseudo-defects only, as
`edgead train` sets it): image AUROC, deployed balanced accuracy (mean of defect catch rate and good-part pass
rate at the threshold), false-alarm rate, and the ceiling (the best balanced accuracy over all thresholds on
that half; evaluation only). The candidate is CHOSEN on DEV, by mean image AUROC and by mean deployed balanced
accuracy (both rankings are written; the choice must not lose on either against `max`, nor more than 0.005
DEV image AUROC on any category), and REPORTED on REPORT.
Writes benchmarks/results/decisions_postprocess[_TAG].json (runs with every score, rows, summary, choice) and,
per candidate, a scores file in the format `bench_threshold.py --from` reads (--scores-dir).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench_recipe import QUICK_RECIPES, RECIPES, RecipeData, dataset, resolve, train_one
from benchkit import RESULTS, check, header, print_table, run_as_script, write_json
from edgead.engine.selection import make_pseudo_defects
from edgead.engine.tensors import predict_images
from edgead.engine.thresholds import DEFAULT_THRESHOLD_RULE, ThresholdRule, deployed_balanced_accuracy
from edgead.metrics import image_auroc
from firmware_sim.anomaly_map import LEGACY_SCORE, ScorePost

CATEGORIES = "magnetic_tile,battery_weld,bsdata,mpdd_metal_plate,elpv_mono,elpv_poly"
CANDIDATES = ("max;topk:0.001;topk:0.01;topk:0.05;blur:2,max;blur:4,max;blur:8,max;blur:4,topk:0.001;"
              "blur:4,topk:0.01")
RULES = f"{DEFAULT_THRESHOLD_RULE};quantile:0.99"
HALVES = ("dev", "report")


def raw_scores(maps: np.ndarray, candidates: list[ScorePost]) -> dict[str, list[float]]:
    """Raw maps (N, S, S) -> per candidate the image scores, in batches (blurred maps are not kept)."""
    out: dict[str, list[float]] = {str(c): [] for c in candidates}
    for start in range(0, len(maps), 64):
        part = maps[start:start + 64]
        for c in candidates:
            out[str(c)] += c(part)[1].tolist()
    return out


def score_one(data: RecipeData, category: str, recipe: dict, seed: int, weights: str | None,
              candidates: list[ScorePost]) -> dict:
    """Train once; every candidate's scores of the held-out normals, pseudo-defects and both test halves."""
    model, pre, halves, report, train_s = train_one(data, category, recipe, seed, weights)
    if pre.resize_mode != "squash":
        raise SystemExit(f"recipe resize {pre.resize_mode!r}: this benchmark scores squashed single-view maps only")
    model.config = replace(model.config, score=LEGACY_SCORE)  # raw maps: the candidates post-process them
    _, d, _ = data.get(category, recipe["image_size"], recipe["resize"], seed)
    parts = {"normal": d.val.images, "pseudo": make_pseudo_defects(d.val.images, seed)[0]}
    parts.update({h: split.images for h, split in halves.items()})
    scored = {k: raw_scores(predict_images(model, imgs, pre)[0], candidates) for k, imgs in parts.items()}
    out = {"category": category, "seed": seed, "train_s": train_s, "steps": report["steps"],
           "batch_size": report.get("batch_size"), "candidates": {}}
    for c in map(str, candidates):
        run = {"normal": scored["normal"][c], "pseudo": scored["pseudo"][c]}
        for h, split in halves.items():
            run[h] = {"labels": split.labels.astype(int).tolist(), "scores": scored[h][c]}
        out["candidates"][c] = run
    return out


def ceiling(y: np.ndarray, s: np.ndarray) -> float:
    """The best balanced accuracy over all thresholds on this set (evaluation only: it looks at the labels)."""
    thr = np.unique(s)
    tpr = (s[y == 1][None, :] > thr[:, None]).mean(axis=1)
    tnr = (s[y == 0][None, :] <= thr[:, None]).mean(axis=1)
    return float(max(0.5, ((tpr + tnr) / 2).max()))


def evaluate(runs: list[dict], rules: list[ThresholdRule]) -> list[dict]:
    """One row per (category, seed, candidate, rule) with image AUROC, deployed balanced accuracy, false-alarm
    rate and ceiling per half."""
    rows = []
    for r in runs:
        for cand, run in r["candidates"].items():
            normal, pseudo = np.asarray(run["normal"]), np.asarray(run["pseudo"])
            for rule in rules:
                thr = rule.threshold(normal, pseudo)
                row = {"category": r["category"], "seed": r["seed"], "candidate": cand, "rule": str(rule),
                       "threshold": thr, "n_normal": len(normal)}
                for h in HALVES:
                    y, s = np.asarray(run[h]["labels"]), np.asarray(run[h]["scores"])
                    row[f"auroc_{h}"] = float(image_auroc(y, s))
                    row[f"bacc_{h}"] = deployed_balanced_accuracy(y, s, thr)
                    row[f"fpr_{h}"] = float((s[y == 0] > thr).mean())
                    row[f"ceiling_{h}"] = ceiling(y, s)
                rows.append(row)
    return rows


METRICS = ("auroc", "bacc", "fpr", "ceiling")


def summarize(rows: list[dict]) -> list[dict]:
    """Per (candidate, rule): per category the mean over seeds, and the mean over categories."""
    cats = sorted({r["category"] for r in rows})
    out = []
    for key in dict.fromkeys((r["candidate"], r["rule"]) for r in rows):
        s = {"candidate": key[0], "rule": key[1]}
        for h in HALVES:
            for m in METRICS:
                per = {c: float(np.mean([r[f"{m}_{h}"] for r in rows if (r["candidate"], r["rule"]) == key
                                         and r["category"] == c])) for c in cats}
                s[f"{m}_{h}"] = float(np.mean(list(per.values())))
                s.update({f"{m}_{h}_{c}": v for c, v in per.items()})
        out.append(s)
    return out


def choose(summary: list[dict], rule: str) -> dict:
    """On DEV, with the deployment rule: the ranking by mean image AUROC, the ranking by mean deployed balanced
    accuracy, and the choice: the best by balanced accuracy among candidates that lose neither mean DEV image
    AUROC against `max` nor more than 0.005 DEV image AUROC on any category ("max" when none qualifies)."""
    rows = [s for s in summary if s["rule"] == rule]
    cats = sorted(k[len("auroc_dev_"):] for k in rows[0] if k.startswith("auroc_dev_"))
    base = next(s for s in rows if s["candidate"] == LEGACY_SCORE)
    ok = [s for s in rows if s["auroc_dev"] >= base["auroc_dev"]
          and all(s[f"auroc_dev_{c}"] >= base[f"auroc_dev_{c}"] - 0.005 for c in cats)]
    chosen = max(ok, key=lambda s: s["bacc_dev"]) if ok else base
    if chosen["bacc_dev"] <= base["bacc_dev"]:
        chosen = base
    out = {"rule": rule, "by_auroc_dev": [s["candidate"] for s in sorted(rows, key=lambda s: -s["auroc_dev"])],
           "by_bacc_dev": [s["candidate"] for s in sorted(rows, key=lambda s: -s["bacc_dev"])],
           "qualifying": [s["candidate"] for s in ok], "chosen": chosen["candidate"], "before": LEGACY_SCORE}
    for h in HALVES:
        for m in METRICS:
            out[f"chosen_{m}_{h}"], out[f"before_{m}_{h}"] = chosen[f"{m}_{h}"], base[f"{m}_{h}"]
    out["report_per_category"] = {c: {m: {"chosen": chosen[f"{m}_report_{c}"], "before": base[f"{m}_report_{c}"]}
                                      for m in METRICS} for c in cats}
    return out


def write_scores(runs: list[dict], meta: dict, folder: Path, tag: str) -> None:
    """Per candidate, a file `bench_threshold.py --from` reads: its runs, in that benchmark's format."""
    folder.mkdir(parents=True, exist_ok=True)
    for cand in runs[0]["candidates"] if runs else []:
        slim = [{"category": r["category"], "seed": r["seed"], "train_s": r["train_s"], **r["candidates"][cand]}
                for r in runs]
        name = cand.replace(":", "").replace(",", "_")
        write_json(folder / f"postprocess{tag}_{name}.json", {**meta, "score": cand, "runs": slim})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="dataset root holding the converted categories (MVTec layout)")
    p.add_argument("--categories", default=CATEGORIES)
    p.add_argument("--seeds", default="0", help="comma list of training seeds")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the dev / report split")
    p.add_argument("--recipe", default="floor", help=f"the training recipe (bench_recipe): {', '.join(RECIPES)}")
    p.add_argument("--candidates", default=CANDIDATES, help="semicolon list of score post-processings")
    p.add_argument("--rules", default=RULES, help="semicolon list of threshold rules; the first is the deployed one")
    p.add_argument("--from", dest="from_json", default=None,
                   help="comma list of saved decisions_postprocess files: evaluate their scores, train nothing")
    p.add_argument("--weights", default=os.environ.get("EDGEAD_WEIGHTS_DIR"),
                   help="MCUNet-in3 weights file or folder (default $EDGEAD_WEIGHTS_DIR)")
    p.add_argument("--tag", default="", help="suffix of the results file names")
    p.add_argument("--out-dir", default=str(RESULTS), help="folder for the results file")
    p.add_argument("--scores-dir", default=None, help="also write per-candidate scores files for bench_threshold")
    p.add_argument("--quick", action="store_true", help="tiny synthetic data at 64 px, one epoch")
    a = p.parse_args(argv)
    candidates = [ScorePost.parse(t) for t in a.candidates.split(";") if t.strip()]
    if ScorePost() not in candidates:
        candidates.insert(0, ScorePost())  # the baseline every choice is measured against
    rules = [ThresholdRule.parse(t) for t in a.rules.split(";") if t.strip()]
    meta = header(argv)
    if a.from_json:
        runs, sources = [], []
        for f in a.from_json.split(","):
            try:
                src = json.loads(Path(f).read_text())
                runs += src["runs"]
                sources.append({"file": Path(f).name, "command": src["command"]})
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise SystemExit(f"--from {f}: not a saved decisions_postprocess file ({type(e).__name__}: {e})") \
                    from None
        meta["scores_from"] = sources
        return _save(runs, rules, meta, a, final=True)
    recipe = resolve("quick" if a.quick else a.recipe, QUICK_RECIPES["before"] if a.quick else RECIPES[a.recipe])
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_postprocess_") as td:
        root, cats = dataset(a, Path(td), n_train=20, n_test=8)
        data = RecipeData(root, a.split_seed)
        for cat in cats:
            for seed in seeds:
                runs.append(score_one(data, cat, recipe, seed, a.weights, candidates))
                print(f"{cat} seed={seed}: {runs[-1]['steps']} steps ({runs[-1]['train_s']:.0f} s train)", flush=True)
                _save(runs, rules, meta, a, final=False)
    return _save(runs, rules, meta, a, final=True)


def _save(runs, rules, meta, a, *, final: bool) -> int:
    tag = f"_{a.tag}" if a.tag else ""
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = evaluate(runs, rules)
    summary = summarize(rows)
    choice = choose(summary, str(rules[0]))
    checks = []
    if final:
        gain = choice["chosen_bacc_report"] - choice["before_bacc_report"]
        checks.append(check(f"chosen post-processing {choice['chosen']!r} vs max: REPORT mean image AUROC and "
                            f"deployed balanced accuracy ({choice['rule']}) not lower", gain >= 0 and
                            choice["chosen_auroc_report"] >= choice["before_auroc_report"],
                            f"auroc {choice['chosen_auroc_report']:.4f} vs {choice['before_auroc_report']:.4f}, "
                            f"bacc {choice['chosen_bacc_report']:.4f} vs {choice['before_bacc_report']:.4f}"))
    write_json(out / f"decisions_postprocess{tag}.json",
               {**meta, "args": vars(a), "complete": final, "candidates": sorted({c for r in runs
                                                                                   for c in r["candidates"]}),
                "rules": [str(r) for r in rules], "choice": choice, "checks": checks, "summary": summary,
                "rows": rows, "runs": runs})
    if a.scores_dir and final:
        write_scores(runs, meta, Path(a.scores_dir), tag)
    if final:
        print_table([s for s in summary if s["rule"] == str(rules[0])],
                    ["candidate", "auroc_dev", "bacc_dev", "auroc_report", "bacc_report", "fpr_report",
                     "ceiling_report"])
        print(f"chosen on DEV: {choice['chosen']} (by AUROC: {choice['by_auroc_dev'][0]}, by balanced accuracy: "
              f"{choice['by_bacc_dev'][0]})")
        print(f"wrote {out}/decisions_postprocess{tag}.json")
    return 0


if __name__ == "__main__":
    run_as_script(main)
