"""bench decisions: from saved scores (bench threshold's format) it chooses the rule on DEV with the worst category
counted, certifies far:A only with enough normals, and chooses the calibration method on DEV images not drawn."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _run(category: str, seed: int, rng: np.random.Generator, n_normal: int, shift: float) -> dict:
    """Log-normal scores as on the real categories: defects higher by ``shift`` in log score, overlapping."""
    def half():
        y = np.r_[np.zeros(40, int), np.ones(60, int)]
        return {"labels": y.tolist(), "scores": np.exp(rng.normal(0, 1, 100) + shift * y).tolist()}

    return {"category": category, "seed": seed, "train_s": 1.0,
            "normal": np.exp(rng.normal(0, 1, n_normal)).tolist(),
            "pseudo": np.exp(rng.normal(4, 0.5, 2 * n_normal)).tolist(), "dev": half(), "report": half()}


@pytest.fixture()
def scores_file(tmp_path):
    rng = np.random.default_rng(0)
    runs = [_run("wide", s, rng, 60, 2.5) for s in (0, 1)] + [_run("tiny", s, rng, 5, 2.0) for s in (0, 1)]
    path = tmp_path / "threshold_x.json"
    path.write_text(json.dumps({"command": "python benchmarks/bench_threshold.py --quick", "runs": runs}))
    return path


def test_decisions_from_saved_scores(scores_file, tmp_path):
    import bench_decisions

    out = tmp_path / "out"
    assert bench_decisions.main(["--from", str(scores_file), "--out-dir", str(out), "--draws", "3",
                                 "--rules", "quantile:0.5,quantile:0.99,far:0.05,pseudo-band:0.7,0.1"]) == 0
    rules = json.loads((out / "decisions_rules.json").read_text())
    assert rules["rules"] == ["quantile:0.5", "quantile:0.99", "far:0.05", "pseudo-band:0.7,0.1"]
    by = {t["rule"]: t for t in rules["summary"]}
    # the choice is the DEV objective's minimum among rules within the false-alarm cap
    allowed = [t for t in rules["summary"] if t["dev"]["fpr"] <= rules["choice"]["far_cap"]]
    assert rules["choice"]["chosen"] == min(allowed, key=lambda t: t["objective_dev"])["rule"]
    for t in by.values():
        assert t["objective_dev"] == pytest.approx(t["dev"]["gap"] + t["dev"]["worst_gap"])
        for h in ("dev", "report"):
            assert t[h]["bacc"] <= t[h]["ceiling"] + 1e-12 and t[h]["worst_gap"] >= t[h]["gap"] - 1e-12
    # quantile:0.5 rejects about half of the good parts: outside the cap, never chosen
    assert by["quantile:0.5"]["dev"]["fpr"] > 0.3 and rules["choice"]["chosen"] != "quantile:0.5"

    far = json.loads((out / "decisions_far.json").read_text())
    rows = {(r["category"], r["A"]): r for r in far["rows"]}
    assert rows[("wide", 0.05)]["certifiable"] and rows[("wide", 0.05)]["achievable_A"] == 0.05
    assert not rows[("tiny", 0.05)]["certifiable"] and rows[("tiny", 0.05)]["achievable_A"] == pytest.approx(1 / 6)
    assert far["checks"] and "not certifiable" in far["checks"][0]["detail"]

    shots = json.loads((out / "decisions_fewshot.json").read_text())
    methods = {r["method"] for r in shots["rows"]}
    sweep = {f"anchored:{z:g},{k0:g}" for z, k0 in bench_decisions.ANCHOR_SWEEP}
    drift = {f"{m}+drift:{z:g}" for m in ("anchored", "lognormal") for z in bench_decisions.DRIFT_SWEEP}
    assert methods == {"none", "anchored", "lognormal", "best-cut", "best-cut+held-out"} | sweep | drift
    assert len(sweep) >= 4 and len(drift) >= 6
    assert shots["choice"]["chosen"] in methods - {"none"}
    assert shots["choice"]["chosen"] == min(shots["choice"]["objective_dev"], key=shots["choice"]["objective_dev"].get)
    assert all(r["draws"] == 3 for r in shots["rows"]) and {r["k"] for r in shots["rows"]} == {1, 3, 5, 10}
    # every method is scored on the same draws: the ceilings of the images not drawn agree across methods
    by_key = {}
    for r in shots["rows"]:
        by_key.setdefault((r["category"], r["seed"], r["k"]), set()).add(round(r["ceiling_dev"], 12))
    assert all(len(v) == 1 for v in by_key.values())
    # the deployed threshold here (pseudo-band, pseudo-defects far above the normals) sits well above the best
    # cut of these scores: with 10 labelled defects anchored moves toward it and gains on DEV over keeping it
    gap = {(t["k"], t["method"]): t["dev"]["gap"] for t in shots["summary"]}
    assert gap[(10, "anchored")] < gap[(10, "none")] and gap[(10, "anchored")] <= gap[(1, "anchored")] + 0.01


def test_bad_saved_scores_are_refused(tmp_path):
    import bench_decisions

    (tmp_path / "junk.json").write_text('{"rows": []}')
    with pytest.raises(SystemExit, match="--from .*junk.json: not a saved threshold results file"):
        bench_decisions.main(["--from", str(tmp_path / "junk.json"), "--out-dir", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_rule_lists_keep_pseudo_band_pairs():
    from bench_decisions import split_rules

    assert split_rules("far:0.05,pseudo-band:0.7,0.1;sigma:2") == ["far:0.05", "pseudo-band:0.7,0.1", "sigma:2"]


def test_a_later_score_file_replaces_the_runs_of_its_categories_and_seeds(scores_file, tmp_path):
    import bench_decisions

    redo = _run("tiny", 0, np.random.default_rng(1), 20, 2.0)  # the small category re-trained, more normals
    later = tmp_path / "later.json"
    later.write_text(json.dumps({"command": "python benchmarks/bench_postprocess.py --categories tiny",
                                 "runs": [redo]}))
    runs, commands = bench_decisions.load_runs(f"{scores_file},{later}")
    got = {(r["category"], r["seed"]): len(r["normal"]) for r in runs}
    assert got == {("wide", 0): 60, ("wide", 1): 60, ("tiny", 0): 20, ("tiny", 1): 5} and len(commands) == 2


def test_a_tie_on_dev_goes_to_fewer_false_alarms_then_to_the_rule_listed_first():
    from bench_decisions import choose_rule

    def rows(rule, gap, fpr):
        return [{"category": c, "seed": 0, "rule": rule, **{f"{m}_{h}": v for h in ("dev", "report") for m, v in
                 (("bacc", 0.8), ("ceiling", 0.8 + gap), ("gap", gap), ("fpr", fpr), ("tpr", 0.7))}}
                for c in ("a", "b")]

    same = rows("pseudo-band:0.7,0.15", 0.02, 0.1) + rows("pseudo-band:0.5,0.15", 0.02, 0.1)
    assert choose_rule(same, 0.2)[1]["chosen"] == "pseudo-band:0.7,0.15"  # identical: the first listed
    fewer = rows("pseudo-band:0.7,0.15", 0.02, 0.15) + rows("pseudo-band:0.5,0.15", 0.02, 0.1)
    assert choose_rule(fewer, 0.2)[1]["chosen"] == "pseudo-band:0.5,0.15"  # same objective, fewer false alarms
    better = rows("pseudo-band:0.7,0.15", 0.01, 0.15) + rows("pseudo-band:0.5,0.15", 0.02, 0.1)
    assert choose_rule(better, 0.2)[1]["chosen"] == "pseudo-band:0.7,0.15"  # the objective comes first


def test_the_drift_check_is_chosen_on_single_task_and_stream_dev_alike():
    import math

    import bench_decisions as bd

    names = ["anchored"] + [f"anchored+drift:{z:g}" for z in bd.DRIFT_SWEEP]
    single = {m: 0.05 + 0.01 * i for i, m in enumerate(names)}  # the code's z best on single products

    def config(best):  # a stream configuration whose DEV objective is lowest at method ``best``
        return {"table": [{"k": k, "method": m, "dev": {"gap": 0.1 if m != best else 0.0, "worst_gap": 0.1}}
                          for k in (1, 3) for m in names]}

    far_off = names[-1]
    got = bd.drift_choice(single, {"a": config(far_off), "b": config(far_off)})
    # the stream's mean over configurations (0.1 lower at far_off) outweighs single's 0.01-per-step order
    assert got["chosen"] == far_off and got["stream_dev"][far_off] == pytest.approx(0.1)
    assert got["total"]["anchored"] == pytest.approx(0.05 + 0.2)
    assert got["z"]["anchored"] == bd.DRIFT_Z and (got["z"][far_off] is None) == math.isinf(bd.DRIFT_SWEEP[-1])
    # one configuration preferring it is averaged with one that does not: single decides
    assert bd.drift_choice(single, {"a": config(far_off), "b": config("anchored")})["chosen"] == "anchored"
