"""Decisions from saved scores: the default threshold rule, far:A's guarantee, and few-label calibration.

    python benchmarks/bench_decisions.py                    # from benchmarks/results/threshold_real6.json
    python benchmarks/bench_decisions.py --from FILE --tag X  # other saved scores (bench threshold's format)

No training: `bench threshold` saved, per real category and seed, the scores of the held-out normals, their
pseudo-defects and the DEV and REPORT halves of the test set. From them:

1. rules  every candidate rule (today's, far:A, quantiles, sigma, pseudo-band:Q,A) sets its threshold from the
          held-out normals (and pseudo-defects) only. The default is CHOSEN on DEV: among the rules whose mean
          DEV false-alarm rate is at most --far-cap, the smallest mean DEV gap to the ceiling plus the worst
          category's gap (the worst product counts as much as the average: a rule chosen by its mean alone
          failed an unseen product). REPORT numbers are reported for the chosen rule, today's default and the
          legacy rule. The ceiling is the best balanced accuracy over thresholds on that half (evaluation only).
2. far    far:A's realised false-alarm rate on every category's good test images (both halves) against A;
          where the held-out normals cannot certify A the row says so and gives the achievable A.
3. fewshot  k labelled defects (1, 3, 5, 10) and a handful of labelled good images drawn from DEV (--draws
          random draws) set the threshold by each calibration method of firmware_sim.decisions (what
          `edgead calibrate` and `python -m firmware_sim calibrate` run), with the stored calibration's
          mean/std of the held-out normals and its deployed threshold (the default rule's) as the device has
          them; ``anchored:Z,K0`` rows are ``anchored`` with other dead zones z and weights k0 than the code's
          (ANCHOR_DEAD_ZONE, ANCHOR_DEFECTS: plain ``anchored``). The method (z and k0 too) is CHOSEN on the rest
          of DEV (the images not drawn) and REPORTED on REPORT, against the REPORT ceiling.
Writes benchmarks/results/decisions_rules[_TAG].json, decisions_far[_TAG].json, decisions_fewshot[_TAG].json.

    python benchmarks/bench_decisions.py --stream benchmarks/results/real_stream_TAG.json --tag X

does part 3 only, on a continual stream (bench real-stream's files): every product's scores at its last
evaluation, after the last task, with the threshold and held-out statistics the run deployed it with, split
into the same DEV and REPORT halves (edgead.data.dev_split). It answers how many labelled parts per product
bring a stream to its ceiling, per (method, setting). With --from (single-task scores) as well, the drift
check's z (firmware_sim.decisions.DRIFT_Z) is chosen on the DEV objective of both. Writes
decisions_fewshot_stream[_X].json.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

import numpy as np

from benchkit import RESULTS, check, header, print_table, run_as_script, write_json
from edgead.engine.thresholds import (
    DEFAULT_THRESHOLD_RULE,
    LEGACY_THRESHOLD_RULE,
    ThresholdRule,
    ThresholdWarning,
    far_achievable,
    far_normals_needed,
)
from edgead.errors import EdgeadError
from firmware_sim.decisions import (
    ANCHOR_DEAD_ZONE,
    ANCHOR_DEFECTS,
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    DRIFT_Z,
    NormalPrior,
    best_cut,
    choose_threshold,
    good_log_ratio,
    rates,
)

SOURCE = RESULTS / "threshold_real6.json"
# The candidates: today's rules, far:A, and pseudo-f1 kept inside a band of the held-out normals.
RULES = ",".join(["quantile:0.8", "quantile:0.9", "quantile:0.95", "quantile:0.99", "sigma:1", "sigma:2", "sigma:3",
                  "pseudo-f1", "far:0.05", "far:0.1", "far:0.15", "far:0.2"]
                 + [f"pseudo-band:{q},{a}" for q in (0.8, 0.7, 0.6, 0.5) for a in (0.05, 0.1, 0.15, 0.2)])
# (the higher floors Q first: where several Q set the same thresholds on every run, the tie goes to the rule
# listed first, the one that bounds false alarms more tightly on a product where the pseudo cut falls low)
FAR_LEVELS = (0.01, 0.05, 0.1)
SHOTS = (1, 3, 5, 10)
HALVES = ("dev", "report")
# Bars of issue 20.
BAR_MEAN_GAP, BAR_WORST_GAP, BAR_FAR = 0.03, 0.06, 0.08
BAR_SHOTS = {5: 0.03, 10: 0.02}
BAR_STREAM = 0.80  # the five-product stream's mean per-task deployed balanced accuracy
STREAM_COLS = ["config", "k", "method", "gap_dev", "bacc_report", "ceiling_report", "gap_report", "worst_gap_report",
               "worst", "fpr_report"]
# anchored with other dead zones z (standard errors) and weights k0 (labelled defects) of the deployed threshold:
# z and k0 are chosen on DEV with them (z = 0: plain shrinkage toward the deployed threshold)
ANCHOR_SWEEP = tuple((z, k0) for z in (0.0, 0.5, 1.0, 1.5, 2.0) for k0 in (0.0, 0.5, 1.0, 2.0)
                     if (z, k0) not in ((ANCHOR_DEAD_ZONE, ANCHOR_DEFECTS), (0.0, 0.0)))  # (0, 0): lognormal

# the drift check of the labelled good images (firmware_sim.decisions.DRIFT_Z) at other z, inf: off
DRIFT_SWEEP = tuple(z for z in (1.0, 2.0, 3.0, 4.0, math.inf) if z != DRIFT_Z)


def load_runs(paths: str) -> tuple[list[dict], list[str]]:
    """The runs of one or more saved score files (comma-separated) and the commands that made them. A run of a
    later file replaces the run of the same category and seed of an earlier one (a re-trained category, e.g.
    with another held-out share, laid over the rest)."""
    runs: dict = {}
    commands = []
    for path in (p.strip() for p in str(paths).split(",") if p.strip()):
        try:
            src = json.loads(Path(path).read_text())
            got, command = src["runs"], src["command"]
            for r in got:
                r["category"], r["seed"], r["normal"], r["pseudo"]  # noqa: B018
                for h in HALVES:
                    if len(r[h]["labels"]) != len(r[h]["scores"]):
                        raise ValueError(f"{r['category']} seed {r['seed']}: {h} labels and scores differ in length")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"--from {path}: not a saved threshold results file with scores "
                             f"({type(e).__name__}: {e})") from None
        runs.update({(r["category"], r["seed"]): r for r in got})
        commands.append(command)
    if not runs:
        raise SystemExit(f"--from {paths!r}: no saved scores")
    return list(runs.values()), commands


def _half(r: dict, h: str) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(r[h]["labels"]), np.asarray(r[h]["scores"], np.float64)


def _ceiling(y: np.ndarray, s: np.ndarray) -> float:
    return best_cut(s[y == 0], s[y == 1])[1]


def _at(y: np.ndarray, s: np.ndarray, thr: float) -> dict:
    return rates(s[y == 0], s[y == 1], thr)


def _per_category(rows: list[dict], key: str) -> dict:
    """{category: mean over seeds (and draws) of row[key]}."""
    out: dict = {}
    for r in rows:
        out.setdefault(r["category"], []).append(r[key])
    return {c: float(np.mean(v)) for c, v in out.items()}


def _summary(rows: list[dict], halves=HALVES) -> dict:
    """Per half: mean over categories (of each category's mean over seeds) of bacc, ceiling, gap, false alarms
    and catch rate, the worst category's gap and its name, and the per-category gaps."""
    out = {}
    for h in halves:
        gaps = _per_category(rows, f"gap_{h}")
        worst = max(gaps, key=gaps.get)
        out[h] = {m: float(np.mean(list(_per_category(rows, f"{m}_{h}").values())))
                  for m in ("bacc", "ceiling", "gap", "fpr", "tpr")}
        out[h].update(worst_gap=gaps[worst], worst_category=worst, gap_per_category=gaps,
                      fpr_per_category=_per_category(rows, f"fpr_{h}"))
    return out


# -- 1. rules -----------------------------------------------------------------------------------------------
def evaluate_rules(runs: list[dict], rules: list[ThresholdRule]) -> list[dict]:
    rows = []
    for r in runs:
        normal, pseudo = np.asarray(r["normal"]), np.asarray(r["pseudo"])
        for rule in rules:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ThresholdWarning)  # far: reported in part 2
                thr = rule.threshold(normal, pseudo)
            row = {"category": r["category"], "seed": r["seed"], "rule": str(rule), "threshold": thr,
                   "n_normal": len(normal)}
            for h in HALVES:
                y, s = _half(r, h)
                a = _at(y, s, thr)
                row.update({f"bacc_{h}": a["balanced_accuracy"], f"fpr_{h}": a["false_alarm_rate"],
                            f"tpr_{h}": a["catch_rate"], f"ceiling_{h}": _ceiling(y, s)})
                row[f"gap_{h}"] = row[f"ceiling_{h}"] - row[f"bacc_{h}"]
            rows.append(row)
    return rows


