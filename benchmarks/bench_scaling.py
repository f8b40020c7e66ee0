"""How training time per task and memory grow with the number of tasks, at a fixed replay byte budget.

Streams of 2, 4, 8 ... synthetic tasks, PaSTe-MCUNet, compressed replay (int8-channel latents) and image
replay, both inside the same byte budget; every stream runs in its own fresh process
(`edgead.cl.runner.run_stream`, as bench_cl_quality) so its resident memory is its own. Per task:
training seconds (prepare + epochs), median epoch seconds, evaluation seconds (every task seen so far),
wall seconds, the replay memory's bytes and samples after the task (read back from the memory file the
run wrote, with the memory classes that wrote it) and the process's peak resident memory during the task
(VmHWM, reset at each task start through /proc/self/clear_refs; where that is not writable the peak is
cumulative and the results say so). Expected: training time per task flat in the number of tasks (a
fixed number of replayed samples per batch), the memory never above the budget.

Task names: a stream of N tasks takes the first N of TASK_NAMES, so shorter streams are prefixes of longer
ones. The synthetic generator (edgead.data.synth) has six looks (brick, grass, gravel, nut, pill,
bottle); tasks 7 and up reuse them under other names (metal_nut = nut, capsule = pill, tile = gravel,
carpet = grass, grid = brick), which the generator draws with a name-dependent tint, background, scale and
random stream (every draw is seeded by crc32 of the name), so they are distinct tasks of a known look.
Beyond 11 tasks, synth_NN names are hashed onto a look. Writes benchmarks/results/scaling[_TAG].json,
.csv and .png.

    python benchmarks/bench_scaling.py [--tasks 2,4,8] [--image-size 128] [--epochs 2] [--budget 2460000]
    python benchmarks/bench_scaling.py --quick          # 64 px, 1 epoch, 2 tasks
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchkit import RESULTS, check, header, print_table, run_as_script, write_csv, write_json
from edgead.errors import EdgeadError
from latency import ROOT, peak_rss_bytes

TASK_NAMES = ("brick", "grass", "gravel", "nut", "pill", "bottle",
              "metal_nut", "capsule", "tile", "carpet", "grid")
STRATEGIES = {"compressed-replay": {"strategy": "compressed-replay", "codec": "int8-channel"},
              "replay": {"strategy": "replay", "codec": None}}
FLAT_TOLERANCE = 1.5  # mean training time per task, longest vs shortest stream
# the learner announces each task with "task i: NAME (...)" (it does not know the stream's length); the worker
# uses that line to split time and memory per task.
TASK_START = re.compile(r"task (\d+): ")
NOTES = ("PaSTe-MCUNet (ImageNet trunk and teacher); one fresh process per stream; tasks 7+ reuse "
         "the synthetic looks under other names (metal_nut=nut, capsule=pill, tile=gravel, carpet=grass, "
         "grid=brick) with name-seeded draws; buffer bytes = what results.json counts as additional_bytes, "
         "read back from each task's memory file; the first task's wall time includes one-time lazy imports")
SUMMARY_COLS = ["strategy", "n_tasks", "train_s_per_task", "epoch_s", "eval_s_last", "max_buffer_bytes",
                "budget_bytes", "peak_rss_mib", "wall_s"]


def task_names(n: int) -> list[str]:
    return [*TASK_NAMES[:n], *(f"synth_{i:02d}" for i in range(len(TASK_NAMES), n))]


# -- one stream, in its own process ------------------------------------------------------------------------
def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where /proc/self/clear_refs is not writable."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def buffer_after(out: Path, i: int, strategy: str, image_size: int, budget: int) -> tuple[int, int, dict]:
    """(bytes as results.json counts them, file bytes, samples per task) of the memory after task i."""
    from edgead.cl.memory import ImageMemory
    from firmware_sim.replay_buffer import ReplayBuffer

    if strategy == "replay":
        path = out / "memory" / f"after_task_{i:02d}.npz"
        mem = ImageMemory(image_size, budget_bytes=budget, memory_size=None, seed=0)
        mem.load(path)
        return mem.nbytes, path.stat().st_size, {str(t): n for t, n in mem.samples_per_task().items()}
    path = out / "memory" / f"after_task_{i:02d}.edgeadrb"
    buf, _ = ReplayBuffer.load(path)
    return buf.nbytes, path.stat().st_size, {str(t): sum(1 for _ in buf.records(t)) for t in buf.tasks}


def run_worker(spec: dict) -> dict:
    import torch

    from edgead.cl.config import ReplayConfig
    from edgead.cl.runner import run_stream
    from edgead.data import TaskStream
    from edgead.engine.trainer import TrainConfig
    from edgead.models.teacher_student import DetectorConfig

    torch.set_num_threads(1)
    per_task_peak = _reset_peak()
    marks: list[tuple[float, int]] = []  # (time, peak RSS since the previous mark) at each task start

    def log(msg: str) -> None:
        if TASK_START.match(msg):
            marks.append((time.perf_counter(), peak_rss_bytes()))
            _reset_peak()

    det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=spec["image_size"])
    cfg = TrainConfig(epochs=spec["epochs"], seed=spec["seed"], progress=False)
    out = Path(spec["out"])
    t0 = time.perf_counter()
    replay = ReplayConfig(budget_bytes=spec["budget"], **STRATEGIES[spec["strategy"]])
    res = run_stream(TaskStream(Path(spec["data"]), spec["tasks"]), det, cfg, replay, out, weights=spec["weights"],
                     log=log, command="bench_scaling")
    marks.append((time.perf_counter(), peak_rss_bytes()))
    n = len(spec["tasks"])
    if len(marks) != n + 1:  # the log format is the only per-task hook: fail loudly if it changes
        raise EdgeadError(f"expected {n} task-start lines from run_stream (pattern {TASK_START.pattern!r}), "
                          f"saw {len(marks) - 1}")
    per_task = []
    for i, (t, name) in enumerate(zip(res["timings"]["per_task"], spec["tasks"], strict=True)):
        nbytes, file_bytes, samples = buffer_after(out, i, spec["strategy"], spec["image_size"],
                                                   spec["budget"])
        per_task.append({"task_index": i, "task": name, "train_s": t["train_seconds"],
                         "prepare_s": t["prepare_seconds"], "epoch_s": float(np.median(t["epoch_seconds"])),
                         "eval_s": t["eval_seconds"], "wall_s": marks[i + 1][0] - marks[i][0],
                         "replay_per_batch": t["replay_per_batch"], "buffer_bytes": nbytes,
                         "buffer_file_bytes": file_bytes, "buffer_samples": samples,
                         "peak_rss_bytes": marks[i + 1][1]})
    return {"strategy": spec["strategy"], "n_tasks": n, "tasks": spec["tasks"], "per_task": per_task,
            "setup_s": marks[0][0] - t0, "setup_peak_rss_bytes": marks[0][1], "wall_s": marks[-1][0] - t0,
            "peak_rss_scope": "per task" if per_task_peak else "cumulative (clear_refs not writable)",
            "additional_bytes": res["memory"]["additional_bytes"], "budget_bytes": spec["budget"]}


def run_in_subprocess(spec: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                       cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{spec['strategy']} stream of {len(spec['tasks'])} tasks failed:\n"
                           f"{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- summary, checks, plot --------------------------------------------------------------------------------
def summarize(streams: list[dict]) -> list[dict]:
    rows = []
    for s in streams:
        pt = s["per_task"]
        later = pt[1:] or pt  # task 1 has no replay yet: per-task cost is compared from task 2 on
        rows.append({"strategy": s["strategy"], "n_tasks": s["n_tasks"],
                     "train_s_per_task": float(np.mean([t["train_s"] for t in later])),
                     "epoch_s": float(np.mean([t["epoch_s"] for t in later])),
                     "prepare_s": float(np.mean([t["prepare_s"] for t in later])),
                     "eval_s_last": pt[-1]["eval_s"], "max_buffer_bytes": max(t["buffer_bytes"] for t in pt),
                     "budget_bytes": s["budget_bytes"],
                     "peak_rss_mib": max(t["peak_rss_bytes"] for t in pt) / 2**20,
                     "peak_rss_first_task_mib": pt[0]["peak_rss_bytes"] / 2**20, "wall_s": s["wall_s"]})
    return rows


def expectations(streams: list[dict], rows: list[dict]) -> list[dict]:
    over = [(s["strategy"], s["n_tasks"], t["task_index"], t["buffer_bytes"]) for s in streams
            for t in s["per_task"] if t["buffer_bytes"] > s["budget_bytes"]]
    out = [check("replay memory never above the budget", not over,
                 f"{sum(len(s['per_task']) for s in streams)} task ends checked; over: {over or 'none'}")]
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        rs = sorted((r for r in rows if r["strategy"] == strategy), key=lambda r: r["n_tasks"])
        if len(rs) > 1:
            lo, hi = rs[0], rs[-1]
            ratio = hi["train_s_per_task"] / lo["train_s_per_task"]
            out.append(check(f"{strategy}: training time per task flat in the number of tasks "
                             f"({hi['n_tasks']} vs {lo['n_tasks']} tasks, ratio <= {FLAT_TOLERANCE})",
                             ratio <= FLAT_TOLERANCE, f"{hi['train_s_per_task']:.2f} vs "
                             f"{lo['train_s_per_task']:.2f} s per task (tasks 2+), ratio {ratio:.2f}"))
            out.append(check(f"{strategy}: peak resident memory, {hi['n_tasks']} vs {lo['n_tasks']} tasks "
                             "(reported, not a target)", True,
                             f"{hi['peak_rss_mib']:.0f} vs {lo['peak_rss_mib']:.0f} MiB"))
    return out


def plot(streams: list[dict], rows: list[dict], path: Path) -> Path:
    from edgead.plotting import pyplot, save_png

    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colors = {"compressed-replay": "tab:blue", "replay": "tab:orange"}
    for s in streams:
        x = [t["task_index"] + 1 for t in s["per_task"]]
        kw = {"color": colors.get(s["strategy"]), "marker": "o", "alpha": 0.4 + 0.6 * s["n_tasks"] / max(
            r["n_tasks"] for r in rows), "label": f"{s['strategy']}, {s['n_tasks']} tasks"}
        axes[0].plot(x, [t["train_s"] for t in s["per_task"]], **kw)
        axes[2].plot(x, [t["peak_rss_bytes"] / 2**20 for t in s["per_task"]], **kw)
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        rs = sorted((r for r in rows if r["strategy"] == strategy), key=lambda r: r["n_tasks"])
        axes[1].plot([r["n_tasks"] for r in rs], [r["train_s_per_task"] for r in rs], marker="o",
                     color=colors.get(strategy), label=strategy)
    titles = (("task index", "training s (prepare + epochs)"),
              ("tasks in the stream", "mean training s per task (tasks 2+)"),
              ("task index", f"peak resident MiB during the task ({streams[0]['peak_rss_scope']})"))
    for ax, (xl, yl) in zip(axes, titles, strict=True):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl, fontsize=8)
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"PaSTe-MCUNet, fixed replay budget {streams[0]['budget_bytes']:,} B", fontsize=9)
    return save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="2,4,8", help="stream lengths, comma-separated")
    ap.add_argument("--strategies", default=",".join(STRATEGIES),
                    help=f"comma list of {', '.join(STRATEGIES)}")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--train", type=int, default=24, help="synthetic training images per task")
    ap.add_argument("--test", type=int, default=6,
                    help="synthetic good test images per task (and about as many defective)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--budget", type=int, default=2_460_000,
                    help="replay byte budget, the same for every stream")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default=os.environ.get("EDGEAD_WEIGHTS_DIR"))
    ap.add_argument("--out", "--out-dir", dest="out_dir", type=Path, default=RESULTS, help="where scaling[_TAG].json/.csv/.png go")
    ap.add_argument("--tag", default="")
    ap.add_argument("--quick", action="store_true", help="64 px, 8 images, 1 epoch, 2 tasks (for tests)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # one stream, run by run_in_subprocess
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(run_worker(json.loads(a.worker))), flush=True)
        return 0
    if a.quick:
        a.tasks, a.image_size, a.train, a.test, a.epochs, a.budget = "2", 64, 8, 4, 1, 100_000
        a.tag = a.tag or "quick"
    try:
        counts = sorted({int(t) for t in a.tasks.split(",") if t.strip()})
    except ValueError:
        raise EdgeadError(f"--tasks {a.tasks!r}: expected stream lengths such as 2,4,8") from None
    strategies = [s.strip() for s in a.strategies.split(",") if s.strip()]
    if not counts or counts[0] < 1 or not strategies or any(s not in STRATEGIES for s in strategies):
        raise EdgeadError(f"--tasks {a.tasks!r} / --strategies {a.strategies!r}: expected lengths >= 1 and "
                          f"strategies among {', '.join(STRATEGIES)}")
    meta = header(argv)
    load_start = os.getloadavg()  # other jobs on the machine slow every timing: record how busy it was
    streams = []
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as td:
        from edgead.data.synth import generate_dataset

        names = task_names(counts[-1])
        data = generate_dataset(Path(td) / "data", names, seed=a.seed, image_size=a.image_size,
                                n_train=a.train, n_test=a.test)
        for n in counts:
            for strategy in strategies:
                spec = {"data": str(data), "tasks": names[:n], "strategy": strategy,
                        "image_size": a.image_size, "epochs": a.epochs, "seed": a.seed, "budget": a.budget,
                        "weights": a.weights,
                        "out": str(Path(td) / f"run_{strategy}_{n}")}
                s = run_in_subprocess(spec)
                streams.append(s)
                per = ", ".join(f"{t['train_s']:.2f}" for t in s["per_task"])
                print(f"{strategy:18s} {n:3d} tasks: {s['wall_s']:.0f} s, training s per task {per}",
                      flush=True)
    rows = summarize(streams)
    print_table(rows, SUMMARY_COLS, digits=2)
    checks = expectations(streams, rows)
    tag = f"_{a.tag}" if a.tag else ""
    stem = a.out_dir / f"scaling{tag}"
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k != "worker"}
    write_json(Path(f"{stem}.json"), {
        **meta, "settings": settings, "task_names": task_names(counts[-1]),
        "notes": NOTES,
        "summary": rows, "streams": streams, "load_average": {"start": load_start, "end": os.getloadavg()},
        "checks": checks})
    write_csv(Path(f"{stem}.csv"), [{"strategy": s["strategy"], "n_tasks": s["n_tasks"],
                                     **{k: v for k, v in t.items() if k != "buffer_samples"},
                                     "buffer_samples": sum(t["buffer_samples"].values())}
                                    for s in streams for t in s["per_task"]])
    plot(streams, rows, Path(f"{stem}.png"))
    print(f"wrote {stem}.json, .csv and .png")
    return 0


if __name__ == "__main__":
    run_as_script(main)
