"""edgead.metrics against scikit-learn and brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

import edgead.metrics._curve as curve
from edgead.errors import EdgeadError
from edgead.metrics import (
    EVALUATE_ALL_KEYS,
    aupro,
    evaluate_all,
    forgetting,
    forgetting_per_task,
    image_ap,
    image_auroc,
    image_f1_max,
    pixel_ap,
    pixel_auroc,
    pixel_f1_max,
    pixel_metrics,
)

TOL = 1e-6
EIGHT = np.ones((3, 3), dtype=bool)
FOUR = ndimage.generate_binary_structure(2, 1)


# ---------------------------------------------------------------- references
def f1_max_reference(y, s) -> float:
    precision, recall, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.nanmax(f1))


def aupro_reference(masks, maps, fpr_limit=0.3, structure=EIGHT) -> float:
    """Brute force: every distinct score as a threshold, regions and FPR counted explicitly."""
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float32)
    regions = []
    for i, m in enumerate(masks):
        lab, k = ndimage.label(m, structure=structure)
        regions += [(i, lab == r) for r in range(1, k + 1)]
    background = ~masks
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fpr = np.count_nonzero(pred & background) / np.count_nonzero(background)
        pro = np.mean([pred[i][region].mean() for i, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_lim) / 2
            break
    return area / fpr_limit


def random_pixels(rng, n=6, h=24, w=20, ties=False, negative=False):
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n - 2):  # the last two images are defect-free
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, h - 4), rng.integers(0, w - 4)
            masks[i, r : r + rng.integers(1, 5), c : c + rng.integers(1, 5)] = True
    maps = rng.normal(size=masks.shape) if negative else rng.random(masks.shape)
    maps = maps + 0.7 * masks * rng.random(masks.shape)
    if ties:
        maps = np.round(maps, 2)
    return masks, maps.astype(np.float32)


def check_pixel_against_sklearn(masks, maps):
    y, s = masks.ravel(), maps.ravel()
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert pixel_ap(masks, maps) == pytest.approx(average_precision_score(y, s), abs=TOL)
    assert pixel_f1_max(masks, maps) == pytest.approx(f1_max_reference(y, s), abs=TOL)


# ---------------------------------------------------------------- image level
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_image_metrics_match_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    y = rng.random(n) < rng.uniform(0.1, 0.9)
    y[:2] = [True, False]
    s = rng.random(n) + 0.3 * y
    if ties:
        s = np.round(s, 2)
    assert image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert image_ap(y, s) == pytest.approx(average_precision_score(y, s), abs=TOL)
    assert image_f1_max(y, s) == pytest.approx(f1_max_reference(y, s), abs=TOL)


def test_image_metrics_accept_lists_ints_and_extremes():
    y = [0, 0, 1, 1]
    assert image_auroc(y, [1, 2, 3, 4]) == 1.0
    assert image_auroc(y, [4, 3, 2, 1]) == 0.0
    assert image_auroc(y, [1, 1, 1, 1]) == 0.5
    assert image_f1_max(y, [1, 2, 3, 4]) == 1.0
    assert image_ap(y, [1, 2, 3, 4]) == 1.0
    assert image_f1_max(y, [5, 5, 5, 5]) == pytest.approx(2 / 3)  # all predicted anomalous: P=0.5, R=1
    assert isinstance(image_auroc(y, [1, 2, 3, 4]), float)


def test_image_scores_keep_float64_precision():
    y = np.array([0, 1])
    s = np.array([1.0, 1.0 + 1e-12])  # equal in float32, not in float64
    assert image_auroc(y, s) == 1.0


# ---------------------------------------------------------------- pixel level
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("negative", [False, True])
def test_pixel_metrics_match_sklearn(ties, negative):
    rng = np.random.default_rng(10 + 2 * ties + negative)
    masks, maps = random_pixels(rng, n=8, h=40, w=30, ties=ties, negative=negative)
    check_pixel_against_sklearn(masks, maps)


@pytest.mark.parametrize("chunk", [1, 2, 7, 64])
def test_pixel_metrics_across_chunk_boundaries(monkeypatch, chunk):
    # ties spanning chunk borders must still form one curve point
    monkeypatch.setattr(curve, "CHUNK", chunk)
    rng = np.random.default_rng(chunk)
    masks, maps = random_pixels(rng, n=4, h=10, w=9, ties=True)
    maps = np.round(maps * 10) / 10  # heavy ties
    check_pixel_against_sklearn(masks, maps)
    assert aupro(masks, maps) == pytest.approx(aupro_reference(masks, maps), abs=TOL)
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(aupro_reference(masks, maps, 1.0), abs=TOL)


def test_pixel_signed_zero_infinity_and_dtypes():
    masks = np.zeros((2, 3, 4), dtype=np.uint8)
    masks[0, 1, 1:3] = 1
    maps = np.array([[[-0.0, 0.0, -1.5, 2.0], [0.0, -0.0, 0.0, -2.0], [np.inf, -np.inf, 0.5, -0.0]]] * 2)
    maps[1] *= -1
    finite = np.where(np.isfinite(maps), maps, np.sign(maps) * 1e30)  # sklearn rejects inf
    for m in (maps, maps.astype(np.float32)):
        assert pixel_auroc(masks, m) == pytest.approx(roc_auc_score(masks.ravel(), finite.ravel()), abs=TOL)
        assert pixel_ap(masks, m) == pytest.approx(
            average_precision_score(masks.ravel(), finite.ravel()), abs=TOL
        )
    int_maps = (np.arange(24).reshape(2, 3, 4) % 5).astype(np.uint8)
    check_pixel_against_sklearn(masks.astype(bool), int_maps)


def test_float64_maps_are_compared_as_float32():
    rng = np.random.default_rng(3)
    masks, maps = random_pixels(rng)
    maps64 = maps.astype(np.float64) + 1e-12  # rounds back to the same float32 values
    assert pixel_auroc(masks, maps64) == pixel_auroc(masks, maps)


def test_pixel_metrics_helper_and_evaluate_all():
    rng = np.random.default_rng(5)
    masks, maps = random_pixels(rng)
    labels = masks.any(axis=(1, 2))
    scores = maps.max(axis=(1, 2))
    out = evaluate_all(labels, scores, masks, maps)
    assert tuple(out) == EVALUATE_ALL_KEYS
    assert all(type(v) is float for v in out.values())
    assert out["image_auroc"] == image_auroc(labels, scores)
    assert out["image_f1"] == image_f1_max(labels, scores)
    assert out["pixel_auroc"] == pytest.approx(pixel_auroc(masks, maps), abs=1e-12)
    assert out["pixel_f1"] == pytest.approx(pixel_f1_max(masks, maps), abs=1e-12)
    assert out["pixel_ap"] == pytest.approx(pixel_ap(masks, maps), abs=1e-12)
    assert out["aupro"] == pytest.approx(aupro(masks, maps), abs=1e-12)
    assert pixel_metrics(masks, maps)["aupro"] == pytest.approx(aupro_reference(masks, maps), abs=TOL)


# ---------------------------------------------------------------- AUPRO
def test_aupro_hand_computed():
    masks = np.array([[[1, 1, 0, 0]]])
    maps = np.array([[[4.0, 1.0, 3.0, 2.0]]])
    # thresholds 4,3,2,1 -> (FPR, PRO) = (0, .5), (.5, .5), (1, .5), (1, 1); curve starts at (0, 0)
    assert aupro(masks, maps, fpr_limit=0.3) == pytest.approx(0.5)
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.5)
    # two regions of 1 and 3 pixels: PRO is their mean, not the pixel fraction
    masks = np.array([[[1, 0, 1, 1, 1, 0]]])
    maps = np.array([[[9.0, 1.0, 8.0, 0.0, 0.0, 0.5]]])
    # t=9: PRO .5, FPR 0; t=8: PRO (1 + 1/3)/2; t=1: FPR .5; t=.5: FPR 1; t=0: PRO 1
    assert aupro(masks, maps, fpr_limit=0.5) == pytest.approx(2 / 3)


def test_aupro_perfect_constant_and_random():
    rng = np.random.default_rng(7)
    masks, maps = random_pixels(rng)
    assert aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0)
    assert aupro(masks, masks * 2.0 + maps * 0.5) == pytest.approx(1.0)
    constant = np.full(masks.shape, 0.25, dtype=np.float32)
    assert aupro(masks, constant) == pytest.approx(0.15)  # one point (1, 1): area 0.3^2/2 over 0.3
    assert aupro(masks, constant) == pytest.approx(aupro_reference(masks, constant), abs=TOL)
    for limit in (0.05, 0.3, 1.0):
        assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(
            aupro_reference(masks, maps, limit), abs=TOL
        )
    noise = rng.random(masks.shape).astype(np.float32)
    assert aupro(masks, noise) == pytest.approx(aupro_reference(masks, noise), abs=TOL)


def test_aupro_regions_use_8_connectivity():
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 1:3, 1:3] = True  # 2x2 block ...
    masks[0, 3, 3] = True  # ... and a pixel touching it only diagonally: one 8-connected region
    masks[0, 6, 6] = True  # separated pixel: its own region
    rng = np.random.default_rng(11)
    maps = rng.random(masks.shape).astype(np.float32) * 0.5
    maps[0, 1:3, 1:3] += 0.6  # block found early, both single pixels late
    got = aupro(masks, maps)
    assert got == pytest.approx(aupro_reference(masks, maps, structure=EIGHT), abs=TOL)
    assert abs(got - aupro_reference(masks, maps, structure=FOUR)) > 1e-3


def test_aupro_images_without_defects_count_as_background_only():
    rng = np.random.default_rng(12)
    masks, maps = random_pixels(rng, n=3)
    extra_masks = np.concatenate([masks, np.zeros_like(masks)])
    extra_maps = np.concatenate([maps, rng.random(maps.shape).astype(np.float32)])
    assert aupro(extra_masks, extra_maps) == pytest.approx(aupro_reference(extra_masks, extra_maps), abs=TOL)


# ---------------------------------------------------------------- forgetting
NAN = np.nan
M3 = [
    [0.9, 1.0, NAN],  # m[0][1] = 1.0 is before task 1 was learned: must be ignored (l >= j)
    [0.6, 0.8, NAN],
    [0.45, 0.4, 0.7],
]


def test_forgetting_relative_and_absolute():
    # relative: j=0 max(1-.45/.9, 1-.45/.6) = .5; j=1: 1-.4/.8 = .5
    np.testing.assert_allclose(forgetting_per_task(M3), [0.5, 0.5])
    assert forgetting(M3) == pytest.approx(0.5)
    # absolute: j=0 max(.9, .6) - .45 = .45; j=1: .8 - .4 = .4
    np.testing.assert_allclose(forgetting_per_task(M3, "absolute"), [0.45, 0.4])
    assert forgetting(M3, mode="absolute") == pytest.approx(0.425)


def test_forgetting_edge_cases():
    assert forgetting([[0.7]]) == 0.0
    assert forgetting_per_task([[0.7]]).shape == (0,)
    # improvement is negative forgetting; the final row is not part of the max
    assert forgetting([[0.5, NAN], [0.8, 0.9]]) == pytest.approx(-0.6)
    assert forgetting([[0.5, NAN], [0.8, 0.9]], "absolute") == pytest.approx(-0.3)
    # relative: rows where the metric was 0 are skipped; all-zero history -> 0
    assert forgetting([[0.0, NAN], [0.5, 0.9]]) == 0.0
    m = [[0.0, NAN, NAN], [0.5, 0.6, NAN], [0.25, 0.6, 0.1]]
    np.testing.assert_allclose(forgetting_per_task(m), [0.5, 0.0])
    np.testing.assert_allclose(forgetting_per_task(m, "absolute"), [0.25, 0.0])


@pytest.mark.parametrize(
    ("matrix", "mode", "words"),
    [
        ([[1.0, 2.0]], "relative", "square"),
        ([], "relative", "square"),
        ([[0.5, NAN], [NAN, 0.5]], "relative", "matrix[1][0]"),
        (M3, "percent", "mode"),
    ],
)
def test_forgetting_errors(matrix, mode, words):
    with pytest.raises(EdgeadError, match=words.replace("[", r"\[").replace("]", r"\]")):
        forgetting(matrix, mode)


# ---------------------------------------------------------------- errors
IMG_ERRORS = [
    ([0, 1, 1], [0.1, 0.2], "one score per image"),
    ([], [], "empty"),
    ([0, 1], [0.1, np.nan], "scores contains NaN"),
    ([1, 1, 1], [0.1, 0.2, 0.3], "only anomalous"),
    ([0, 0], [0.1, 0.2], "only normal"),
    ([0, 2], [0.1, 0.2], "labels contains 2"),
    ([[0, 1]], [[0.1, 0.2]], "labels has shape"),
    ([0, 1], ["a", "b"], "scores has dtype"),
]


@pytest.mark.parametrize(("labels", "scores", "words"), IMG_ERRORS)
def test_image_errors(labels, scores, words):
    for fn in (image_auroc, image_ap, image_f1_max):
        with pytest.raises(EdgeadError, match=words):
            fn(labels, scores)


def _pix(shape=(2, 4, 4)):
    masks = np.zeros(shape, dtype=bool)
    masks[0, 1, 1] = True
    return masks, np.random.default_rng(0).random(shape).astype(np.float32)


def test_pixel_errors():
    masks, maps = _pix()
    cases = [
        ((masks, maps[:1]), "expected the same"),
        ((masks[0], maps[0]), r"masks has shape \(4, 4\): expected \(N, H, W\)"),
        ((masks, maps[0]), "maps has shape"),
        ((masks[:0], maps[:0]), "empty"),
        ((masks, np.where(masks, np.nan, maps)), r"maps\[0\] contains NaN at pixel \(1, 1\)"),
        ((np.zeros_like(masks), maps), "no anomalous pixels|no defect regions"),
        ((np.ones_like(masks), maps), "no normal pixels|no defect-free pixels"),
        ((masks * np.uint8(255), maps), r"masks\[0\] contains 255.*masks > 0"),
    ]
    for fn in (pixel_auroc, pixel_ap, pixel_f1_max, aupro):
        for args, words in cases:
            with pytest.raises(EdgeadError, match=words):
                fn(*args)
    for bad in (0.0, -0.1, 1.5, "x"):
        with pytest.raises(EdgeadError, match="fpr_limit"):
            aupro(masks, maps, fpr_limit=bad)
    with pytest.raises(EdgeadError, match="no defect regions"):
        aupro(np.zeros_like(masks), maps)


def test_evaluate_all_checks_image_count():
    masks, maps = _pix()
    with pytest.raises(EdgeadError, match="same N images"):
        evaluate_all([0, 1, 1], [0.1, 0.2, 0.3], masks, maps)