def choose_rule(rows: list[dict], far_cap: float) -> tuple[list[dict], dict]:
    """Per rule its summary; the rule chosen on DEV (mean gap + worst gap, among rules within the cap)."""
    table = []
    for rule in dict.fromkeys(r["rule"] for r in rows):
        s = _summary([r for r in rows if r["rule"] == rule])
        table.append({"rule": rule, "objective_dev": s["dev"]["gap"] + s["dev"]["worst_gap"], **s})
    allowed = [t for t in table if t["dev"]["fpr"] <= far_cap]
    # an exact tie (rules that set the same thresholds on these runs) goes to the fewer DEV false alarms, then to
    # the rule listed first (min keeps the first of equals)
    chosen = min(allowed or table, key=lambda t: (round(t["objective_dev"], 9), t["dev"]["fpr"]))
    return table, {"chosen": chosen["rule"], "by": f"smallest mean DEV gap to the ceiling + worst DEV category gap, "
                   f"among rules with mean DEV false-alarm rate <= {far_cap} (a tie: fewer DEV false alarms)", "far_cap": far_cap,
                   "default_in_code": DEFAULT_THRESHOLD_RULE}


# -- 2. far:A -----------------------------------------------------------------------------------------------
def far_rows(runs: list[dict], levels=FAR_LEVELS) -> list[dict]:
    """Per (category, seed, A): held-out normals, whether they certify A (else the achievable A), and the
    realised false-alarm rate on all good test images of the category (both halves)."""
    out = []
    for r in runs:
        normal = np.asarray(r["normal"])
        good = np.r_[[s for y, s in zip(*(_half(r, "dev")), strict=True) if y == 0],
                     [s for y, s in zip(*(_half(r, "report")), strict=True) if y == 0]]
        for a in levels:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ThresholdWarning)
                thr = ThresholdRule("far", a).threshold(normal)
            ach = far_achievable(ThresholdRule("far", a), len(normal))
            out.append({"category": r["category"], "seed": r["seed"], "A": a, "n_normal": len(normal),
                        "certifiable": bool(ach <= a + 1e-12), "achievable_A": ach,
                        "normals_needed": far_normals_needed(a), "threshold": thr,
                        "good_test_images": int(good.size), "realised_far": float((good > thr).mean())})
    return out


