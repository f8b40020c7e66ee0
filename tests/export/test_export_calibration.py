"""Calibration uses what exists (a warning below 8 images), and the fidelity gate's refusal names the format,
the measured drop against its limit, and what to try."""

from __future__ import annotations

import numpy as np
import pytest
from edgead.export.drift_advice import ExportContext, auroc_step, drift_message
from edgead.export.pipeline import MIN_CALIBRATION, select_calibration

from edgead.errors import EdgeadError


def _pool(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1).repeat(4, axis=1)


def test_calibration_uses_all_there_is_with_a_warning():
    warnings: list[str] = []
    got = select_calibration(_pool(5), 32, seed=0, warn=warnings.append)
    assert sorted(got[:, 0, 0, 0].tolist()) == [0, 1, 2, 3, 4]  # every image, each once
    assert any("only 5 normal training images" in w and "all 5" in w for w in warnings)
    assert any(f"fewer than {MIN_CALIBRATION}" in w for w in warnings)


def test_calibration_enough_images_no_warning_and_seeded():
    warnings: list[str] = []
    a = select_calibration(_pool(40), 16, seed=3, warn=warnings.append)
    b = select_calibration(_pool(40), 16, seed=3)
    assert len(a) == 16 and len(set(a[:, 0, 0, 0].tolist())) == 16 and np.array_equal(a, b)
    assert warnings == []
    few: list[str] = []
    assert len(select_calibration(_pool(40), 3, seed=3, warn=few.append)) == 3
    assert len(few) == 1 and "3 image(s)" in few[0]


def test_calibration_refuses_nothing_to_calibrate_with():
    with pytest.raises(EdgeadError, match="--calibration 0"):
        select_calibration(_pool(5), 0, seed=0)
    with pytest.raises(EdgeadError, match="no normal training images"):
        select_calibration(_pool(0), 8, seed=0)


def _row(metric, ref, got, limit):
    return {"metric": metric, "float": ref, "format": got, "drop": ref - got, "limit": limit}


def test_drift_message_names_format_drop_limit_and_remedies():
    ctx = ExportContext(calibration=8, available=120, tflite_weights="mixed", test_normal=40, test_anomalous=60)
    msg = drift_message({"tflite-int8": {"trunk+head": [_row("pixel AUROC", 0.95, 0.92, 0.01)]}}, ctx)
    assert "tflite-int8 (trunk+head): pixel AUROC fell 0.0300 (0.9500 -> 0.9200), limit 0.0100" in msg
    assert "--calibration 32 (this export used 8 of 120 available)" in msg
    assert "--tflite-weights per-channel (this export used mixed" in msg
    assert "--allow-drift" in msg
    assert "test split is small" not in msg  # 0.03 is 72 pair swaps out of 2400: not noise-sized


def test_drift_message_onnx_int8_and_small_test_split():
    ctx = ExportContext(calibration=11, available=11, tflite_weights="per-channel", test_normal=6,
                        test_anomalous=6)
    step = auroc_step(ctx)
    assert step == pytest.approx(1 / 36)
    msg = drift_message({"onnx-int8": {"full": [_row("image AUROC", 0.80, 0.80 - 2 * step, 0.02)]}}, ctx)
    assert "onnx-int8 (full): image AUROC fell 0.0556" in msg
    assert "from all 11 normal training images" in msg and "--calibration" not in msg.split("Try:")[1][:60]
    assert "--format tflite-int8" in msg
    assert "one swapped pair moves image AUROC by 0.0278, so a drop of 0.0556 is 2 swapped pair(s)" in msg
    assert "--tflite-weights" not in msg  # not a TFLite format
