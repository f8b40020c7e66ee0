"""bench real-stream: its --quick sweep runs end to end (numbers not asserted as targets), a rerun reuses the
finished runs, and bad input (a category twice, Ray missing, another sweep's folder) is a clear error."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import bench_real_stream as brs


def test_quick_writes_results_plots_and_reruns_nothing(tmp_path, capsys):
    argv = ["--quick", "--methods", "finetune,int8-channel", "--out-dir", str(tmp_path)]
    assert brs.main(argv) == 0
    saved = json.loads((tmp_path / "real_stream_quick.json").read_text())
    assert saved["complete"] and saved["tasks"] == ["brick", "nut"]
    keys = {(r["method"], r["setting"]) for r in saved["summary"]}
    assert keys == {("finetune", "none"), ("int8-channel", "budget 30kB"), ("int8-channel", "count 4")}
    for r in saved["runs"]:
        assert r["total_bytes"] == r["additional_bytes"] + r["calibration_bytes"]
        if r["budget_bytes"]:
            assert r["total_bytes"] <= r["budget_bytes"]  # anchors are counted inside the budget
        assert set(r["deployed_per_task"]) == {"brick", "nut"}
        for k in ("deployed_f1_task", "deployed_f1_last_task", "deployed_f1_agnostic"):
            assert r[k] is None or 0.0 <= r[k] <= 1.0
        # the ceiling (best balanced accuracy over thresholds, evaluation only) bounds every deployed one
        assert r["deployed_bacc_ceiling"] >= r["deployed_bacc_task"] - 1e-12 and 0 <= r["deployed_fpr_task"] <= 1
        assert set(r["deployed_decisions_per_task"]) == {"brick", "nut"}
        # each task's last evaluation, kept for the few-label study: the scores its deployed threshold is judged on
        for name, f in r["final_scores"].items():
            assert len(f["labels"]) == len(f["scores"]) == len(f["defect_types"]) and set(f["labels"]) == {0, 1}
            deployed = r["deployed_decisions_per_task"][name]
            assert f["calibration"]["threshold"] == pytest.approx(deployed["threshold"])
            y, s = np.asarray(f["labels"]), np.asarray(f["scores"])
            called = s > deployed["threshold"]
            assert 0.5 * (called[y == 1].mean() + (~called[y == 0]).mean()) == pytest.approx(
                deployed["balanced_accuracy"])
    assert (tmp_path / "real_stream_quick.csv").read_text().startswith("method,")
    for png in ("real_stream_quick_pareto.png", "real_stream_quick_matrix_finetune_none.png",
                "real_stream_quick_matrix_int8-channel_count4.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert brs.main(argv) == 0  # the same sweep again: everything is already finished
    assert "3 of 3 runs already finished" in capsys.readouterr().out
    again = json.loads((tmp_path / "real_stream_quick.json").read_text())
    assert [r["image_auroc"] for r in again["runs"]] == [r["image_auroc"] for r in saved["runs"]]
    # a different sweep into the same folder is refused without --resume
    with pytest.raises(SystemExit, match="holds another sweep"):
        brs.main(["--quick", "--methods", "finetune", "--out-dir", str(tmp_path)])
    for r in saved["runs"]:  # this run's threshold rule and the exported threshold of before, on the same model
        assert r["threshold_rule"] and (r["deployed_f1_before"] is None or 0.0 <= r["deployed_f1_before"] <= 1.0)
    _merge_checks(tmp_path, saved)
    _fewshot_checks(tmp_path, saved)


def _fewshot_checks(tmp_path, saved):
    """bench_decisions --stream: the few-label study on the stream's products after the last task."""
    import bench_decisions

    assert bench_decisions.main(["--stream", str(tmp_path / "real_stream_quick.json"), "--draws", "2",
                                 "--out-dir", str(tmp_path / "d"), "--tag", "q"]) == 0
    res = json.loads((tmp_path / "d" / "decisions_fewshot_stream_q.json").read_text())
    assert set(res["configs"]) == {f"{r['method']} {r['setting']}" for r in saved["runs"]}
    assert [s["file"] for s in res["sources"]] == ["real_stream_quick.json"]
    for c in res["configs"].values():
        assert c["products"] == ["brick", "nut"]
        by = {(t["k"], t["method"]): t["report"] for t in c["table"]}
        assert {k for k, _ in by} == set(bench_decisions.SHOTS) and {"none", "anchored", "best-cut"} <= {m for _, m in by}
        for rep in by.values():
            assert rep["bacc"] <= rep["ceiling"] + 1e-12 and rep["worst_gap"] >= rep["gap"] - 1e-12
        # 'none' keeps the deployed threshold: the same for every k
        assert len({round(by[(k, "none")]["bacc"], 12) for k in bench_decisions.SHOTS}) == 1
        assert {(k, res["method"]) for k in bench_decisions.SHOTS} <= set(by)
        # how far each product's DEV good parts moved from its stored calibration, per seed
        assert set(c["dev_good_ratio"]) == {f"{p} seed 0" for p in ("brick", "nut")}
        assert all(v is None or v > 0 for v in c["dev_good_ratio"].values())
    broken = json.loads((tmp_path / "real_stream_quick.json").read_text())
    broken["runs"][0]["final_scores"]["nut"].pop("defect_types")
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(SystemExit, match=r"broken.json.*task 'nut'.*not readable.*defect_types"):
        bench_decisions.main(["--stream", str(tmp_path / "broken.json"), "--out-dir", str(tmp_path / "b")])
    assert not (tmp_path / "b").exists()  # nothing written
    with pytest.raises(SystemExit, match="no run keeps"):
        old = json.loads((tmp_path / "real_stream_quick.json").read_text())
        for r in old["runs"]:
            r.pop("final_scores")
        (tmp_path / "old.json").write_text(json.dumps(old))
        bench_decisions.main(["--stream", str(tmp_path / "old.json"), "--out-dir", str(tmp_path / "d")])


