"""`edgead analyze`: PCA channel importance, top-p selection, t-SNE, feature-selective fine-tuning.

Real MCUNet-in3 weights on 64 px synthetic data (the session `synth_root`), one epoch, two percentages.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from edgead.analysis.channels import n_selected, pca_channel_importance, top_channels
from edgead.analysis.features import check_percents, parse_percents
from edgead.errors import EdgeadError
from tests.conftest import MCUNET_DIR

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 1000


@pytest.fixture(scope="module")
def det():
    from edgead.models.teacher_student import DetectorConfig

    return DetectorConfig.defaults("paste", "mcunet-in3", image_size=64)


@pytest.fixture(scope="module")
def base_model(det):
    from edgead.analysis.features import build_teacher_student

    # The autouse weights fixture is function-scoped; a module fixture sets the same variable itself.
    os.environ.setdefault("EDGEAD_WEIGHTS_DIR", str(MCUNET_DIR))
    return build_teacher_student(det, None, seed=0)


def test_pca_importance_is_normalised_and_ranks_the_dominant_channel():
    rng = np.random.default_rng(0)
    # 6 channels: channels 0 and 3 share one strong latent factor, the rest is weak independent noise.
    factor = rng.normal(size=(2000, 1))
    x = 0.1 * rng.normal(size=(2000, 6))
    x[:, [0, 3]] += factor * np.array([3.0, 2.0])
    imp = pca_channel_importance(x, variance=0.9)
    assert imp.importance.shape == (6,) and (imp.importance >= 0).all()
    assert abs(imp.importance.sum() - 1.0) < 1e-12
    assert imp.n_components == 1  # the shared factor explains > 90% on its own
    assert list(imp.ranking[:2]) == [0, 3]
    assert imp.importance[[1, 2, 4, 5]].max() < 0.01
    # Over all components the PCA weighting reduces to each channel's share of the total variance.
    full = pca_channel_importance(x, variance=1.0)
    var = x.var(axis=0)
    np.testing.assert_allclose(full.importance, var / var.sum(), rtol=1e-9, atol=1e-12)
    assert full.n_components == 6 and abs(full.explained_variance_ratio.sum() - 1.0) < 1e-9


def test_top_p_counts_and_order():
    imp = np.array([0.05, 0.3, 0.1, 0.3, 0.2, 0.05])
    assert [n_selected(24, 1), n_selected(40, 10), n_selected(96, 5), n_selected(96, 100)] == [1, 4, 5, 96]
    assert list(top_channels(imp, 50)) == [1, 3, 4]  # ties keep the lower index first
    for p in (1, 17, 34, 50, 99, 100):
        sel = top_channels(imp, p)
        assert len(sel) == max(1, math.ceil(p / 100 * len(imp) - 1e-9)) and len(set(sel)) == len(sel)
        assert (np.diff(imp[sel]) <= 0).all()  # most important first
        rest = np.setdiff1d(np.arange(len(imp)), sel)
        assert not len(rest) or imp[sel].min() >= imp[rest].max()
    assert parse_percents("50, 1,5,1") == [1.0, 5.0, 50.0]


def test_p100_equals_the_standard_loss_and_map_and_a_subset_is_smaller(base_model):
    from edgead.analysis.selective import ChannelSelectedDetector

    torch.manual_seed(1)
    z = base_model.latent(torch.rand(3, 3, 64, 64))
    widths = [f.shape[1] for f in base_model.teacher_features(z)]
    # Given in a shuffled (importance-like) order: the detector must still equal the standard one bit for bit.
    every = ChannelSelectedDetector.from_detector(base_model, [np.random.default_rng(0).permutation(w)
                                                               for w in widths])
    with torch.no_grad():
        assert torch.equal(every.loss_from_latent(z), base_model.loss_from_latent(z))
        m_all, s_all = every.predict_latent(z)
        m_ref, s_ref = base_model.predict_latent(z)
    assert torch.equal(m_all, m_ref) and torch.equal(s_all, s_ref)
    # A channel subset drops non-negative terms of every position's distance: the loss can only shrink.
    some = ChannelSelectedDetector.from_detector(base_model, [[0, 2], [1], [5, 7, 9]])
    with torch.no_grad():
        sub = some.loss_from_latent(z)
        t, s = base_model.teacher_features(z), base_model.student_features(z)
        tn = [torch.nn.functional.normalize(f, dim=1) for f in t]
        sn = [torch.nn.functional.normalize(f, dim=1) for f in s]
        by_hand = sum(0.5 * ((a[:, c] - b[:, c]) ** 2).sum(dim=1).mean(dim=(1, 2)).mean()
                      for a, b, c in zip(tn, sn, ([0, 2], [1], [5, 7, 9]), strict=True))
    assert 0 < sub.item() < base_model.loss_from_latent(z).item()
    assert abs(sub.item() - by_hand.item()) < 1e-6 * by_hand.item()
    with pytest.raises(EdgeadError, match="level 10: channels \\[40\\] must be distinct indices in 0..39"):
        ChannelSelectedDetector.from_detector(base_model, [[0], [40], [1]])


def test_channels_cli_writes_importances_selection_and_pngs(synth_root, tmp_path, capsys):
    from edgead.cli import main

    out = tmp_path / "ch"
    main(["analyze", "channels", "--data", str(synth_root), "--tasks", "nut,pill", "--image-size", "64",
          "--percent", "10,50", "--max-patches", "500", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "nut" in printed and "pill" in printed and "top 10%" in printed
    res = json.loads((out / "channels.json").read_text())
    assert set(res) >= {"analysis", "config", "tasks", "categories", "figures"}
    assert res["tasks"] == ["nut", "pill"] and res["config"]["percents"] == [10.0, 50.0]
    for name in ("nut", "pill"):
        assert _is_png(out / res["figures"][name])
        levels = res["categories"][name]["levels"]
        assert [r["level"] for r in levels] == [6, 10, 14]
        for r, width in zip(levels, (24, 40, 96), strict=True):
            imp = np.asarray(r["importance"])
            assert len(imp) == r["channels"] == width and abs(imp.sum() - 1) < 1e-9 and (imp >= 0).all()
            assert r["n_patches"] <= 500 and 1 <= r["n_components"] <= width
            assert sum(r["explained_variance_ratio"]) >= 0.95 - 1e-9  # --variance default
            for key, p in (("10", 10), ("50", 50)):
                sel = r["selected"][key]
                assert len(sel) == math.ceil(p / 100 * width) and sel == r["ranking"][: len(sel)]
                assert abs(r["importance_captured"][key] - imp[sel].sum()) < 1e-12
            assert r["importance_captured"]["50"] > r["importance_captured"]["10"] >= 0.1


def test_tsne_selected_patches_json_and_png(synth_root, tmp_path, base_model):
    from edgead.analysis.tsne import analyze_tsne
    from edgead.data.stream import TaskStream
    from firmware_sim.preprocess import Preprocess

    res = analyze_tsne(TaskStream(synth_root, ["pill"]), base_model, Preprocess(image_size=64), [25],
                       tmp_path, max_points=60, min_coverage=0.1, max_patches=500, log=lambda m: None)
    assert json.loads((tmp_path / "tsne.json").read_text()) == json.loads(json.dumps(res))
    assert _is_png(tmp_path / res["figures"]["pill/25"]) and (tmp_path / "tsne_pill_p25.png").is_file()
    levels = res["categories"]["pill"]["25"]["levels"]
    assert [len(r["channels"]) for r in levels] == [6, 10, 24]
    assert levels[0]["n_anomalous"] > 0  # level 6 (8x8 cells at 64 px) sees the synthetic defects
    for r in levels:
        assert 0 < r["n_normal"] <= 60 and 0 <= r["n_anomalous"] <= 60
        assert len(r["xy"]) == len(r["label"]) == r["n_normal"] + r["n_anomalous"]
        assert sorted(set(r["label"])) == ([0, 1] if r["n_anomalous"] else [0])
        assert np.isfinite(np.asarray(r["xy"])).all() and r["perplexity"] < len(r["xy"])
        assert r["silhouette"] is None or -1 <= r["silhouette"] <= 1


def test_selective_curve_and_p100_reproduces_plain_finetuning(synth_root, tmp_path, det):
    from edgead.analysis.selective import run_selective
    from edgead.cl.config import ReplayConfig
    from edgead.cl.runner import run_stream
    from edgead.data.stream import TaskStream
    from edgead.engine.trainer import TrainConfig

    stream = TaskStream(synth_root, ["nut", "brick"])
    cfg = TrainConfig(epochs=1, batch_size=8, progress=False, val_fraction=0.25)
    res = run_selective(stream, det, cfg, [100, 5], tmp_path / "sel", max_patches=500, log=lambda m: None)
    saved = json.loads((tmp_path / "sel" / "selective.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert set(res) >= {"analysis", "config", "tasks", "curve", "percents", "figures"}
    assert _is_png(tmp_path / "sel" / res["figures"]["f1"])
    assert res["curve"]["percent"] == [5.0, 100.0]
    assert res["percents"]["5"]["n_channels"] == {"6": 2, "10": 2, "14": 5}
    assert res["percents"]["100"]["n_channels"] == {"6": 24, "10": 40, "14": 96}
    for key in ("5", "100"):
        r = res["percents"][key]
        assert set(r["final"]) == {"nut", "brick"}
        for m in ("image_f1", "pixel_f1"):
            vals = [r["final"][t][m] for t in ("nut", "brick")]
            assert all(0.0 <= v <= 1.0 for v in vals) and abs(r[m] - np.mean(vals)) < 1e-12
        assert 0.0 <= r["selection_overlap"]["brick"]["6"] <= 1.0
    assert res["curve"]["image_f1"] == [res["percents"][k]["image_f1"] for k in ("5", "100")]
    # With every channel selected, the selective detector is the standard one: same final metrics as
    # `edgead train --strategy finetune` with the same seed.
    ref = run_stream(stream, det, cfg, ReplayConfig(), tmp_path / "ft", log=lambda m: None)
    for j, name in enumerate(stream.names):
        for m in ("image_f1", "pixel_f1", "image_auroc", "pixel_auroc"):
            assert res["percents"]["100"]["final"][name][m] == ref["metrics"][m]["matrix"][-1][j]


def test_bad_input_gives_clear_errors(synth_root, tmp_path, capsys):
    from edgead.cli import main

    base = ["--image-size", "64", "--out", str(tmp_path / "o")]
    data = ["--data", str(synth_root)]
    outside = "is outside (0, 100]"
    cases = [
        (["channels", "--data", str(tmp_path / "nope"), *base], "dataset root not found"),
        (["tsne", "--data", str(synth_root), "--tasks", "nut,bolt", *base], "unknown category ['bolt']"),
        (["selective", *data, "--percent", "0,5", *base], f"percentage 0 {outside}"),
        (["channels", *data, "--percent", "150", *base], f"percentage 150 {outside}"),
        (["channels", "--data", str(synth_root), "--percent", ",", *base], "expected a comma-separated list"),
        (["tsne", "--data", str(synth_root), "--percent", "ten", *base], "expected numbers"),
        (["selective", "--data", str(synth_root), "--tasks", " , ", *base], "expected at least one category"),
        (["channels", "--data", str(synth_root), "--variance", "1.5", *base], "expected a value in (0, 1]"),
        (["tsne", *data, "--min-coverage", "0", *base], "coverage 0.0: expected a value in"),
        (["selective", "--data", str(synth_root), "--epochs", "0", *base], "epochs 0: expected >= 1"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(["analyze", *args])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith("error: ") and message in err, (args, err)
    assert not (tmp_path / "o").exists()  # nothing written for bad input
    with pytest.raises(EdgeadError, match="no percentages given"):
        check_percents([])
    with pytest.raises(EdgeadError, match="no variance"):
        pca_channel_importance(np.ones((10, 4)))
    with pytest.raises(EdgeadError, match="expected a value in \\(0, 1\\]"):
        pca_channel_importance(np.random.default_rng(0).normal(size=(10, 4)), variance=1.5)
