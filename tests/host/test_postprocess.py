"""Score post-processing (firmware_sim.anomaly_map.ScorePost): its spelling, the blur against torch's own
convolution, top-k, the host model applying it, view merging, and old checkpoints / manifests reading as max."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgead.cl.run_folder import config_differences
from edgead.models.teacher_student import DetectorConfig, TeacherStudent
from firmware_sim.anomaly_map import LEGACY_SCORE, ScorePost, gaussian_blur
from firmware_sim.errors import UserError
from firmware_sim.manifest import Manifest
from firmware_sim.manifest_check import check_fields
from firmware_sim.preprocess import Preprocess


@pytest.mark.parametrize("text,canonical", [
    ("max", "max"), ("", "max"), ("topk:0.01", "topk:0.01"), ("blur:4,max", "blur:4,max"),
    ("Blur:4, TopK:0.010", "blur:4,topk:0.01"), ("blur:0,max", "max"), ("blur:2.5,topk:1", "blur:2.5,topk:1"),
])
def test_spelling_round_trips(text, canonical):
    post = ScorePost.parse(text)
    assert str(post) == canonical
    assert ScorePost.parse(str(post)) == post


@pytest.mark.parametrize("bad", ["blur:4", "topk:0", "topk:1.5", "max,blur:4", "max,max", "median", "blur:-1,max",
                                 "blur:x,max", "topk:nan", "blur:4,max,max"])
def test_bad_spellings_name_the_value(bad):
    with pytest.raises(UserError, match="score"):
        ScorePost.parse(bad)
    with pytest.raises(UserError, match="score"):
        DetectorConfig(score=bad)


def _torch_blur(maps: np.ndarray, sigma: float) -> np.ndarray:
    """The reference: anomalib's GaussianBlur2d written with torch (2-D kernel, reflect padding, conv2d)."""
    size = 2 * int(4.0 * sigma + 0.5) + 1
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).float()[None, None]
    t = F.pad(torch.from_numpy(maps)[:, None], (size // 2,) * 4, mode="reflect")
    return F.conv2d(t, k)[:, 0].numpy()


@pytest.mark.parametrize("sigma,size", [(4.0, 64), (2.0, 37), (1.0, 16)])
def test_blur_equals_torch_convolution(sigma, size):
    rng = np.random.default_rng(size)
    maps = (rng.random((3, size, size)) ** 8).astype(np.float32)  # peaky, as anomaly maps are
    got = gaussian_blur(maps, sigma)
    np.testing.assert_allclose(got, _torch_blur(maps, sigma), rtol=1e-5, atol=1e-6 * maps.max())
    assert got.max() < maps.max()  # a blur lowers isolated peaks: why it changes the image score
    np.testing.assert_allclose(gaussian_blur(np.full((1, size, size), 3.0, np.float32), sigma), 3.0, rtol=1e-5)


def test_topk_is_the_mean_of_the_largest_pixels():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 20, 20)).astype(np.float32)
    flat = np.sort(maps.reshape(4, -1), axis=1)
    for frac in (0.01, 0.1, 0.5, 1.0):
        k = math.ceil(frac * 400)
        np.testing.assert_allclose(ScorePost(topk=frac).score(maps), flat[:, -k:].mean(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(ScorePost(topk=1 / 400).score(maps), maps.reshape(4, -1).max(axis=1))
    assert (ScorePost(topk=0.05).score(maps) < ScorePost().score(maps)).all()


def _tiny_model(score: str) -> TeacherStudent:
    torch.manual_seed(0)
    det = DetectorConfig.defaults("paste", "mcunet-in3", image_size=64, pretrained=False, score=score)
    return TeacherStudent(det, load_teacher=False)


def test_host_model_applies_its_post_processing():
    z = torch.randn(3, *_tiny_model("max").latent_shape())
    raw_map, raw_score = _tiny_model("max").predict_latent(z)
    np.testing.assert_allclose(raw_score.numpy(), raw_map.flatten(1).amax(1).numpy())
    post = ScorePost.parse("blur:2,topk:0.05")
    m, s = _tiny_model(str(post)).predict_latent(z)  # same seed: same weights
    want_m, want_s = post(raw_map.numpy())
    np.testing.assert_allclose(m.numpy(), want_m, rtol=1e-6)
    np.testing.assert_allclose(s.numpy(), want_s, rtol=1e-6)
    assert not np.allclose(s.numpy(), raw_score.numpy())


def test_merge_reduces_views_with_the_post_processing():
    rng = np.random.default_rng(1)
    post = ScorePost(topk=0.1)
    squash = Preprocess(image_size=32)
    maps = rng.random((1, 32, 32)).astype(np.float32)
    _, score = squash.merge(maps, (50, 40), post)
    assert score == pytest.approx(float(post.score(maps)[0]))
    pad = Preprocess(image_size=32, resize_mode="pad")
    frame, score = pad.merge(maps, (64, 32), post)
    valid = pad.frame_valid((64, 32))
    assert score == pytest.approx(float(post.reduce(frame[valid][None])[0]))
    assert pad.merge(maps, (64, 32))[1] == pytest.approx(float(frame[valid].max()))  # default: the maximum
    tile = Preprocess(image_size=32, resize_mode="tile")
    n = tile.n_views((96, 32))
    _, s_tile = tile.merge(rng.random((n, 32, 32)).astype(np.float32), (96, 32), post)
    assert np.isfinite(s_tile)


def test_saved_before_it_existed_reads_as_max(tmp_path):
    det = DetectorConfig.defaults("paste", "mcunet-in3", score="blur:4,max").to_dict()
    old = {k: v for k, v in det.items() if k != "score"}
    assert DetectorConfig.from_dict(old).score == LEGACY_SCORE
    assert DetectorConfig.from_dict(det).score == "blur:4,max"
    # A run saved without the field resumes only with "max".
    assert config_differences({"detector": old}, {"detector": {**old, "score": "max"}}) == []
    assert config_differences({"detector": old}, {"detector": {**old, "score": "topk:0.01"}}) == ["detector"]
    # A manifest without it: the device scores by the maximum; a bad one is refused, naming the field.
    assert Manifest(tmp_path, {"anomaly_map": {"function": "x"}}).score_post == ScorePost()
    assert Manifest(tmp_path, {}).score_post == ScorePost()
    assert Manifest(tmp_path, {"anomaly_map": {"score": "topk:0.01"}}).score_post == ScorePost(topk=0.01)
    manifest = json.loads(json.dumps(_minimal_manifest()))
    check_fields(manifest, "m.json")
    manifest["anomaly_map"] = {"score": "median"}
    with pytest.raises(UserError, match="anomaly_map.score"):
        check_fields(manifest, "m.json")


def _minimal_manifest() -> dict:
    return {"model": "paste", "backbone": "mcunet-in3", "levels": [6], "files": {},
            "input": {"image_size": 64, "preprocess": {"image_size": 64, "mean": [0, 0, 0], "std": [1, 1, 1]}},
            "formats": {"onnx": {"graphs": {}}}, "calibration": {"threshold": 0.5},
            "anomaly_map": {"score": "blur:4,max"}}


def test_cli_refuses_a_bad_score_before_anything_is_written(synth_root, tmp_path, edgead_in_process):
    out = tmp_path / "run"
    r = edgead_in_process("train", "--data", synth_root, "--tasks", "nut", "--score", "blur:4", "--out", out)
    assert r.returncode == 2 and "score post-processing 'blur:4'" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_bench_postprocess_chooses_on_dev_by_auroc_and_balanced_accuracy(tmp_path):
    import bench_postprocess

    rng = np.random.default_rng(0)

    def half(shift_dev: float, n: int = 40):
        y = np.r_[np.zeros(n), np.ones(n)].astype(int)
        s = np.r_[rng.normal(0, 1, n), rng.normal(shift_dev, 1, n)]
        return {"labels": y.tolist(), "scores": s.tolist()}

    runs = []
    for cat in ("a", "b"):
        cands = {}
        # "better" separates defects more on DEV; "report-only" is better on REPORT only and must not be chosen.
        for cand, dev_shift, rep_shift in (("max", 1.0, 1.0), ("topk:0.01", 2.0, 1.5), ("blur:4,max", 0.5, 3.0)):
            normal = rng.normal(0, 1, 30)
            cands[cand] = {"normal": normal.tolist(), "pseudo": (normal + 2).tolist(),
                           "dev": half(dev_shift), "report": half(rep_shift)}
        runs.append({"category": cat, "seed": 0, "train_s": 1.0, "steps": 1, "batch_size": 8, "candidates": cands})
    src = tmp_path / "scores.json"
    src.write_text(json.dumps({"command": "x", "runs": runs}))
    assert bench_postprocess.main(["--from", str(src), "--out-dir", str(tmp_path), "--tag", "t",
                                   "--rules", "quantile:0.9", "--scores-dir", str(tmp_path / "s")]) == 0
    saved = json.loads((tmp_path / "decisions_postprocess_t.json").read_text())
    c = saved["choice"]
    assert c["chosen"] == "topk:0.01" and c["by_auroc_dev"][0] == "topk:0.01"
    assert "blur:4,max" not in c["qualifying"]  # loses DEV AUROC against max, whatever REPORT says
    assert c["chosen_auroc_report"] > c["before_auroc_report"]
    row = next(s for s in saved["summary"] if s["candidate"] == "max")
    assert 0.5 <= row["bacc_report"] <= row["ceiling_report"] <= 1.0
    # per candidate, a scores file in bench_threshold's --from format
    per = json.loads((tmp_path / "s" / "postprocess_t_topk0.01.json").read_text())
    assert per["score"] == "topk:0.01" and set(per["runs"][0]) >= {"category", "seed", "normal", "pseudo", "dev",
                                                                 "report"}
