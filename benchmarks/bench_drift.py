"""How an earlier product's threshold should follow the student's drift: recalibration rules replayed on a stream.

Input: the drift probe of a stream (benchmarks/drift_probe.py; `bench_real_stream.py --lifecycle` writes
drift_probe_real_lifecycle_TAG.json): for every evaluation of task j after task i, the test scores, task j's
threshold as fitted, and statistics of up to 8 of j's held-out normals (full trunk latents and one anchor-sized
crop of each) under the model of that moment.

A rule turns those into a threshold for task j after task i > j: ``fit x ratio^damping``, the ratio being a
statistic of k probes now over the same statistic when j was calibrated, optionally bounded to [1/b, b].
The statistic is the crops' image score (what the run deploys with k = 1: edgead.cl.calibration), the crops' map
mean, or the same of the full latents (not deployable at small budgets: 24 kB each at 256 px; listed to see what
a bigger memory would buy). Every test set is split once into DEV and REPORT halves (edgead.data.dev_split);
the rule is CHOSEN by its mean DEV balanced accuracy over every (i, j > ... ) evaluation of an earlier task,
with its worst task as the tie-break, and REPORTED on REPORT, next to keeping the fitted threshold, the rule
the run deployed, and the oracle (the threshold rule on all of j's held-out normals under the current model:
evaluation only). The numbers are the final row's (after the last task), per task and averaged over all tasks.

    python benchmarks/bench_drift.py benchmarks/results/drift_probe_real_lifecycle_real5.json \
        [--out benchmarks/results/decisions_drift.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np

from benchkit import check, header, write_json

STATS = ("crop_image", "crop_mean", "probe_image", "probe_mean")
DEPLOYABLE = ("crop_image", "crop_mean")  # the full-latent probes cost a replay sample each
KS = (1, 2, 4, 8)
DAMPING = (0.5, 1.0)
BOUNDS = (None, 1.5, 2.0)


def _bacc(y: np.ndarray, s: np.ndarray, t: float | None) -> float | None:
    from edgead.engine.thresholds import deployed_balanced_accuracy

    return None if t is None or not math.isfinite(t) else deployed_balanced_accuracy(y, s, t)


def rule_name(stat: str, k: int, damping: float, bound: float | None) -> str:
    return f"{stat}:k{k}:d{damping:g}" + (f":b{bound:g}" if bound else "")


def rules() -> list[tuple[str, str, int, float, float | None]]:
    return [(rule_name(*r), *r) for r in itertools.product(STATS, KS, DAMPING, BOUNDS)]


def threshold(rec: dict, base: dict, stat: str, k: int, damping: float, bound: float | None) -> float:
    """Task j's threshold after task i under a rule (``base``: j's record when it was calibrated)."""
    now, then = np.mean(rec[stat][:k]), np.mean(base[stat][:k])
    ratio = now / then if then > 0 and math.isfinite(now) else 1.0
    if bound:
        ratio = min(max(ratio, 1.0 / bound), bound)
    return rec["fit_threshold"] * ratio ** damping


def evaluate(records: list[dict], split_seed: int = 0) -> dict:
    """Per rule (and fit / deployed / oracle): DEV and REPORT balanced accuracy of every evaluation."""
    from edgead.data.dev_split import dev_report_split

    base = {r["task"]: r for r in records if r["after"] == r["task"]}
    halves = {}
    for j, r in base.items():
        halves[j] = dev_report_split(r["labels"], [t or "good" for t in r["defect_types"]], seed=split_seed,
                                     key=r["name"])
    out: dict[str, list[dict]] = {}
    # deployed:d0.5 is what DriftRule(damping=0.5) would have given this very run (the same anchor, whose ratio
    # is deployed / fit): the geometric mean of the two thresholds
    fixed = {"fit": lambda r: r["fit_threshold"], "deployed": lambda r: r["task_threshold"],
             "deployed:d0.5": lambda r: math.sqrt(r["fit_threshold"] * r["task_threshold"]),
             "oracle": lambda r: r["oracle_threshold"]}
    named = {**fixed, **{name: (lambda r, a=args: threshold(r, base[r["task"]], *a)) for name, *args in rules()}}
    for name, thr in named.items():
        rows = []
        for r in records:
            y, s = np.asarray(r["labels"]), np.asarray(r["scores"])
            dev, rep = halves[r["task"]]
            t = thr(r) if r["after"] > r["task"] else r["fit_threshold"]  # freshly fitted: no drift yet
            rows.append({"after": r["after"], "task": r["task"], "name": r["name"], "threshold": t,
                         "dev": _bacc(y[dev], s[dev], t), "report": _bacc(y[rep], s[rep], t)})
        out[name] = rows
    return out


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else float("nan")


def summarise(table: dict[str, list[dict]], last: int) -> list[dict]:
    lines = []
    for name, rows in table.items():
        earlier = [r for r in rows if r["after"] > r["task"]]
        final = [r for r in rows if r["after"] == last]
        lines.append({"rule": name, "dev_earlier_mean": _mean(r["dev"] for r in earlier),
                      "dev_earlier_worst": min((r["dev"] for r in earlier if r["dev"] is not None), default=None),
                      "report_final_mean": _mean(r["report"] for r in final),
                      "report_final_per_task": {r["name"]: r["report"] for r in final},
                      "deployable": name in ("fit", "deployed", "deployed:d0.5") or name.split(":")[0] in DEPLOYABLE})
    return lines


def choose(lines: list[dict]) -> dict:
    """The deployable rule with the best mean DEV balanced accuracy over the earlier tasks' evaluations; ties
    (within 0.002) go to the better worst case, then to fewer crops (less memory)."""
    cands = [x for x in lines if x["deployable"] and x["rule"] not in ("oracle",)]
    best = max(x["dev_earlier_mean"] for x in cands)
    near = [x for x in cands if x["dev_earlier_mean"] >= best - 0.002]
    return max(near, key=lambda x: (x["dev_earlier_worst"] or 0.0, -_crops(x["rule"])))


def _crops(rule: str) -> int:
    parts = rule.split(":")  # STAT:kK:... (fit / deployed / deployed:d0.5 use the run's one anchor)
    return int(parts[1][1:]) if len(parts) > 1 and parts[1].startswith("k") else 1


def ceilings(records: list[dict], last: int, split_seed: int = 0) -> dict:
    from edgead.data.dev_split import dev_report_split
    from firmware_sim.decisions import ceiling

    out = {}
    for r in records:
        if r["after"] != last:
            continue
        y, s = np.asarray(r["labels"]), np.asarray(r["scores"])
        _, rep = dev_report_split(r["labels"], [t or "good" for t in r["defect_types"]], seed=split_seed,
                                  key=r["name"])
        out[r["name"]] = ceiling(y[rep], s[rep])["ceiling"]
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("probe", help="a drift probe file (drift_probe_*.json)")
    p.add_argument("--out", default=None, help="result JSON (default: print only)")
    p.add_argument("--split-seed", type=int, default=0)
    a = p.parse_args(argv)
    src = json.loads(Path(a.probe).read_text())
    records = src["records"]
    last = max(r["after"] for r in records)
    table = evaluate(records, a.split_seed)
    lines = summarise(table, last)
    chosen = choose(lines)
    by = {x["rule"]: x for x in lines}
    ceil = ceilings(records, last, a.split_seed)
    ceil_mean = _mean(ceil.values())
    print(f"{'rule':<26} {'DEV earlier mean':>16} {'worst':>6} {'REPORT final mean':>18}")
    for x in sorted(lines, key=lambda x: -x["dev_earlier_mean"])[:15] + [by["fit"], by["deployed"], by["deployed:d0.5"],
                                                                          by["oracle"]]:
        print(f"{x['rule']:<26} {x['dev_earlier_mean']:>16.3f} {x['dev_earlier_worst'] or 0:>6.3f} "
              f"{x['report_final_mean']:>18.3f}")
    print(f"chosen on DEV: {chosen['rule']}  REPORT final mean {chosen['report_final_mean']:.3f} "
          f"(deployed today {by['deployed']['report_final_mean']:.3f}, fit {by['fit']['report_final_mean']:.3f}, "
          f"oracle {by['oracle']['report_final_mean']:.3f}, ceiling {ceil_mean:.3f})")
    checks = [check("the rule chosen on DEV is at least as good on REPORT as the deployed one",
                    chosen["report_final_mean"] >= by["deployed"]["report_final_mean"] - 1e-9,
                    f"{chosen['report_final_mean']:.3f} vs {by['deployed']['report_final_mean']:.3f}")]
    if a.out:
        write_json(Path(a.out), {**header(argv), "probe": a.probe, "source_command": src.get("command"),
                                 "split_seed": a.split_seed, "chosen": chosen, "ceiling_report_final": ceil,
                                 "ceiling_report_final_mean": ceil_mean, "rules": lines, "checks": checks})
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
