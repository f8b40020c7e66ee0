"""What to try when the fidelity gate refuses an export: one message naming each drifting format and path, the
measured drop against its limit, and the remedies that apply to that format and this export's settings.

Every remedy is tied to something measured or recorded: the calibration count against the normal images
available, the weight granularity (export/study_size.py measured per-tensor weights costing pixel AUROC), the
size of the test split (with few images one swapped pair of scores moves image AUROC by a visible step).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExportContext:
    """What the advice needs to know about the export that drifted."""

    calibration: int  # images used
    available: int  # normal training images there were
    tflite_weights: str  # per-channel | per-tensor | mixed
    test_normal: int  # held-out test images by label
    test_anomalous: int


def auroc_step(ctx: ExportContext) -> float | None:
    """The smallest change of image AUROC on this test split: one (normal, anomalous) pair ranked the other way."""
    pairs = ctx.test_normal * ctx.test_anomalous
    return 1.0 / pairs if pairs else None


def _remedies(fmt: str, rows: list[dict], ctx: ExportContext) -> list[str]:
    out = []
    if fmt == "onnx":
        out.append("onnx is fp32 and should track the float model closely: check that the test data is the one "
                   "the run was trained on (--data)")
    if fmt.endswith("int8"):
        if ctx.calibration < ctx.available:
            more = min(ctx.available, max(2 * ctx.calibration, 32))
            out.append(f"calibrate the int8 ranges on more normal images: --calibration {more} "
                       f"(this export used {ctx.calibration} of {ctx.available} available)")
        else:
            out.append(f"the int8 ranges came from all {ctx.available} normal training images there are; more "
                       "normal images in the run's tasks would give ranges that cover more of the test images")
    if fmt == "tflite-int8" and ctx.tflite_weights != "per-channel":
        out.append(f"--tflite-weights per-channel (this export used {ctx.tflite_weights}: per-tensor scales cost "
                   "pixel AUROC, see python -m export.study_size)")
    if fmt == "onnx-int8":
        out.append("--format tflite-int8 (its input range is pinned and its head reads the trunk's int8 latent "
                   "as is) or --format onnx (fp32, no quantisation)")
    step = auroc_step(ctx)
    image_drops = [r["drop"] for r in rows if r["metric"] == "image AUROC"]
    if step is not None and image_drops and max(image_drops) <= 3 * step + 1e-12:
        out.append(f"the test split is small ({ctx.test_normal} normal x {ctx.test_anomalous} anomalous images): "
                   f"one swapped pair moves image AUROC by {step:.4f}, so a drop of {max(image_drops):.4f} is "
                   f"{round(max(image_drops) / step)} swapped pair(s); widen --max-image-auroc-drop if that is noise")
    return out


def drift_message(drifted: dict[str, dict[str, list[dict]]], ctx: ExportContext) -> str:
    """``drifted``: {format: {path: [{'metric', 'float', 'format', 'drop', 'limit'}, ...]}} -> one message."""
    parts, tries = [], []
    for fmt, per_path in drifted.items():
        for path, rows in per_path.items():
            measured = "; ".join(f"{r['metric']} fell {r['drop']:.4f} ({r['float']:.4f} -> {r['format']:.4f}), "
                                 f"limit {r['limit']:.4f}" for r in rows)
            parts.append(f"{fmt} ({path}): {measured}")
        for remedy in _remedies(fmt, [r for rows in per_path.values() for r in rows], ctx):
            if remedy not in tries:
                tries.append(remedy)
    tries.append("--max-image-auroc-drop / --max-pixel-auroc-drop to widen the tolerance, or --allow-drift to "
                 "publish anyway (the report goes into the artifact's fidelity.json)")
    return ("accuracy drifted past tolerance: " + " | ".join(parts) + ". Try: "
            + "; ".join(f"({i}) {t}" for i, t in enumerate(tries, 1)) + ".")
