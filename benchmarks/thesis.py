"""The seed thesis's protocol: its table's rows over the ten MVTec AD objects, measured here.

Rows (docs/thesis.md): STFPM-ResNet18 replay, STFPM-MCUNet replay, PaSTe fine-tuning, PaSTe
replay, PaSTe compressed replay (fp32), and compressed replay with 8-bit (the thesis's per-tensor scheme,
int8-tensor) and PCA (98% variance). Thesis configuration: levels [6,10,14], bootstrap 5, 256 px, a
replay memory of 100 samples. Writes results.json per row, thesis_table.json and thesis_table.md.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchkit import run_as_script
from edgead.cl.config import ReplayConfig
from edgead.cl.runner import run_stream
from edgead.data import MVTEC_THESIS_ORDER, TaskStream
from edgead.engine.trainer import TrainConfig
from edgead.models.teacher_student import DetectorConfig
from firmware_sim.atomic import atomic_write_json, atomic_write_text

MB = 1e6  # the thesis's "MB" is 10^6 bytes


@dataclass(frozen=True)
class Row:
    key: str
    framework: str
    backbone: str
    strategy: str
    codec: str | None = None
    label: str = ""


ROWS = (
    Row("stfpm-resnet18-replay", "stfpm", "resnet18", "replay", label="STFPM ResNet18 Replay"),
    Row("stfpm-mcunet-replay", "stfpm", "mcunet-in3", "replay", label="STFPM MCUNet Replay"),
    Row("paste-finetune", "paste", "mcunet-in3", "finetune", label="PaSTe MCUNet Fine-tuning"),
    Row("paste-replay", "paste", "mcunet-in3", "replay", label="PaSTe MCUNet Replay"),
    Row("paste-compressed", "paste", "mcunet-in3", "compressed-replay", "fp32", "PaSTe MCUNet Compressed replay"),
    Row("paste-compressed-int8", "paste", "mcunet-in3", "compressed-replay", "int8-tensor",
        "PaSTe Compressed replay 8-bit"),
    Row("paste-compressed-pca", "paste", "mcunet-in3", "compressed-replay", "pca:0.98:fp32",
        "PaSTe Compressed replay PCA"),
)
TABLE_METRICS = (("image_auroc", "image AUROC"), ("image_f1", "image F1"), ("pixel_auroc", "pixel AUROC"),
                 ("pixel_f1", "pixel F1"), ("pixel_ap", "pixel PR-AUC"), ("aupro", "AUPRO"))


def run_thesis(mvtec: Path, out: Path | None = None, *, rows: tuple[str, ...] | None = None,
               tasks: tuple[str, ...] = MVTEC_THESIS_ORDER, epochs: int = 20, image_size: int = 256,
               memory_size: int = 100, seed: int = 0, weights_dir: str | None = None, log=print) -> dict:
    out = Path(out or tempfile.mkdtemp(prefix="edgead-thesis-"))
    chosen = [r for r in ROWS if rows is None or r.key in rows]
    stream = TaskStream(mvtec, list(tasks))  # checks every category before anything trains
    results = {}
    for row in chosen:
        log(f"== {row.label}")
        det = DetectorConfig.defaults(row.framework, row.backbone, image_size=image_size)
        weights = None
        if weights_dir is not None:
            from edgead.models.backbones.registry import get_backbone_spec

            weights = str(Path(weights_dir) / get_backbone_spec(row.backbone).weights.filename)
        replay = ReplayConfig(row.strategy, row.codec, memory_size=memory_size)
        res = run_stream(stream, det, TrainConfig(epochs=epochs, seed=seed, progress=False), replay, out / row.key,
                         weights=weights, log=log, resume=(out / row.key / "state.json").is_file())
        results[row.key] = res
    table = thesis_table(chosen, results)
    atomic_write_json(out / "thesis_table.json", table)
    atomic_write_text(out / "thesis_table.md", table_markdown(table))
    return table


def thesis_table(rows, results: dict) -> dict:
    cols = []
    for row in rows:
        r = results[row.key]
        m = r["metrics"]
        col = {"row": row.key, "label": row.label, "framework": row.framework, "backbone": row.backbone,
               "strategy": row.strategy, "codec": row.codec}
        for key, _ in TABLE_METRICS:
            col[key] = m[key]["final_average"]
        col["architecture_memory_MB"] = r["memory"]["architecture_bytes"]["fp32"] / MB
        col["additional_memory_MB"] = r["memory"]["additional_bytes"] / MB
        col["additional_bytes"] = r["memory"]["additional_bytes"]
        col["average_forgetting_relative_pixel_f1"] = m["pixel_f1"]["forgetting_relative"]
        col["average_forgetting_relative_image_auroc"] = m["image_auroc"]["forgetting_relative"]
        cols.append(col)
    return {"tasks": results[rows[0].key]["tasks"] if rows else [], "columns": cols}


def table_markdown(table: dict) -> str:
    def f(v, nd=2):
        return "n/a" if v is None else f"{v:.{nd}f}"

    cols = table["columns"]
    lines = ["| | " + " | ".join(c["label"] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for key, name in TABLE_METRICS:
        lines.append(f"| {name} | " + " | ".join(f(c[key]) for c in cols) + " |")
    lines.append("| architecture memory MB (fp32) | " + " | ".join(f(c["architecture_memory_MB"]) for c in cols) + " |")
    lines.append("| additional memory MB | " + " | ".join(f(c["additional_memory_MB"]) for c in cols) + " |")
    lines.append("| average forgetting (relative, pixel F1) | "
                 + " | ".join(f(c["average_forgetting_relative_pixel_f1"]) for c in cols) + " |")
    return "\n".join(lines) + f"\n\nTasks, in order: {', '.join(table['tasks'])}. MB = 10^6 bytes.\n"


def main(argv: list[str] | None = None) -> int:
    """`python benchmarks/thesis.py --mvtec PATH [...]` (also `edgead bench thesis`): prints the table."""
    import argparse

    p = argparse.ArgumentParser(description="The thesis table's rows over the ten MVTec AD objects, in the "
                                "thesis order.")
    p.add_argument("--mvtec", required=True, type=Path, help="MVTec AD root.")
    p.add_argument("--out", type=Path, default=None, help="Folder for the runs and the table (default: a temp dir).")
    p.add_argument("--rows", default=None, help="Comma-separated row keys (default: all).")
    p.add_argument("--tasks", default=None, help="Comma-separated categories (default: the thesis order).")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--memory-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights-dir", default=None, help="Folder with the backbones' ImageNet weight files.")
    p.add_argument("--quick", action="store_true", help="Smoke run: 1 epoch, 64 px, 10 samples.")
    a = p.parse_args(argv)
    if a.quick:
        a.epochs, a.image_size, a.memory_size = 1, 64, 10
    table = run_thesis(a.mvtec, a.out, rows=tuple(a.rows.split(",")) if a.rows else None,
                       tasks=tuple(a.tasks.split(",")) if a.tasks else MVTEC_THESIS_ORDER, epochs=a.epochs,
                       image_size=a.image_size, memory_size=a.memory_size, seed=a.seed, weights_dir=a.weights_dir,
                       log=lambda m: print(m, file=sys.stderr))
    print(table_markdown(table))
    return 0


if __name__ == "__main__":
    run_as_script(main)