# -- 3. few labelled parts -----------------------------------------------------------------------------------
def fewshot_rows(runs: list[dict], shots=SHOTS, n_good: int = 5, draws: int = 20, seed: int = 0) -> list[dict]:
    """Per (category, seed, k, draw, method): the threshold from k DEV defects + n_good DEV good images (and
    the held-out normals' stored mean/std), its balanced accuracy on the rest of DEV and on REPORT, and the
    gaps to those sets' ceilings. 'none' is the rule's threshold kept (no labels)."""
    out = []
    for ri, r in enumerate(runs):
        base, prior = _deployed(r)
        y, s = _half(r, "dev")
        yr, sr = _half(r, "report")
        ceil_r = _ceiling(yr, sr)
        good, bad = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
        # seeded by the run's position, not by how many rows came before: the draws stay the same when a
        # method is added, so methods compare on the same images across versions of this script
        rng = np.random.default_rng([seed, int(r["seed"]), ri])
        for k in shots:
            for d in range(draws):
                gi = rng.choice(good, min(n_good, len(good) - 1), replace=False)
                di = rng.choice(bad, min(k, len(bad) - 1), replace=False)
                rest = np.setdiff1d(np.arange(len(y)), np.r_[gi, di])
                ceil_rest = _ceiling(y[rest], s[rest])
                thresholds = {"none": (base, "none")}
                for m in CALIBRATION_METHODS:
                    c = choose_threshold(s[gi], s[di], prior, m)
                    thresholds[m] = (c["threshold"], c["method"])
                for dz in DRIFT_SWEEP:  # the code's anchored and lognormal with other drift checks
                    for m in ("anchored", "lognormal"):
                        c = choose_threshold(s[gi], s[di], prior, m, drift_z=dz)
                        thresholds[f"{m}+drift:{dz:g}"] = (c["threshold"], f"{c['method']}+drift:{dz:g}")
                for z, k0 in ANCHOR_SWEEP:
                    c = choose_threshold(s[gi], s[di], prior, "anchored", z=z, k0=k0)
                    name = f"anchored:{z:g},{k0:g}"
                    thresholds[name] = (c["threshold"], name if c["method"] == "anchored" else c["method"])
                if "normal" in r:  # the held-out normals' own scores (a stream keeps only their statistics)
                    c = choose_threshold(np.r_[s[gi], r["normal"]], s[di], None, "best-cut")
                    thresholds["best-cut+held-out"] = (c["threshold"], c["method"])
                for m, (thr, used) in thresholds.items():
                    b_rest = _at(y[rest], s[rest], thr)["balanced_accuracy"]
                    b_rep = _at(yr, sr, thr)
                    out.append({"category": r["category"], "seed": r["seed"], "k": k, "draw": d, "method": m,
                                "used": used, "threshold": thr, "bacc_dev": b_rest, "ceiling_dev": ceil_rest,
                                "gap_dev": ceil_rest - b_rest, "bacc_report": b_rep["balanced_accuracy"],
                                "fpr_report": b_rep["false_alarm_rate"], "tpr_report": b_rep["catch_rate"],
                                "ceiling_report": ceil_r, "gap_report": ceil_r - b_rep["balanced_accuracy"],
                                "fpr_dev": 0.0, "tpr_dev": 0.0})
    return out


