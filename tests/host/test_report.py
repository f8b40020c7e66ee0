"""`edgead report`: figures, table and report.json from two tiny runs; bad input errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgead.errors import EdgeadError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runs(synth_root, tmp_path_factory):
    from edgead.cl.config import ReplayConfig
    from edgead.cl.runner import run_stream
    from edgead.data.stream import TaskStream
    from edgead.engine.trainer import TrainConfig
    from edgead.models.teacher_student import DetectorConfig

    # The autouse weights fixture is function-scoped; a module fixture sets the same variable itself.
    os.environ.setdefault("EDGEAD_WEIGHTS_DIR", str(ROOT.parent / "shared" / "weights" / "mcunet-in3"))
    base = tmp_path_factory.mktemp("report-runs")
    det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=64)
    train = TrainConfig(epochs=1, batch_size=8, progress=False, val_fraction=0.25)
    stream = TaskStream(synth_root, ["nut", "brick"])
    out = []
    for name, kw in (("ft", {"strategy": "finetune"}),
                     ("cr", {"strategy": "compressed-replay", "codec": "int8-channel", "budget_bytes": 200_000})):
        run_stream(stream, det, train, ReplayConfig(**kw), base / name, log=lambda m: None)
        out.append(base / name)
    return out


@pytest.fixture(scope="module")
def made(runs, tmp_path_factory):
    from edgead.report import make_report

    out = tmp_path_factory.mktemp("report")
    return out, make_report(runs, out, log=lambda m: None)


def test_report_figures_table_and_json(runs, made):
    out, report = made
    md = (out / "report.md").read_text()
    pngs = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    # curves + per run: matrix, memory, overlays
    assert len(pngs) == 1 + 3 * len(runs)
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert "paste/mcunet-in3/finetune/-" in md and "paste/mcunet-in3/compressed-replay/int8-channel" in md
    assert "Warning" not in md
    assert json.loads((out / "report.json").read_text()) == report
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in md.splitlines() if line.startswith("| ") and line.count("|") == 4}
    for k, run in enumerate(runs):
        res = json.loads((run / "results.json").read_text())
        rj = report["runs"][k]
        for row, key in (("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"), ("image F1 (best over thresholds)", "image_f1"),
                         ("pixel F1", "pixel_f1"), ("pixel PR-AUC", "pixel_ap"), ("AUPRO", "aupro")):
            final = res["metrics"][key]["final_average"]
            assert rj["final_average"][key] == final
            assert table[row][k] == f"{final:.3f}"
        for key in ("image_auroc", "pixel_auroc"):
            assert rj["average_per_step"][key] == res["metrics"][key]["average_per_step"]
        assert rj["image_auroc_matrix"] == res["metrics"]["image_auroc"]["matrix"]
        assert rj["architecture_bytes_fp32"] == res["memory"]["architecture_bytes"]["fp32"]
        assert rj["additional_bytes"] == res["memory"]["additional_bytes"]
        assert table["additional memory MB"][k] == f"{res['memory']['additional_bytes'] / 1e6:.3f}"
        fr = res["metrics"]["pixel_f1"]["forgetting_relative"]
        assert table["average forgetting (relative, pixel F1)"][k] == ("n/a" if fr is None else f"{fr:.3f}")
    assert report["runs"][0]["additional_bytes"] == 0 < report["runs"][1]["additional_bytes"]


def test_missing_results_json_names_folder(runs, tmp_path):
    from edgead.report import make_report

    empty = tmp_path / "not-a-run"
    empty.mkdir()
    with pytest.raises(EdgeadError, match=re.escape(str(empty)) + ".*results.json"):
        make_report([runs[0], empty], tmp_path / "out")
    assert not (tmp_path / "out" / "report.md").exists()


def test_different_task_streams_refused(runs, tmp_path):
    from edgead.report import make_report

    other = tmp_path / "other"
    shutil.copytree(runs[0], other)
    res = json.loads((other / "results.json").read_text())
    res["tasks"] = ["nut", "pill"]
    (other / "results.json").write_text(json.dumps(res))
    with pytest.raises(EdgeadError, match="different task streams") as e:
        make_report([runs[0], other], tmp_path / "out")
    assert str(other) in str(e.value) and str(runs[0]) in str(e.value)


def test_moved_dataset_skips_overlays(runs, tmp_path):
    from edgead.report import make_report

    moved = tmp_path / "moved"
    shutil.copytree(runs[0], moved, ignore=shutil.ignore_patterns("memory"))
    res = json.loads((moved / "results.json").read_text())
    res["config"]["data_root"] = str(tmp_path / "gone")
    (moved / "results.json").write_text(json.dumps(res))
    report = make_report([moved], tmp_path / "out", log=lambda m: None)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Warning" in md and "gone" in md and "overlays" not in report["runs"][0]["figures"]
    assert (tmp_path / "out" / "run1_matrix.png").stat().st_size > 0


def _cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "edgead", "report", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)


def test_cli_report(runs, tmp_path, edgead_in_process):
    p = _cli(runs[1], "--out", tmp_path / "rep")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "rep" / "report.md").is_file() and (tmp_path / "rep" / "report.json").is_file()
    bad = tmp_path / "bad"
    bad.mkdir()
    p = edgead_in_process("report", bad, "--out", tmp_path / "rep2")  # the same main(), without a new process
    assert p.returncode == 2
    assert "error:" in p.stderr and str(bad) in p.stderr and "results.json" in p.stderr
    assert "Traceback" not in p.stderr