def _merge_checks(tmp_path, saved):
    """--merge: the same runs twice count once; a crop setting is labelled; the same run with other results
    is refused, naming both files."""
    src = tmp_path / "real_stream_quick.json"
    crop = json.loads(src.read_text())
    crop["args"]["latent_crop"] = "4"
    crop["runs"] = [r for r in crop["runs"] if r["method"] == "int8-channel"]
    (tmp_path / "crop.json").write_text(json.dumps(crop))
    assert brs.main(["--merge", f"{src},{src},{tmp_path / 'crop.json'}", "--tag", "m", "--out-dir",
                     str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m" / "real_stream_m.json").read_text())
    assert len(merged["runs"]) == len(saved["runs"]) + 2
    assert {r["setting"] for r in merged["summary"]} == {"none", "budget 30kB", "count 4", "budget 30kB crop 4",
                                                          "count 4 crop 4"}
    assert [s["file"] for s in merged["merged_from"]] == ["real_stream_quick.json"] * 2 + ["crop.json"]
    other = json.loads(src.read_text())
    other["runs"][0]["image_auroc"] = 0.123
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match="--merge .*junk.json: not a readable real_stream results file"):
        brs.main(["--merge", str(tmp_path / "junk.json"), "--out-dir", str(tmp_path / "m3")])
    with pytest.raises(SystemExit, match="other.json, with different results"):
        brs.main(["--merge", f"{src},{tmp_path / 'other.json'}", "--out-dir", str(tmp_path / "m2")])


def test_bad_input(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="--tasks names magnetic_tile twice"):
        brs.main(["--data", str(tmp_path), "--tasks", "magnetic_tile,bsdata,magnetic_tile"])
    with pytest.raises(SystemExit, match="--data FOLDER"):
        brs.main(["--tasks", "bsdata"])
    with pytest.raises(SystemExit, match="--methods sgd"):
        brs.main(["--data", str(tmp_path), "--methods", "finetune,sgd"])
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SystemExit, match=r"pip install 'edgead\[cluster\]'"):
        brs.main(["--quick", "--methods", "finetune", "--ray", "auto", "--out-dir", str(tmp_path / "r")])


def test_registered_as_edgead_bench_real_stream():
    from edgead.cli.bench import SCRIPTS

    assert SCRIPTS["real-stream"][0] == "bench_real_stream"


def test_cli_bad_input_is_error_exit_2(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "edgead", "bench", "real-stream", "--data", str(tmp_path), "--tasks",
                        "elpv_mono,elpv_mono"], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "error: --tasks names elpv_mono twice" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