def _deployed(r: dict) -> tuple[float, NormalPrior | None]:
    """The threshold a product was deployed with and what its calibration knows of the held-out normals: a
    stream's stored calibration, or the default rule on the saved held-out normal and pseudo-defect scores."""
    if "calibration" in r:
        return float(r["calibration"]["threshold"]), NormalPrior.from_calibration(r["calibration"])
    base = ThresholdRule.parse(DEFAULT_THRESHOLD_RULE).threshold(np.asarray(r["normal"]), np.asarray(r["pseudo"]))
    return base, NormalPrior(float(np.mean(r["normal"])), float(np.std(r["normal"])), len(r["normal"]), base)


def stream_runs(paths: str, split_seed: int = 0) -> tuple[dict[str, list[dict]], list[dict]]:
    """{'METHOD SETTING': runs in this script's format}: each product of one or more (comma-separated) bench
    real-stream files at its last evaluation (DEV / REPORT halves, its deployed calibration), and the files'
    commands and arguments."""
    from edgead.data.dev_split import dev_report_split

    runs, sources = [], []
    for path in (p.strip() for p in str(paths).split(",") if p.strip()):
        try:
            src = json.loads(Path(path).read_text())
            runs += [(path, r) for r in src["runs"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"--stream {path!r}: not a bench real-stream results file ({type(e).__name__}: {e})") from None
        sources.append({"file": Path(path).name, "command": src.get("command"), "args": src.get("args")})
    out: dict[str, list[dict]] = {}
    for path, r in runs:
        for name, f in (r.get("final_scores") or {}).items():
            try:
                y, s = np.asarray(f["labels"], np.int64), np.asarray(f["scores"], np.float64)
                dev, rep = dev_report_split(y, f["defect_types"], seed=split_seed, key=name)
                out.setdefault(f"{r['method']} {r['setting']}", []).append(
                    {"category": name, "seed": r["seed"], "calibration": dict(f["calibration"]),
                     **{h: {"labels": y[i].tolist(), "scores": s[i].tolist()} for h, i in (("dev", dev), ("report", rep))}})
            except (KeyError, TypeError, ValueError, EdgeadError) as e:
                raise SystemExit(f"--stream {path!r}: run {r.get('method')} {r.get('setting')} seed {r.get('seed')}, "
                                 f"task {name!r}: its final scores are not readable ({type(e).__name__}: {e}); expected "
                                 "labels, scores, defect_types and calibration as bench real-stream writes them") from None
    if not out:
        raise SystemExit(f"--stream {paths!r}: no run keeps its tasks' final scores (bench real-stream writes them "
                         "from this version on)")
    return out, sources


def stream_fewshot(path: str, n_good: int, draws: int) -> dict:
    """Per configuration: fewshot_summary's table (per k and method, DEV and REPORT: mean over products of
    their mean over seeds) on the stream's products after the last task."""
    configs, sources = stream_runs(path)
    return {"sources": sources, "method": DEFAULT_CALIBRATION_METHOD,
            "configs": {c: {"products": sorted({r["category"] for r in runs}), "seeds": sorted({r["seed"] for r in runs}),
                            "dev_good_ratio": {f"{r['category']} seed {r['seed']}": dev_good_ratio(r) for r in runs},
                            "table": fewshot_summary(per_run_means(fewshot_rows(runs, n_good=n_good, draws=draws)))[0]}
                        for c, runs in configs.items()}}


def dev_good_ratio(r: dict) -> float | None:
    """How far a product's scores drifted from its stored calibration: the geometric mean of its DEV good
    images' scores over that of the held-out normals behind the calibration (a log-normal fit of their stored
    mean and std, as the drift check compares them). None without the statistics."""
    _, prior = _deployed(r)
    y, s = _half(r, "dev")
    good = s[y == 0]
    return float(np.exp(good_log_ratio(good, prior))) if prior is not None and good.size else None


def drift_choice(single: dict[str, float], configs: dict) -> dict:
    """The drift check's z (firmware_sim.decisions.DRIFT_Z) chosen on DEV: the single-task DEV objective of
    ``anchored`` at each z (fewshot_summary's, over k) plus the same objective on the stream, averaged over its
    configurations (single products and continual streams count alike)."""
    zs = {"anchored": DRIFT_Z, **{f"anchored+drift:{z:g}": z for z in DRIFT_SWEEP}}
    stream = {m: float(np.mean([np.mean([t["dev"]["gap"] + t["dev"]["worst_gap"] for t in v["table"] if t["method"] == m])
                                for v in configs.values()])) for m in zs}
    total = {m: single[m] + stream[m] for m in zs}
    chosen = min(total, key=total.get)
    return {"by": "single-task DEV objective + mean over stream configurations of the DEV objective (mean over k "
            "of mean gap + worst product gap)", "z": {m: (None if math.isinf(z) else z) for m, z in zs.items()},
            "single_dev": {m: single[m] for m in zs}, "stream_dev": stream, "total": total, "chosen": chosen,
            "chosen_z": None if math.isinf(zs[chosen]) else zs[chosen], "default_in_code": DRIFT_Z}


def per_run_means(rows: list[dict]) -> list[dict]:
    """The draws averaged: one row per (category, seed, k, method), with the spread of its REPORT gap and how
    often a method fell back to another (lognormal to best-cut)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["category"], r["seed"], r["k"], r["method"]), []).append(r)
    out = []
    for (c, sd, k, m), g in groups.items():
        row = {"category": c, "seed": sd, "k": k, "method": m, "draws": len(g),
               "fallbacks": sum(r["used"] != r["method"] and r["method"] != "none" for r in g)}
        for key in ("threshold", "bacc_dev", "ceiling_dev", "gap_dev", "bacc_report", "fpr_report", "tpr_report",
                    "ceiling_report", "gap_report", "fpr_dev", "tpr_dev"):
            row[key] = float(np.mean([r[key] for r in g]))
        row["gap_report_std"] = float(np.std([r["gap_report"] for r in g]))
        out.append(row)
    return out


def fewshot_summary(rows: list[dict]) -> tuple[list[dict], dict]:
    table = []
    for k in dict.fromkeys(r["k"] for r in rows):
        for m in dict.fromkeys(r["method"] for r in rows):
            s = _summary([r for r in rows if r["k"] == k and r["method"] == m])
            for h in HALVES:
                s[h].pop("fpr_per_category")
            table.append({"k": k, "method": m, **s})
    # the method: chosen on the rest of DEV, over all k (mean gap + worst gap, averaged over k); 'none' is a
    # reference, not a calibration
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "none"]
    score = {m: float(np.mean([t["dev"]["gap"] + t["dev"]["worst_gap"] for t in table if t["method"] == m]))
             for m in methods}
    chosen = min(score, key=score.get)
    return table, {"chosen": chosen, "objective_dev": score, "by": "mean over k of (mean gap + worst category gap) "
                   "on the DEV images not drawn for calibration"}


def _rule_line(t: dict, h: str = "report") -> dict:
    return {"rule": t["rule"], **{f"{m}_{h}": t[h][m] for m in ("bacc", "ceiling", "gap", "worst_gap", "fpr")},
            "worst": t[h]["worst_category"], "obj_dev": t["objective_dev"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="from_json", default=None, help="saved scores: bench threshold's file (default "
                   f"{SOURCE.name}), "
                   "or several, comma-separated (e.g. bench postprocess's per-candidate score files); a later "
                   "file's run of a category and seed replaces an earlier one's")
    p.add_argument("--rules", default=RULES, help="comma list of candidate rules (edgead.engine.thresholds)")
    p.add_argument("--far-cap", type=float, default=0.2, help="largest mean DEV false-alarm rate of a candidate")
    p.add_argument("--good", type=int, default=5, help="labelled good images per calibration draw")
    p.add_argument("--draws", type=int, default=20, help="random calibration draws per (category, seed, k)")
    p.add_argument("--tag", default="", help="suffix of the results file names")
    p.add_argument("--out-dir", default=str(RESULTS), help="folder for the results files")
    p.add_argument("--stream", help="bench real-stream results files, comma-separated: the few-label study only, "
                   "on their products after the last task (with --from: the drift check's z chosen on both)")
    a = p.parse_args(argv)
    out, tag = Path(a.out_dir), f"_{a.tag}" if a.tag else ""
    if a.stream:
        res = stream_fewshot(a.stream, a.good, a.draws)
        res["lines"] = [{"config": c, "k": t["k"], "method": t["method"], "gap_dev": t["dev"]["gap"],
                         **{f"{m}_report": t["report"][m] for m in ("bacc", "ceiling", "gap", "worst_gap", "fpr")},
                         "worst": t["report"]["worst_category"]}
                        for c, v in res["configs"].items() for t in v["table"]
                        if ":" not in t["method"] or t["method"] == "anchored+drift:inf"]
        print_table(res["lines"], STREAM_COLS)
        res["checks"] = [check(f"{c}, {k} labelled defects + {a.good} good per product ({res['method']}): REPORT mean "
                               f"deployed balanced accuracy >= {BAR_STREAM}", t["report"]["bacc"] >= BAR_STREAM,
                               f"{t['report']['bacc']:.3f}; no labels {none['report']['bacc']:.3f}; ceiling "
                               f"{t['report']['ceiling']:.3f}")
                         for c, v in res["configs"].items() for k in (5, 10)
                         for t in v["table"] if t["k"] == k and t["method"] == res["method"]
                         for none in v["table"] if none["k"] == k and none["method"] == "none"]
        if a.from_json:  # single-task scores given too: choose the drift check's z on both
            single_runs, _ = load_runs(a.from_json)
            single = fewshot_summary(per_run_means(fewshot_rows(single_runs, n_good=a.good, draws=a.draws)))[1]
            res["drift_choice"] = drift_choice(single["objective_dev"], res["configs"])
            print_table([{"method": m, "z": res["drift_choice"]["z"][m], "single_dev": res["drift_choice"]["single_dev"][m],
                          "stream_dev": res["drift_choice"]["stream_dev"][m], "total": v}
                         for m, v in sorted(res["drift_choice"]["total"].items(), key=lambda kv: kv[1])],
                        ["method", "z", "single_dev", "stream_dev", "total"])
            print(f"drift check chosen on DEV: {res['drift_choice']['chosen']} (z in code: {DRIFT_Z:g})")
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / f"decisions_fewshot_stream{tag}.json", {**header(argv), "args": vars(a), **res})
        print(f"wrote {out}/decisions_fewshot_stream{tag}.json")
        return 0
    rules = [ThresholdRule.parse(t) for t in split_rules(a.rules)]
    a.from_json = a.from_json or str(SOURCE)
    runs, source_commands = load_runs(a.from_json)
    meta = {**header(argv), "scores_from": {"files": [Path(f).name for f in a.from_json.split(",") if f.strip()],
                                            "commands": source_commands},
            "categories": sorted({r["category"] for r in runs}), "seeds": sorted({r["seed"] for r in runs})}
    out.mkdir(parents=True, exist_ok=True)

    rows = evaluate_rules(runs, rules)
    table, choice = choose_rule(rows, a.far_cap)
    by = {t["rule"]: t for t in table}
    chosen = by[choice["chosen"]]
    print_table([_rule_line(t) for t in sorted(table, key=lambda t: t["objective_dev"])],
                ["rule", "obj_dev", "bacc_report", "ceiling_report", "gap_report", "worst_gap_report", "worst",
                 "fpr_report"])
    checks = []
    for name in dict.fromkeys([choice["chosen"], DEFAULT_THRESHOLD_RULE, "pseudo-f1", LEGACY_THRESHOLD_RULE]):
        if name not in by:
            continue
        rep = by[name]["report"]
        checks.append(check(f"{name}: REPORT mean deployed balanced accuracy within {BAR_MEAN_GAP} of the mean "
                            f"ceiling and no category more than {BAR_WORST_GAP} below its own",
                            rep["gap"] <= BAR_MEAN_GAP and rep["worst_gap"] <= BAR_WORST_GAP,
                            f"mean {rep['bacc']:.3f} vs ceiling {rep['ceiling']:.3f} (gap {rep['gap']:.3f}); worst "
                            f"{rep['worst_category']} {rep['worst_gap']:.3f}"))
    print(f"chosen on DEV: {choice['chosen']} (default in code: {DEFAULT_THRESHOLD_RULE})")
    write_json(out / f"decisions_rules{tag}.json", {**meta, "args": vars(a), "rules": [str(r) for r in rules],
                                                   "choice": choice, "chosen": chosen, "checks": checks,
                                                   "summary": table, "rows": rows})

    frows = far_rows(runs)
    far_checks = []
    for level in FAR_LEVELS:
        sel = [r for r in frows if r["A"] == level]
        cert = [r for r in sel if r["certifiable"]]
        per_cat = _per_category(cert, "realised_far")  # a category's rate: the mean over its seeds (models)
        worst_cat = max(per_cat, key=per_cat.get) if per_cat else None
        worst_run = max(cert, key=lambda r: r["realised_far"]) if cert else None
        if level == 0.05:
            far_checks.append(check(
                f"far:{level}: realised false-alarm rate <= {BAR_FAR} on every category whose held-out normals "
                "certify it (mean over seeds)", worst_cat is not None and per_cat[worst_cat] <= BAR_FAR,
                f"worst category {worst_cat} {per_cat.get(worst_cat, float('nan')):.3f}; worst single run "
                f"{worst_run['category']} seed {worst_run['seed']} {worst_run['realised_far']:.3f}; not certifiable "
                f"(normals held out): {sorted({(r['category'], r['n_normal']) for r in sel if not r['certifiable']})}"
                if worst_run else "no category certifies it"))
    print_table(frows, ["category", "seed", "A", "n_normal", "certifiable", "achievable_A", "realised_far"])
    write_json(out / f"decisions_far{tag}.json", {**meta, "levels": list(FAR_LEVELS), "checks": far_checks,
                                                 "rows": frows})

    srows = per_run_means(fewshot_rows(runs, n_good=a.good, draws=a.draws))
    stable, schoice = fewshot_summary(srows)
    lines = [{"k": t["k"], "method": t["method"], **{f"{m}_report": t["report"][m] for m in ("bacc", "ceiling", "gap",
             "worst_gap")}, "worst": t["report"]["worst_category"], "gap_dev": t["dev"]["gap"]} for t in stable]
    print_table(lines, ["k", "method", "gap_dev", "bacc_report", "ceiling_report", "gap_report", "worst_gap_report",
                        "worst"])
    shot_checks = []
    # the method chosen on these scores' DEV and the code's default (chosen on DEV of several score files: the
    # two can differ, and the default is what `calibrate` runs)
    for m in dict.fromkeys([schoice["chosen"], DEFAULT_CALIBRATION_METHOD]):
        for k, bar in BAR_SHOTS.items():
            t = next(t for t in stable if t["k"] == k and t["method"] == m)
            shot_checks.append(check(f"{k} labelled defects ({m}): REPORT mean deployed balanced "
                                     f"accuracy within {bar} of the ceiling", t["report"]["gap"] <= bar,
                                     f"{t['report']['bacc']:.3f} vs {t['report']['ceiling']:.3f} (gap "
                                     f"{t['report']['gap']:.3f}, worst {t['report']['worst_category']} "
                                     f"{t['report']['worst_gap']:.3f})"))
    print(f"calibration method chosen on the rest of DEV: {schoice['chosen']} (default in code: "
          f"{DEFAULT_CALIBRATION_METHOD}, dead zone {ANCHOR_DEAD_ZONE:g}, k0 {ANCHOR_DEFECTS:g})")
    write_json(out / f"decisions_fewshot{tag}.json", {**meta, "args": vars(a), "shots": list(SHOTS),
                                                     "choice": schoice, "checks": shot_checks, "summary": stable,
                                                     "rows": srows})
    print(f"wrote {out}/decisions_rules{tag}.json, decisions_far{tag}.json, decisions_fewshot{tag}.json")
    return 0


def split_rules(text: str) -> list[str]:
    """Rules separated by ',' or ';'; a bare number continues the rule before it (pseudo-band:Q,A)."""
    out: list[str] = []
    for t in (t.strip() for t in text.replace(";", ",").split(",")):
        if t and ":" not in t and out and t.replace(".", "", 1).isdigit():
            out[-1] += "," + t
        elif t:
            out.append(t)
    return out


if __name__ == "__main__":
    run_as_script(main)
