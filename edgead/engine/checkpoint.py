"""Checkpoints: one self-contained file per task (config, preprocessing, all weights, calibration).

Saved atomically, loaded with `torch.load(weights_only=True)`: no arbitrary objects are unpickled.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path

import torch

from edgead.errors import EdgeadError
from edgead.models.teacher_student import Calibration, DetectorConfig, TeacherStudent
from firmware_sim.atomic import atomic_write_bytes
from firmware_sim.preprocess import Preprocess

FORMAT = "edgead-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, model: TeacherStudent, pre: Preprocess, **meta) -> Path:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "preprocess": pre.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "calibration": asdict(model.calibration),
        "meta": meta,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def checkpoint_bytes(model: TeacherStudent) -> int:
    """Bytes of the tensors a checkpoint of ``model`` stores (the file is this plus a few kB)."""
    return sum(v.numel() * v.element_size() for v in model.state_dict().values())


def load_checkpoint(path: str | Path, expect_model: str | None = None,
                    expect_backbone: str | None = None) -> tuple[TeacherStudent, Preprocess, dict]:
    path = Path(path)
    if not path.is_file():
        raise EdgeadError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or foreign files
        raise EdgeadError(f"{path}: not a readable edgead checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EdgeadError(f"{path}: not an edgead checkpoint (no '{FORMAT}' marker)")
    if payload.get("version") != VERSION:
        raise EdgeadError(f"{path}: checkpoint version {payload.get('version')} not supported (expected {VERSION})")
    cfg = DetectorConfig.from_dict(payload["config"])
    for want, have, what in ((expect_model, cfg.model, "model"), (expect_backbone, cfg.backbone, "backbone")):
        if want is not None and want != have:
            raise EdgeadError(f"{path}: checkpoint is {what} {have!r}, not the requested {want!r}")
    model = TeacherStudent(cfg, load_teacher=False)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        raise EdgeadError(f"{path}: weights do not match the {cfg.model}/{cfg.backbone} architecture: "
                          f"{str(e).splitlines()[0]}") from None
    model.calibration = Calibration.from_dict(payload.get("calibration", {}))
    model.eval()
    return model, Preprocess.from_dict(payload["preprocess"]), payload.get("meta", {})
