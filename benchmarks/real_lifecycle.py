"""A product's life on the real stream: `bench_real_stream.py --lifecycle` (see that script for the data).

The same stream twice, same method, budget and seed:

* **single call**: `run_stream` over every product at once (what `edgead train --tasks a,b,c,d,e` does);
* **lifecycle**: `edgead train` on the first product, then one `learn_run` per later product (what
  `edgead learn --run RUN --data ROOT --tasks NEXT` does, months apart), and in the middle one device hand-off:
  the latents a device kept of an earlier product (its normal frames through the frozen trunk, in the device's
  buffer format, named by product) are merged with `merge_device_buffer` (`edgead learn --device-buffer`).

Without the hand-off both end with identical numbers (tests/host/test_learn.py); the hand-off changes one
product's share of the memory, so the bar is the final image AUROC within 0.005 of the single call. Writes
OUT_DIR/real_lifecycle[_TAG].json: both runs' final averages and matrices, the memory each product holds after
each version, the time of each call, and the check.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from benchkit import check, header, write_json

BAR = 0.005


def device_buffer(run: Path, data: str, product: str, path: Path, frames: int = 8, seed: int = 5) -> Path:
    """What a device that inspects ``product`` keeps: trunk latents of its normal frames, named by product."""
    from edgead.data import TaskStream
    from edgead.engine.checkpoint import load_checkpoint
    from edgead.engine.tensors import compute_latents
    from firmware_sim.replay_buffer import ReplayBuffer

    last = sorted((run / "checkpoints").glob("task_*.pt"))[-1]
    model, pre, _ = load_checkpoint(last)
    images = TaskStream(data, [product]).tasks[0].load(pre, val_fraction=0.1, seed=seed).train.images[:frames]
    z = compute_latents(model, images, pre).cpu().numpy()
    buf = ReplayBuffer(4 * 1024 * 1024, "int8-channel", seed=seed, latent_shape=z.shape[1:])
    buf.name_task(0, product)
    for k, x in enumerate(z):
        buf.add(0, x, sample_id=k)
    buf.save(path)
    return path


def _setup(a, method: str, budget: int | None):
    from edgead.cl.config import ReplayConfig
    from edgead.engine.trainer import TrainConfig
    from edgead.models.teacher_student import DetectorConfig

    det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=a.image_size)
    train = TrainConfig(epochs=a.epochs, seed=int(a.seeds.split(",")[0]), progress=False,
                        **({"threshold_rule": a.threshold_rule} if a.threshold_rule else {}))
    strategy = method if method in ("finetune", "joint", "replay") else "compressed-replay"
    replay = ReplayConfig(strategy, None if strategy != "compressed-replay" else method,
                          budget if strategy in ("replay", "compressed-replay") else None)
    return det, train, replay


def _summary(res: dict, seconds: list[float]) -> dict:
    m, bacc = res["metrics"], res["deployed"]["balanced_accuracy"]
    return {"deployed_bacc": bacc["final_average"], "deployed_bacc_per_task": bacc["per_task"],
            "image_auroc": m["image_auroc"]["final_average"], "pixel_auroc": m["pixel_auroc"]["final_average"],
            "img_forget_abs": m["image_auroc"]["forgetting_absolute"],
            "image_auroc_matrix": m["image_auroc"]["matrix"], "memory_after_task": res["memory"].get("after_task"),
            "total_bytes": res["memory"]["total_bytes"], "versions": res.get("versions"), "call_seconds": seconds}


def run_lifecycle(a, tasks: list[str], method: str, budget: int | None, work: Path, log=print) -> dict:
    """Both runs of the comparison; returns {"single": ..., "lifecycle": ..., "handoff": ...}."""
    from bench_real_stream import ResearchThresholds
    from drift_probe import DriftProbe
    from edgead.cl.device_merge import merge_device_buffer
    from edgead.cl.runner import learn_run, run_stream
    from edgead.data import TaskStream

    det, train, replay = _setup(a, method, budget)
    quiet = {"log": lambda m: None}
    probe = DriftProbe(seed=train.seed)
    t0 = time.perf_counter()
    single = run_stream(TaskStream(a.data, tasks, max_train=a.max_train), det, train, replay, work / "single",
                        weights=a.weights, command="bench_real_stream --lifecycle (single call)",
                        plugins=[ResearchThresholds(), probe], **quiet)
    single_s = [time.perf_counter() - t0]
    run, seconds = work / "lifecycle", []
    middle = len(tasks) // 2
    handoff = {"after_task": middle, "product": tasks[middle - 1]}
    for k, task in enumerate(tasks):
        t0 = time.perf_counter()
        if k == 0:
            res = run_stream(TaskStream(a.data, [task], max_train=a.max_train), det, train, replay, run,
                             weights=a.weights, command="bench_real_stream --lifecycle (train)", **quiet)
        else:
            res = learn_run(run, TaskStream(a.data, [task], max_train=a.max_train),
                            command=f"bench_real_stream --lifecycle (learn {task})", **quiet)
        seconds.append(time.perf_counter() - t0)
        log(f"  {task}: image AUROC {res['metrics']['image_auroc']['final_average']:.4f} ({seconds[-1]:.0f} s)")
        if k + 1 == middle and replay.strategy == "compressed-replay":
            buf = device_buffer(run, a.data, handoff["product"], work / "device.edgeadrb")
            t0 = time.perf_counter()
            res = merge_device_buffer(run, buf, command="bench_real_stream --lifecycle (device hand-off)", **quiet)
            seconds.append(time.perf_counter() - t0)
            handoff["memory_after"] = res["memory"]["per_task"]
    return {"single": _summary(single, single_s), "lifecycle": _summary(res, seconds), "handoff": handoff,
            "probe": probe.records}


def lifecycle_main(a, argv, tasks: list[str], out_dir: Path, name: str) -> int:
    """`--lifecycle`: one method (the first of --methods), the first budget, the first seed."""
    from firmware_sim.sizes import parse_size

    method = a.methods.split(",")[0].strip()
    budget = parse_size(a.budgets.split(",")[0].strip()) if a.budgets else None
    work = Path(tempfile.mkdtemp(prefix="lifecycle_", dir=a.sweep_dir))
    try:
        res = run_lifecycle(a, tasks, method, budget, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    probe = res.pop("probe")
    write_json(out_dir / f"drift_probe_{name}.json", {**header(argv), "args": vars(a), "tasks": tasks,
                                                      "method": method, "budget_bytes": budget, "records": probe})
    s, life = res["single"]["image_auroc"], res["lifecycle"]["image_auroc"]
    checks = [check(f"lifecycle ({len(tasks)} calls + a device hand-off) ends within {BAR} image AUROC of the "
                    "single call", abs(life - s) <= BAR, f"{life:.4f} vs {s:.4f}")]
    write_json(out_dir / f"{name}.json", {**header(argv), "args": vars(a), "tasks": tasks, "method": method,
                                          "budget_bytes": budget, **res, "difference": life - s, "checks": checks})
    print(f"wrote {out_dir / name}.json")
    return 0 if checks[0]["pass"] or a.quick else 1  # --quick: generated data, 1 epoch; numbers are no target
