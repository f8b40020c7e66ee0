"""--resize squash|pad|tile: geometry (letterbox round trip, tile coverage and stitching), pixel metrics that
leave the padding out, the mode recorded in checkpoint and manifest, and the device giving the host's score for
a non-square image in each mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgead.errors import EdgeadError
from edgead.metrics import evaluate_all
from firmware_sim.errors import UserError
from firmware_sim.preprocess import Preprocess

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT.parent / "shared" / "weights" / "mcunet-in3"


def _random_image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(64, 24), (24, 64), (64, 64), (50, 13)])
def test_pad_round_trip(size):
    pre = Preprocess(image_size=64, resize_mode="pad")
    img = _random_image(*size)
    view = pre.views(img)
    assert view.shape == (1, 64, 64, 3)
    x0, y0, cw, ch = pre.letterbox_box(size)
    assert max(cw, ch) == 64 and abs(cw / ch - size[0] / size[1]) < 0.1
    inside = view[0, y0:y0 + ch, x0:x0 + cw]
    if max(size) == 64:  # scale 1: unpadding gives the image back exactly
        np.testing.assert_array_equal(inside, np.asarray(img))
    else:  # unpad + resize back to the original size: close to the original (smooth image)
        smooth = img.resize((4, 4)).resize(size, Image.BILINEAR)
        back = Image.fromarray(pre.views(smooth)[0, y0:y0 + ch, x0:x0 + cw]).resize(size, Image.BILINEAR)
        assert np.abs(np.asarray(back, float) - np.asarray(smooth, float)).mean() < 6
    valid = pre.frame_valid(size)
    assert valid.sum() == cw * ch
    assert (view[0][~valid] == pre.pad_colour()).all()
    # the padding is (almost) zero after normalisation
    assert np.abs(pre.normalize(view)[0][:, ~valid]).max() < 0.01 if (~valid).any() else True


@pytest.mark.parametrize("size", [(400, 89), (89, 400), (240, 100), (64, 64), (130, 64), (64, 500)])
def test_tiles_cover_the_image(size):
    s = 64
    pre = Preprocess(image_size=s, resize_mode="tile")
    (rw, rh), starts = pre.tile_layout(size)
    assert min(rw, rh) == s
    long = max(rw, rh)
    assert len(starts) == -(-long // s)
    covered = np.zeros(long, int)
    for x, y in starts:
        p = x if rw >= rh else y
        assert 0 <= p <= long - s
        covered[p:p + s] += 1
    assert (covered >= 1).all()
    views = pre.views(_random_image(*size))
    assert views.shape == (len(starts), s, s, 3)


@pytest.mark.parametrize("size", [(400, 89), (89, 400), (150, 64)])
def test_tile_stitching_restores_the_map(size):
    s = 64
    pre = Preprocess(image_size=s, resize_mode="tile")
    (rw, rh), starts = pre.tile_layout(size)
    yy, xx = np.mgrid[:rh, :rw]
    truth = (np.sin(xx / 7.0) + np.cos(yy / 5.0) + xx * 0.01).astype(np.float32)  # a known map on the image
    maps = np.stack([truth[y:y + s, x:x + s] for x, y in starts])
    frame, score = pre.merge(maps, size)
    assert score == pytest.approx(float(truth.max()))
    x0, y0, cw, ch = pre.letterbox_box(size)
    want = np.asarray(Image.fromarray(truth, mode="F").resize((cw, ch), Image.BILINEAR))
    np.testing.assert_allclose(frame[y0:y0 + ch, x0:x0 + cw], want, rtol=1e-6, atol=1e-6)
    assert frame[~pre.frame_valid(size)].max(initial=-np.inf) <= truth.min() + 1e-6
    with pytest.raises(UserError, match="expected"):
        pre.merge(maps[:-1], size)


def test_pad_score_ignores_the_padding():
    pre = Preprocess(image_size=32, resize_mode="pad")
    size = (64, 16)
    valid = pre.frame_valid(size)
    m = np.zeros((1, 32, 32), np.float32)
    m[0][~valid] = 100.0  # a border artefact in the padding
    m[0][valid] = np.linspace(0, 1, valid.sum())
    _, score = pre.merge(m, size)
    assert score == pytest.approx(1.0)


def test_mask_follows_the_frame():
    mask = np.zeros((20, 80), bool)
    mask[5:15, 60:70] = True
    for mode in ("pad", "tile"):
        pre = Preprocess(image_size=40, resize_mode=mode)
        fm = pre.frame_mask(mask)
        x0, y0, cw, ch = pre.letterbox_box((80, 20))
        assert (cw, ch) == (40, 10)
        assert fm[~pre.frame_valid((80, 20))].sum() == 0
        ys, xs = np.nonzero(fm)
        assert (ys.min(), ys.max(), xs.min(), xs.max()) == (y0 + 2, y0 + 7, x0 + 30, x0 + 34)
    assert Preprocess(image_size=40).frame_mask(mask).shape == (40, 40)


def test_pixel_metrics_exclude_padding():
    rng = np.random.default_rng(0)
    n, s = 6, 32
    masks = np.zeros((n, s, s), bool)
    masks[:3, 12:18, 10:20] = True
    maps = rng.random((n, s, s)).astype(np.float32) + masks * 0.7
    valid = np.zeros((n, s, s), bool)
    valid[:, 8:24, :] = True  # a letterboxed wide image: rows 0-7 and 24-31 are padding
    padded = maps.copy()
    padded[~valid] = 5.0  # the padding scores high: counted, it would wreck every pixel metric
    labels = np.r_[np.ones(3), np.zeros(3)]
    scores = maps.reshape(n, -1).max(axis=1)
    with_valid = evaluate_all(labels, scores, masks, padded, valid=valid)
    cropped = evaluate_all(labels, scores, masks[:, 8:24], maps[:, 8:24])
    for k in ("pixel_auroc", "pixel_ap", "pixel_f1", "aupro"):
        assert with_valid[k] == pytest.approx(cropped[k], abs=1e-12)
    counted = evaluate_all(labels, scores, masks, padded)
    assert counted["pixel_auroc"] < with_valid["pixel_auroc"] - 0.1
    with pytest.raises(EdgeadError, match="valid has shape"):
        evaluate_all(labels, scores, masks, padded, valid=valid[:, :10])


def test_preprocess_round_trips_mode_and_old_dicts_squash():
    pre = Preprocess(image_size=64, resize_mode="tile")
    assert Preprocess.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    old = pre.to_dict()
    del old["resize_mode"]
    assert Preprocess.from_dict(old).resize_mode == "squash"
    with pytest.raises(UserError, match="resize mode 'crop'"):
        Preprocess(image_size=64, resize_mode="crop")


def test_loaded_split_tiles_subset_and_concat(tmp_path):
    from edgead.data.layout import Entry
    from edgead.data.loading import LoadedSplit, load_entries

    paths = []
    for i, size in enumerate([(150, 64), (64, 64), (64, 200)]):
        p = tmp_path / f"{i}.png"
        _random_image(*size, seed=i).save(p)
        paths.append(p)
    pre = Preprocess(image_size=64, resize_mode="tile")
    split = load_entries([Entry(p, 0, "good") for p in paths], pre)
    assert len(split) == 3 and len(split.images) == 3 + 1 + 4
    np.testing.assert_array_equal(split.owner, [0, 0, 0, 1, 2, 2, 2, 2])
    sub = split.subset([2, 0])
    assert len(sub) == 2 and len(sub.images) == 7
    np.testing.assert_array_equal(sub.images[:4], split.images[4:])
    np.testing.assert_array_equal(sub.owner, [0, 0, 0, 0, 1, 1, 1])
    both = LoadedSplit.concat([sub, split.subset([1])])
    np.testing.assert_array_equal(both.owner, [0, 0, 0, 0, 1, 1, 1, 2])
    assert both.sizes.tolist() == [[64, 200], [150, 64], [64, 64]]


# -- end to end: train, checkpoint, export, device -------------------------------------------------------------


def _non_square_dataset(root: Path) -> Path:
    """The synthetic generator's squares resized to 96 x 40 (images and masks), a weld-seam-like shape."""
    from edgead.data.synth import generate_dataset

    data = generate_dataset(root, ["nut"], seed=0, image_size=64, n_train=12, n_test=4)
    for p in Path(data).rglob("*.png"):
        img = Image.open(p)
        img.resize((96, 40), Image.NEAREST if "ground_truth" in p.parts else Image.BILINEAR).save(p)
    return Path(data)


