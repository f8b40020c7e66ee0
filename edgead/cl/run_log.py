"""What a run folder keeps of its training besides results.json: RUN/train.log and RUN/epochs.csv.

`train.log` holds every progress line the learner prints (each with a UTC time stamp) and each epoch's loss,
selection score and time, appended as they happen, so a killed or remote run can be read afterwards.
`epochs.csv` has one row per task and epoch (task_index, task, epoch, loss, selection, seconds): a loss
curve opens in any spreadsheet or `pandas.read_csv`. It is rewritten atomically after each task, keeping the
rows of the tasks before it, so a resumed run never holds a killed attempt's rows twice.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from firmware_sim.atomic import atomic_write_text

LOG_NAME = "train.log"
EPOCHS_NAME = "epochs.csv"
EPOCH_COLUMNS = ("task_index", "task", "epoch", "loss", "selection", "seconds")


class RunLog:
    """A `log` callable that also appends each line, time-stamped, to RUN/train.log."""

    def __init__(self, out: str | Path, echo: Callable[[str], None] = print):
        self.path = Path(out) / LOG_NAME
        self.echo = echo

    def write(self, message: str) -> None:
        """Append to train.log only (per-epoch lines: too many for the console)."""
        stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                for line in str(message).splitlines() or [""]:
                    f.write(f"{stamp} {line}\n")
        except OSError:
            pass  # the log is a convenience: a full disk must fail on the run's own files, with their names

    def __call__(self, message: str) -> None:
        self.write(message)
        self.echo(message)


def record_epochs(out: str | Path, task_index: int, task: str, history: list[dict], log: RunLog | None = None
                  ) -> Path:
    """Write task `task_index`'s epochs into RUN/epochs.csv (rows of later tasks, from a killed attempt, go)."""
    path = Path(out) / EPOCHS_NAME
    rows = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r.get("task_index", "").isdigit()
                    and int(r["task_index"]) < task_index]
    for h in history:
        sel = h.get("selection")
        rows.append({"task_index": task_index, "task": task, "epoch": h["epoch"], "loss": f"{h['loss']:.6g}",
                     "selection": "" if sel is None else f"{sel:.6g}", "seconds": f"{h['seconds']:.3f}"})
        if log is not None:
            log.write(f"  {task} epoch {h['epoch']}: loss {h['loss']:.6g}"
                      + ("" if sel is None else f", selection {sel:.4f}") + f", {h['seconds']:.2f} s")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=EPOCH_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return atomic_write_text(path, buf.getvalue())
