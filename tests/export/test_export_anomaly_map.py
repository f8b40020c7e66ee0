"""The device's numpy anomaly map equals the torch definition (edgead.models.anomaly_map)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgead.models import anomaly_map as torch_map
from firmware_sim import anomaly_map as np_map
from firmware_sim.quantization import dequantize


@pytest.mark.parametrize("out_size,shapes", [
    (64, [(24, 8, 8), (40, 4, 4), (96, 2, 2)]),
    (256, [(24, 32, 32), (40, 16, 16), (96, 8, 8)]),
    (50, [(8, 13, 13), (16, 7, 7)]),  # non-integer scale factors
    (16, [(4, 16, 16), (4, 32, 32)]),  # identity and downsampling
])
def test_numpy_map_equals_torch(out_size, shapes):
    rng = np.random.default_rng(out_size)
    n = 3
    teacher = [rng.normal(size=(n, *s)).astype(np.float32) for s in shapes]
    # Students close to the teachers, as after training, so the product of levels spans many decades.
    student = [(t + rng.normal(scale=rng.uniform(0.05, 1.0), size=t.shape)).astype(np.float32) for t in teacher]
    want = torch_map.anomaly_map([torch.from_numpy(t) for t in teacher], [torch.from_numpy(s) for s in student],
                                 out_size).numpy()
    got = np_map.anomaly_map(teacher, student, out_size)
    assert got.shape == want.shape == (n, out_size, out_size)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(np_map.image_score(got), torch_map.image_score(torch.from_numpy(want)).numpy(),
                               rtol=1e-5)
    # The same in the TFLite layout (channels last).
    nhwc = np_map.anomaly_map([t.transpose(0, 2, 3, 1) for t in teacher],
                              [s.transpose(0, 2, 3, 1) for s in student], out_size, layout="NHWC")
    np.testing.assert_allclose(nhwc, got, rtol=1e-6)


def test_zero_features_follow_torch_normalize():
    # F.normalize divides by max(norm, 1e-12): an all-zero feature vector stays zero.
    t = np.zeros((1, 4, 2, 2), np.float32)
    s = np.ones((1, 4, 2, 2), np.float32)
    want = torch_map.anomaly_map([torch.from_numpy(t)], [torch.from_numpy(s)], 4).numpy()
    np.testing.assert_allclose(np_map.anomaly_map([t], [s], 4), want, rtol=1e-6)


def test_dequantize_per_tensor_and_per_channel():
    q = np.array([[-128, 0, 127]], np.int8)
    np.testing.assert_allclose(dequantize(q, 0.5, -128), [[0.0, 64.0, 127.5]])
    q2 = np.array([[1, 2], [3, 4]], np.int8)
    np.testing.assert_allclose(dequantize(q2, [1.0, 2.0], [0, 1], axis=0), [[1, 2], [4, 6]])


def test_bad_layout_and_levels():
    with pytest.raises(ValueError):
        np_map.anomaly_map([np.zeros((1, 2, 2, 2))], [np.zeros((1, 2, 2, 2))], 4, layout="HWC")
    with pytest.raises(ValueError):
        np_map.anomaly_map([np.zeros((1, 2, 2, 2))], [], 4)


# -- score post-processing: host == export fidelity check == device, on one exported checkpoint -----------------

SCORE = "blur:2,topk:0.05"


@pytest.fixture(scope="module")
def blurred_export(tmp_path_factory):
    """A 64 px PaSTe-MCUNet run trained with --score blur:2,topk:0.05 (1 epoch), exported as ONNX and TFLite."""
    from edgead.export.pipeline import ExportOptions, export_run

    from edgead.cl.config import ReplayConfig
    from edgead.cl.runner import run_stream
    from edgead.data import TaskStream
    from edgead.data.synth import generate_dataset
    from edgead.engine.trainer import TrainConfig
    from edgead.models.teacher_student import DetectorConfig
    from tests.conftest import MCUNET_DIR

    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEAD_WEIGHTS_DIR", str(MCUNET_DIR))
    root = tmp_path_factory.mktemp("post")
    data = generate_dataset(root / "data", ["nut"], seed=0, image_size=64, n_train=12, n_test=6)
    det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=64, score=SCORE)
    with pytest.warns(UserWarning, match="optimiser steps"):  # 2 steps: warned about, fine for this check
        run_stream(TaskStream(data, ["nut"]), det, TrainConfig(epochs=1, batch_size=8, progress=False),
                   ReplayConfig(), root / "run", log=lambda m: None)
    export_run(root / "run", root / "art", ExportOptions(formats=["onnx", "tflite-int8"], calibration=8,
                                                          allow_drift=True))
    mp.undo()
    return root / "run", root / "art"


@pytest.mark.slow
def test_post_processing_is_the_same_on_host_export_and_device(blurred_export):
    import json

    from edgead.export.pipeline import load_run

    from edgead.engine.views import predict_split
    from edgead.metrics import image_auroc
    from firmware_sim.device import Device
    from firmware_sim.manifest import load_manifest

    run_dir, art = blurred_export
    post = np_map.ScorePost.parse(SCORE)
    manifest = load_manifest(art)
    assert manifest.score_post == post and manifest.data["detector"]["score"] == SCORE  # recorded for the device
    run = load_run(run_dir, None)
    assert run.model.config.score == SCORE  # and in the checkpoint
    from edgead.data import TaskStream

    test = TaskStream(json.loads((run_dir / "results.json").read_text())["config"]["data_root"], ["nut"]
                      ).tasks[0].load(run.pre, val_fraction=0.1, seed=0).test
    host_maps, host = predict_split(run.model, test, run.pre)
    # The host's scores are the post-processing of its maps, not their maximum.
    np.testing.assert_allclose(host, post.score(host_maps), rtol=1e-6)
    assert not np.allclose(host, host_maps.reshape(len(host), -1).max(axis=1))
    # The device (fp32 ONNX: the same arithmetic up to float rounding) scores like the host, and decides with
    # the threshold the host calibrated on these scores.
    dev = Device(art, format="onnx")
    assert dev.threshold == pytest.approx(run.model.calibration.threshold)
    results = [dev.infer(img) for img in test.images]
    device = np.array([r.score for r in results])
    np.testing.assert_allclose(device, host, rtol=1e-3, atol=1e-6 * host.max())
    for r in results[:2]:
        assert r.score == pytest.approx(float(post.score(r.map[None])[0]), rel=1e-6)
    # The export's fidelity check measured the same scores: float model = host, format = device.
    fid = json.loads((art / "fidelity.json").read_text())["formats"]
    for path in ("trunk+head", "full"):
        assert fid["onnx"][path]["image_auroc"]["float"] == pytest.approx(image_auroc(test.labels, host))
        assert fid["onnx"][path]["image_auroc"]["format"] == pytest.approx(image_auroc(test.labels, device), abs=1e-9)
    # int8 on the device: the same post-processing, close scores.
    int8 = np.array([Device(art, format="tflite-int8").infer(img).score for img in test.images[:4]])
    assert np.corrcoef(int8, host[:4])[0, 1] > 0.9
