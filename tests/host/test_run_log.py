"""RUN/train.log and RUN/epochs.csv (edgead.cl.run_log): what a run folder keeps of its training."""

from __future__ import annotations

import csv

from edgead.cl.run_log import EPOCH_COLUMNS, RunLog, record_epochs


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_epochs_csv_keeps_earlier_tasks_and_replaces_a_retrained_one(tmp_path):
    h = [{"epoch": 1, "loss": 0.5, "seconds": 1.25, "selection": 0.7}, {"epoch": 2, "loss": 0.25, "seconds": 1.0}]
    record_epochs(tmp_path, 0, "nut", h)
    record_epochs(tmp_path, 1, "pill", h[:1])
    record_epochs(tmp_path, 1, "pill", h)  # task 1 again, as after a kill and --resume: no duplicate rows
    rows = _rows(tmp_path / "epochs.csv")
    assert tuple(rows[0]) == EPOCH_COLUMNS
    assert [(r["task"], r["epoch"]) for r in rows] == [("nut", "1"), ("nut", "2"), ("pill", "1"), ("pill", "2")]
    assert rows[0]["selection"] == "0.7" and rows[1]["selection"] == "" and float(rows[1]["loss"]) == 0.25
    record_epochs(tmp_path, 0, "nut", h[:1])  # a new first task drops every later row
    assert [r["task"] for r in _rows(tmp_path / "epochs.csv")] == ["nut"]


def test_run_log_appends_time_stamped_lines_and_echoes(tmp_path):
    echoed = []
    log = RunLog(tmp_path / "run", echoed.append)
    log("task 1: nut (8 train)")
    log.write("  nut epoch 1: loss 0.5")  # file only
    log("done")
    lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert [ln.split(" ", 1)[1] for ln in lines] == ["task 1: nut (8 train)", "  nut epoch 1: loss 0.5", "done"]
    assert all(ln[:4].isdigit() and ln.split(" ", 1)[0].endswith("Z") for ln in lines)
    assert echoed == ["task 1: nut (8 train)", "done"]
