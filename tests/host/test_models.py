"""Backbone spec and weights, STFPM / PaSTe definitions, cost figures against the paper, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgead.engine.checkpoint import load_checkpoint, save_checkpoint
from edgead.errors import EdgeadError
from edgead.models.anomaly_map import anomaly_map, st_loss
from edgead.models.backbones.mcunet import FIRST_CONV, MCUNET_IN3_BLOCKS
from edgead.models.cost import detector_cost
from edgead.models.teacher_student import DetectorConfig, TeacherStudent
from edgead.models.weights import build_backbone
from firmware_sim.preprocess import Preprocess
from tests.conftest import MCUNET_DIR


def test_mcunet_spec_matches_official_config():
    cfg = json.loads((MCUNET_DIR / "mcunet-320kb-1mb_imagenet.json").read_text())
    fc = cfg["first_conv"]
    assert (fc["in_channels"], fc["out_channels"], fc["kernel_size"], fc["stride"]) == (
        FIRST_CONV.in_ch, FIRST_CONV.out_ch, FIRST_CONV.kernel, FIRST_CONV.stride)
    assert len(cfg["blocks"]) == len(MCUNET_IN3_BLOCKS)
    for spec, block in zip(MCUNET_IN3_BLOCKS, cfg["blocks"], strict=True):
        conv = block["mobile_inverted_conv"]
        mid = conv["mid_channels"] or conv["in_channels"] * conv["expand_ratio"]
        assert (spec.in_ch, spec.out_ch, spec.kernel, spec.stride, spec.mid_ch) == (
            conv["in_channels"], conv["out_channels"], conv["kernel_size"], conv["stride"], mid)
        assert spec.residual == (block["shortcut"] is not None)


def test_mcunet_is_imagenet_trained():
    from PIL import Image
    from skimage.data import chelsea

    net = build_backbone("mcunet-in3")
    assert sum(p.numel() for p in net.parameters()) == 737_408
    x = Preprocess(image_size=176).image(Image.fromarray(chelsea()))
    with torch.no_grad():
        top = net(torch.from_numpy(x)[None]).argmax(1).item()
    assert top == 285  # Egyptian cat


def test_paper_memory_and_macs_within_two_percent():
    paste = detector_cost(TeacherStudent(DetectorConfig.defaults("paste", "mcunet-in3", image_size=224)))
    stfpm = detector_cost(TeacherStudent(DetectorConfig.defaults("stfpm", "mcunet-in3", image_size=224)))
    assert paste["params"]["total"] == 439_496 and stfpm["params"]["total"] == 462_128
    assert stfpm["architecture_mib_fp32"] == pytest.approx(1.76, rel=0.02)
    assert paste["architecture_mib_fp32"] == pytest.approx(1.68, rel=0.02)
    assert stfpm["macs"]["total"] / 1e6 == pytest.approx(224.3, rel=0.02)
    assert paste["macs"]["total"] / 1e6 == pytest.approx(156.9, rel=0.02)
    assert paste["latent_shape"] == [24, 28, 28]
    assert 0 < paste["peak_activation_bytes_int8"] < stfpm["peak_activation_bytes_int8"]


def test_config_errors():
    with pytest.raises(EdgeadError, match="unknown backbone"):
        DetectorConfig.defaults("paste", "vgg16")
    with pytest.raises(EdgeadError, match="out of range"):
        DetectorConfig.defaults("paste", "mcunet-in3", levels=(6, 10, 18))
    with pytest.raises(EdgeadError, match="bootstrap"):
        DetectorConfig.defaults("paste", "mcunet-in3", levels=(6, 10, 14), bootstrap=6)
    with pytest.raises(EdgeadError, match="unknown model"):
        DetectorConfig(model="padim")


def test_paste_shares_frozen_trunk_and_latent_path_equals_image_path():
    torch.manual_seed(0)
    model = TeacherStudent(DetectorConfig.defaults("paste", "mcunet-in3", image_size=64))
    assert all(not p.requires_grad for p in model.trunk.parameters())
    assert all(not p.requires_grad for p in model.teacher_tail.parameters())
    assert all(p.requires_grad for p in model.student_tail.parameters())
    # The student starts random: it differs from the pretrained teacher tail.
    t0, s0 = next(model.teacher_tail.parameters()), next(model.student_tail.parameters())
    assert not torch.allclose(t0, s0)
    model.train()
    assert not model.teacher_tail.training and not model.trunk.training and model.student_tail.training
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    amap, score = model.predict(x)
    amap2, score2 = model.predict_latent(model.latent(x), 64)
    assert amap.shape == (2, 64, 64) and torch.allclose(amap, amap2) and torch.allclose(score, score2)
    # the score is the configured post-processing of the map (default top-k mean; firmware_sim.anomaly_map)
    from firmware_sim.anomaly_map import ScorePost

    assert torch.allclose(score, torch.from_numpy(ScorePost.parse(model.config.score).score(amap.numpy())))


def test_loss_and_map_follow_the_definition():
    torch.manual_seed(1)
    t = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)]
    s = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)]
    expected = 0.0
    maps = []
    for a, b in zip(t, s, strict=True):
        an = a / a.norm(dim=1, keepdim=True)
        bn = b / b.norm(dim=1, keepdim=True)
        d = 0.5 * ((an - bn) ** 2).sum(1)
        expected += (d.sum((1, 2)) / (a.shape[2] * a.shape[3])).mean()
        maps.append(torch.nn.functional.interpolate(d[:, None], size=16, mode="bilinear", align_corners=False))
    assert st_loss(t, s).item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(anomaly_map(t, s, 16), (maps[0] * maps[1])[:, 0], atol=1e-6)


def test_stfpm_has_no_trunk():
    model = TeacherStudent(DetectorConfig.defaults("stfpm", "mcunet-in3", image_size=64))
    assert model.trunk is None and model.config.bootstrap is None
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model.latent(x), x)


def test_checkpoint_roundtrip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    model = TeacherStudent(DetectorConfig.defaults("paste", "mcunet-in3", image_size=64))
    model.calibration.threshold = 0.123
    pre = Preprocess(image_size=64)
    path = save_checkpoint(tmp_path / "c.pt", model, pre, task_index=0)
    back, pre2, meta = load_checkpoint(path)
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(model.predict(x)[0], back.predict(x)[0])
    assert back.calibration.threshold == 0.123 and pre2 == pre and meta["task_index"] == 0
    with pytest.raises(EdgeadError, match="checkpoint is model 'paste', not the requested 'stfpm'"):
        load_checkpoint(path, expect_model="stfpm")
    (tmp_path / "bad.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(EdgeadError, match="bad.pt: not a readable"):
        load_checkpoint(tmp_path / "bad.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["backbone"] = "mobilenet_v2"
    payload["config"]["levels"] = [4, 7, 10]
    payload["config"]["bootstrap"] = 3
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(EdgeadError, match="do not match the paste/mobilenet_v2 architecture"):
        load_checkpoint(tmp_path / "other.pt")


def test_random_teacher_warns():
    with pytest.warns(UserWarning, match="random teacher"):
        TeacherStudent(DetectorConfig.defaults("paste", "mcunet-in3", image_size=64, pretrained=False))


def test_missing_weights_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEAD_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(EdgeadError, match="--weights"):
        build_backbone("mcunet-in3", download=False)
    bad = tmp_path / "mcunet-320kb-1mb_imagenet.pth"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(EdgeadError, match="mcunet-320kb-1mb_imagenet.pth"):
        build_backbone("mcunet-in3", weights=bad, download=False)
