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
