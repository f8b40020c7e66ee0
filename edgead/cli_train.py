"""`edgead info`, `edgead train`, `edgead eval`."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from edgead.errors import EdgeadError


def _levels(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise EdgeadError(f"levels {text!r}: expected comma-separated stage indices such as 6,10,14") from None


def detector_options(f):
    for opt in reversed([
        click.option("--model", type=click.Choice(["stfpm", "paste"]), default="paste", show_default=True),
        click.option("--backbone", default="mcunet-in3", show_default=True,
                     help="mcunet-in3, mobilenet_v2 or resnet18."),
        click.option("--levels", default=None, help="Feature levels (stage indices), e.g. 6,10,14."),
        click.option("--bootstrap", type=int, default=None, help="Last shared stage (PaSTe)."),
        click.option("--image-size", type=int, default=256, show_default=True),
    ]):
        f = opt(f)
    return f


def _detector(model, backbone, levels, bootstrap, image_size, pretrained=True):
    from edgead.models.teacher_student import DetectorConfig

    return DetectorConfig.defaults(model, backbone, levels=_levels(levels), bootstrap=bootstrap,
                                   image_size=image_size, pretrained=pretrained)


@click.command()
@detector_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(model, backbone, levels, bootstrap, image_size, as_json):
    """Parameters (teacher, student, shared once), bytes, MACs, latent shape and int8 peak activation."""
    from edgead.models.cost import detector_cost
    from edgead.models.teacher_student import TeacherStudent

    cfg = _detector(model, backbone, levels, bootstrap, image_size, pretrained=False)
    d = detector_cost(TeacherStudent(cfg, load_teacher=False))
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    p = d["params"]
    click.echo(f"{cfg.model} / {cfg.backbone}  levels {list(cfg.levels)}  bootstrap {cfg.bootstrap}  "
               f"{image_size} px")
    click.echo(f"  params: teacher {p['teacher']:,}  student {p['student']:,}  shared {p['shared']:,}  "
               f"total {p['total']:,}")
    click.echo(f"  architecture: {d['architecture_bytes']['fp32']:,} B fp32 ({d['architecture_mib_fp32']:.3f} MiB), "
               f"{d['architecture_bytes']['int8']:,} B int8")
    click.echo(f"  MACs/image: {d['macs']['total'] / 1e6:.1f}M (trunk {d['macs']['trunk'] / 1e6:.1f}M, "
               f"teacher tail {d['macs']['teacher_tail'] / 1e6:.1f}M, student tail {d['macs']['student_tail'] / 1e6:.1f}M)")
    click.echo(f"  latent: {d['latent_shape']}  peak activation (int8): {d['peak_activation_bytes_int8']:,} B")


@click.command()
@click.option("--data", "root", required=True, type=click.Path(path_type=Path), help="Dataset root (MVTec layout).")
@click.option("--tasks", default=None, help="Comma-separated categories in order (default: all).")
@detector_options
@click.option("--strategy", type=click.Choice(["finetune", "joint", "replay", "compressed-replay"]),
              default="finetune", show_default=True)
@click.option("--codec", default=None, help="Latent codec for compressed-replay: fp32, fp16, int8-tensor, "
              "int8-channel, int4-channel, pca[:VAR] (default fp32).")
@click.option("--budget", default=None, help="Replay memory in bytes: 2.46MB, 500kB, 1.5MiB, 100000B.")
@click.option("--memory-size", default=100, show_default=True, help="Replay samples when no --budget.")
@click.option("--policy", type=click.Choice(["random", "coverage"]), default="random", show_default=True)
@click.option("--replay-ratio", default=0.5, show_default=True, help="Fraction of each batch replayed.")
@click.option("--epochs", default=20, show_default=True)
@click.option("--steps", type=int, default=None,
              help="Training budget in optimiser steps per task instead of --epochs (same for small and large "
                   "categories).")
@click.option("--resize", type=click.Choice(["squash", "pad", "tile"]), default="squash", show_default=True,
              help="Non-square images: squash to a square, pad (letterbox, padding left out of pixel metrics) "
                   "or tile (square tiles, score = max). Recorded in checkpoints and exports.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=0.4, show_default=True)
@click.option("--momentum", default=0.9, show_default=True)
@click.option("--weight-decay", default=1e-4, show_default=True)
@click.option("--select-every", default=1, show_default=True,
              help="Epochs between model-selection checks on held-out normals (0: keep the last epoch).")
@click.option("--val-fraction", default=0.1, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--weights", default=None, type=click.Path(path_type=Path), help="Backbone ImageNet weights file.")
@click.option("--no-pretrained", is_flag=True, help="Random teacher (experiments only).")
@click.option("--device-buffer", default=None, type=click.Path(path_type=Path),
              help="Start compressed replay from a buffer collected on a device.")
@click.option("--device-trunk", default=None, type=click.Path(path_type=Path),
              help="Keep latents as a device does: this PaSTe export's int8 TFLite trunk output (--codec int8-device).")
@click.option("--resume", is_flag=True, help="Continue a killed run from its last completed task.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images with a warning instead of stopping.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(root, tasks, model, backbone, levels, bootstrap, image_size, strategy, codec, budget, memory_size, policy,
          replay_ratio, epochs, steps, resize, batch_size, lr, momentum, weight_decay, select_every, val_fraction, seed,
          device, weights, no_pretrained, device_buffer, device_trunk, resume, skip_bad, out, quiet):
    """Train over one task or a stream of tasks; writes checkpoints and OUT/results.json."""
    from edgead.cl.runner import run_stream, validate_strategy
    from edgead.data import TaskStream
    from edgead.engine.trainer import TrainConfig
    from firmware_sim.sizes import parse_size

    det = _detector(model, backbone, levels, bootstrap, image_size, pretrained=not no_pretrained)
    validate_strategy(strategy, det, codec, device_buffer=device_buffer, device_trunk=device_trunk)
    budget_bytes = parse_size(budget) if budget is not None else None
    stream = TaskStream(root, [t.strip() for t in tasks.split(",")] if tasks else None)
    cfg = TrainConfig(epochs=epochs, steps=steps, resize=resize, batch_size=batch_size, lr=lr, momentum=momentum,
                      weight_decay=weight_decay,
                      seed=seed, device=device, replay_ratio=replay_ratio, select_every=select_every,
                      val_fraction=val_fraction, progress=not quiet)
    res = run_stream(stream, det, cfg, out, strategy=strategy, codec=codec, budget_bytes=budget_bytes,
                     memory_size=memory_size, policy=policy, weights=weights, resume=resume, skip_bad=skip_bad,
                     device_buffer=device_buffer, device_trunk=device_trunk, command="edgead " + shlex.join(sys.argv[1:]),
                     log=lambda m: click.echo(m, err=True))
    print_table(res)


def print_table(res: dict) -> None:
    from edgead.cl.results import METRICS

    m = res["metrics"]
    n_tasks = res.get("completed_tasks", len(res.get("tasks", [])))
    click.echo(f"{'metric':<12} {'final avg':>10} {'forget(rel)':>12} {'forget(abs)':>12}")
    for name in METRICS:
        e = m[name]
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        # An average over fewer tasks (image-level tasks have no pixel metrics) says so.
        k = e.get("final_average_tasks", n_tasks)
        over = f"  (over {k} of {n_tasks} tasks)" if e["final_average"] is not None and k < n_tasks else ""
        click.echo(f"{name:<12} {fmt(e['final_average']):>10} {fmt(e['forgetting_relative']):>12} "
                   f"{fmt(e['forgetting_absolute']):>12}{over}")
    mem = res["memory"]
    click.echo(f"architecture {mem['architecture_bytes']['fp32']:,} B fp32; additional memory "
               f"{mem['additional_bytes']:,} B")


@click.command("eval")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path))
@click.option("--task", "task_index", type=int, default=None, help="Checkpoint after this task (default: last).")
@click.option("--per-defect", is_flag=True, help="Also break the metrics down by defect type.")
def eval_cmd(run_dir: Path, task_index: int | None, per_defect: bool):
    """Recompute the test metrics of a run's checkpoint on every task it has seen."""
    from edgead.cl.results import read_results
    from edgead.data import TaskStream
    from edgead.engine.checkpoint import load_checkpoint
    from edgead.engine.evaluate import evaluate_split, per_defect_metrics

    res = read_results(run_dir)
    i = res["completed_tasks"] - 1 if task_index is None else task_index
    if not 0 <= i < res["completed_tasks"]:
        raise EdgeadError(f"--task {task_index}: this run completed tasks 0..{res['completed_tasks'] - 1}")
    model, pre, _ = load_checkpoint(run_dir / "checkpoints" / f"task_{i:02d}.pt")
    stream = TaskStream(res["config"]["data_root"], res["tasks"])
    out = {}
    for task in stream.tasks[: i + 1]:
        d = task.load(pre, val_fraction=res["config"]["train"]["val_fraction"], seed=res["config"]["train"]["seed"])
        r = evaluate_split(model, d.test, pre, return_outputs=True)
        out[task.name] = r["metrics"]
        if per_defect:
            out[task.name]["per_defect"] = per_defect_metrics(d.test, r["maps"], r["scores"])
    click.echo(json.dumps({"task_index": i, "metrics": out}, indent=2))