@pytest.fixture(scope="module")
def non_square(tmp_path_factory) -> Path:
    return _non_square_dataset(tmp_path_factory.mktemp("nonsq") / "data")


@pytest.mark.parametrize("mode", ["squash", "pad", "tile"])
def test_device_matches_host_on_a_non_square_image(mode, non_square, tmp_path, monkeypatch):
    # The tests run from a checkout beside ../shared: missing weights are a broken setup, not a skip.
    assert (WEIGHTS / "mcunet-320kb-1mb_imagenet.pth").is_file(), f"MCUNet-in3 weights not found in {WEIGHTS}"
    pytest.importorskip("onnxruntime")
    from edgead.export.pipeline import ExportOptions, export_run

    from edgead.cl.config import ReplayConfig
    from edgead.cl.runner import run_stream
    from edgead.data import TaskStream
    from edgead.engine.checkpoint import load_checkpoint
    from edgead.engine.tensors import predict_images
    from edgead.engine.trainer import TrainConfig
    from edgead.models.teacher_student import DetectorConfig
    from firmware_sim.anomaly_map import ScorePost
    from firmware_sim.device import Device
    from firmware_sim.preprocess import load_rgb

    monkeypatch.setenv("EDGEAD_WEIGHTS_DIR", str(WEIGHTS))
    det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=64)
    res = run_stream(TaskStream(non_square, ["nut"]), det,
                     TrainConfig(epochs=1, batch_size=8, progress=False, resize=mode), ReplayConfig(),
                     tmp_path / "run", log=lambda m: None)
    assert res["config"]["train"]["resize"] == mode
    model, pre, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "task_00.pt")
    assert pre.resize_mode == mode  # recorded in the checkpoint: eval and export use the same
    m = res["metrics"]["pixel_auroc"]["final_average"]
    assert m is not None and 0.0 <= m <= 1.0
    fid = export_run(tmp_path / "run", tmp_path / "art",
                     ExportOptions(formats=["onnx"], calibration=8, allow_drift=True))["fidelity"]
    # The export's fidelity check scores the float model on the same test images as `edgead eval`, with the
    # same pixels (padding left out): its reference numbers must be eval's, in every resize mode.
    for r in fid["formats"]["onnx"].values():
        assert r["pixel_auroc"]["float"] == pytest.approx(m, abs=1e-6)
        assert r["image_auroc"]["float"] == pytest.approx(res["metrics"]["image_auroc"]["final_average"], abs=1e-6)
    dev = Device(tmp_path / "art", format="onnx")
    assert dev.manifest.preprocess.resize_mode == mode
    assert dev.manifest.data["input"]["resize_mode"] == mode
    img_path = sorted((non_square / "nut" / "test").rglob("*.png"))[-1]
    img = load_rgb(img_path)
    assert img.size == (96, 40)
    r = dev.infer(img_path)
    views = pre.views(img)
    assert len(views) == (3 if mode == "tile" else 1)
    maps, _ = predict_images(model, views, pre)
    # Both sides score with the model's post-processing (default top-k mean), in the model's frame, as
    # calibration did: the manifest records the checkpoint's, and the host merges with it too.
    post = ScorePost.parse(model.config.score)
    assert dev.manifest.score_post == post
    frame, score = pre.merge(maps, img.size, post)
    assert r.score == pytest.approx(score, rel=1e-3)
    assert r.map.shape == frame.shape == (64, 64)
    valid = pre.frame_valid(img.size)
    np.testing.assert_allclose(r.map[valid], frame[valid], rtol=1e-3, atol=1e-3 * float(np.abs(frame).max()))
