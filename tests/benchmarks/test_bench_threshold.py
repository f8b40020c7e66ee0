"""bench threshold: its --quick run trains for real and saves scores; rules re-evaluate from them; the choice is
made on DEV numbers only."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _run(category, seed, normal, pseudo, dev, report):
    return {"category": category, "seed": seed, "train_s": 1.0, "normal": normal, "pseudo": pseudo,
            "dev": {"labels": dev[0], "scores": dev[1]}, "report": {"labels": report[0], "scores": report[1]}}


def test_choice_is_made_on_dev_and_reported_on_report():
    from bench_threshold import choose, evaluate_rules, summarize
    from edgead.engine.thresholds import ThresholdRule

    normal = [0.1, 0.2, 0.3, 0.4]
    # dev rewards the low threshold (defects just above the normals); report rewards the high one
    runs = [_run("a", 0, normal, [1.0, 1.2], ([0, 0, 1, 1], [0.1, 0.2, 0.35, 0.38]),
                 ([0, 0, 1, 1], [0.36, 0.37, 0.9, 0.95]))]
    rules = [ThresholdRule.parse("quantile:0.5"), ThresholdRule.parse("quantile:1")]
    rows = evaluate_rules(runs, rules)
    summary = summarize(rows)
    by = {s["rule"]: s for s in summary}
    assert by["quantile:0.5"]["f1_dev"] > by["quantile:1"]["f1_dev"]
    assert by["quantile:0.5"]["f1_report"] < by["quantile:1"]["f1_report"]
    assert by["quantile:0.5"]["bacc_dev"] == 1.0 and by["quantile:0.5"]["bacc_report"] == 0.5
    for objective in ("bacc", "f1"):
        choice = choose(summary, objective)
        assert choice["chosen"] == "quantile:0.5"  # by DEV, although REPORT would have preferred the other
        assert choice["chosen_report_f1"] == by["quantile:0.5"]["f1_report"]
        assert choice["before"] == "quantile:0.99" and choice["before_report_f1"] is None  # not among the rules
    assert by["best"]["f1_report"] == 1.0 and by["best"]["f1_dev"] is None  # the bound is report-only


def test_threshold_quick_and_rescoring(tmp_path):
    import bench_threshold

    assert bench_threshold.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "threshold_quick.json").read_text())
    assert saved["complete"] and {r["category"] for r in saved["runs"]} == {"nut", "brick"}
    for r in saved["runs"]:
        assert len(r["normal"]) >= 1 and len(r["pseudo"]) >= 1
        for h in ("dev", "report"):
            y = np.array(r[h]["labels"])
            assert set(y) == {0, 1} and len(r[h]["scores"]) == len(y)
    assert saved["choice"]["chosen"] in saved["rules"]
    for s in saved["summary"]:
        for k in ("f1_dev", "f1_report"):
            assert s[k] is None or 0.0 <= s[k] <= 1.0
    # other rules from the saved scores, no training
    out2 = tmp_path / "again"
    assert bench_threshold.main(["--from", str(tmp_path / "threshold_quick.json"), "--rules", "sigma:1,quantile:0.5",
                                 "--out-dir", str(out2), "--tag", "re"]) == 0
    again = json.loads((out2 / "threshold_re.json").read_text())
    assert again["rules"] == ["sigma:1", "quantile:0.5"] and again["runs"] == saved["runs"]
    assert {s["rule"] for s in again["summary"]} == {"sigma:1", "quantile:0.5", "best"}
    (tmp_path / "junk.json").write_text('{"rows": []}')
    with pytest.raises(SystemExit, match="--from .*junk.json: not a saved threshold results file"):
        bench_threshold.main(["--from", str(tmp_path / "junk.json"), "--out-dir", str(tmp_path / "x")])

