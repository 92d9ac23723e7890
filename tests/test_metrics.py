"""Tests of bridgenet.metrics: hand-worked values, the MVTec AU-PRO definition, edge cases."""

from __future__ import annotations

import logging
from bisect import bisect

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from bridgenet import metrics as M

# ----------------------------------------------------------------------------- reference
# A deliberately slow, literal implementation of the MVTec 3D-AD definition (loops over
# thresholds and regions), written from the definition in METHOD.md section 5.


def reference_pro_curve(maps, masks, num_thresholds):
    regions, good = [], []
    for score_map, gt in zip(maps, masks):
        labelled, n = ndimage.label(gt, structure=np.ones((3, 3)))
        good.extend(score_map[labelled == 0].tolist())
        regions.extend(score_map[labelled == k] for k in range(1, n + 1))
    good = sorted(good)
    if num_thresholds is None:
        num_thresholds = len(good)
    fprs, pros = [1.0], [1.0]
    for pos in np.linspace(0, len(good) - 1, num_thresholds, dtype=int):
        threshold = good[pos]
        fprs.append(1.0 - (pos + 1) / len(good))
        pros.append(sum(float(np.mean(r > threshold)) for r in regions) / len(regions))
    return fprs[::-1], pros[::-1]


def reference_trapezoid(x, y, x_max):
    x, y = np.asarray(x), np.asarray(y)
    correction = 0.0
    if x_max not in x:
        ins = bisect(x, x_max)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def reference_aupro(maps, masks, limit, num_thresholds):
    fprs, pros = reference_pro_curve(maps, masks, num_thresholds)
    return reference_trapezoid(fprs, pros, limit) / limit


def random_case(rng, n=4, h=12, w=14, decimals=None):
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n - 1):  # the last image stays good
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
            masks[i, y : y + rng.integers(1, 4), x : x + rng.integers(1, 4)] = True
    maps = rng.random((n, h, w)) + 0.5 * masks * rng.random((n, h, w))
    if decimals is not None:  # coarse scores: many ties
        maps = np.round(maps, decimals)
    return maps, masks


# ----------------------------------------------------------------------------- image level
def test_image_metrics_hand_worked():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    # AUROC: (anomalous, good) pairs: 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes -> 3/4
    assert M.image_auroc(scores, labels) == pytest.approx(0.75)
    # descending: 0.8(+) 0.4(-) 0.35(+) 0.1(-); recall steps at 0.8 (P=1) and 0.35 (P=2/3)
    # AP = 0.5 * 1 + 0.5 * 2/3 = 5/6
    assert M.image_ap(scores, labels) == pytest.approx(5 / 6)
    # F1 at t=0.8: P=1, R=1/2 -> 2/3; t=0.35: P=2/3, R=1 -> 0.8; t=0.1: P=1/2, R=1 -> 2/3
    assert M.image_f1_max(scores, labels) == pytest.approx(0.8)


def test_image_auroc_counts_ties_as_half():
    # pairs: anomalous 0.5 vs good 0.5 tie -> 1/2, vs good 0.2 -> 1; AUROC = 1.5 / 2
    assert M.image_auroc([0.5, 0.5, 0.2], [1, 0, 0]) == pytest.approx(0.75)


def test_image_metrics_undefined_without_anomalous_image(caplog):
    with caplog.at_level(logging.WARNING, logger="bridgenet.metrics"):
        assert np.isnan(M.image_auroc([0.1, 0.2], [0, 0]))
        assert np.isnan(M.image_ap([0.1, 0.2], [0, 0]))
        assert np.isnan(M.image_f1_max([0.1, 0.2], [0, 0]))
    assert "undefined" in caplog.text
    # only anomalous images: AUROC undefined, but AP and F1-max are 1 (every prediction right)
    assert np.isnan(M.image_auroc([0.1, 0.2], [1, 1]))
    assert M.image_ap([0.1, 0.2], [1, 1]) == pytest.approx(1.0)
    assert M.image_f1_max([0.1, 0.2], [1, 1]) == pytest.approx(1.0)


def test_image_scores_non_finite_names_the_sample():
    with pytest.raises(ValueError, match=r"image_scores\[1\]"):
        M.image_auroc([0.1, np.inf, 0.3], [0, 1, 1])
    with pytest.raises(ValueError, match=r"labels"):
        M.image_auroc([0.1, 0.2, 0.3], [0, 2, 1])


def test_auroc_per_defect_and_family_hand_worked():
    scores = [0.1, 0.3, 0.5, 0.2, 0.9]
    types = ["good", "good", "crack", "crack", "hole"]
    # crack vs good: 0.5>0.1, 0.5>0.3, 0.2>0.1, 0.2<0.3 -> 3/4; hole 0.9 beats both -> 1
    assert M.auroc_per_defect(scores, types) == pytest.approx({"crack": 0.75, "hole": 1.0})
    # one family holding all: anomalous 0.5 (2 wins), 0.2 (1), 0.9 (2) of 6 pairs -> 5/6
    fam = M.auroc_per_family(scores, types, {"crack": "geometric", "hole": "geometric"})
    assert fam == pytest.approx({"geometric": 5 / 6})
    fam = M.auroc_per_family(scores, types, {"crack": "geometric", "hole": "both"})
    assert fam == pytest.approx({"both": 1.0, "geometric": 0.75})
    with pytest.raises(ValueError, match="hole"):
        M.auroc_per_family(scores, types, {"crack": "geometric"})
    with pytest.raises(ValueError, match="defect_types"):
        M.auroc_per_defect(scores, types[:3])


def test_auroc_per_defect_without_good_is_nan():
    out = M.auroc_per_defect([0.1, 0.2], ["crack", "hole"])
    assert set(out) == {"crack", "hole"}
    assert all(np.isnan(v) for v in out.values())


# ----------------------------------------------------------------------------- pixel level
def test_pixel_metrics_hand_worked():
    maps = np.array([[[0.9, 0.2, 0.6, 0.4, 0.6]]])
    masks = np.array([[[1, 0, 1, 0, 0]]])
    # anomalous {0.9, 0.6}, good {0.2, 0.4, 0.6}; 0.9 beats 3, 0.6 beats 2 and ties 1 -> 5.5 / 6
    assert M.pixel_auroc(maps, masks) == pytest.approx(5.5 / 6)
    # t=0.9: TP 1 FP 0, P=1, R=1/2; t=0.6: TP 2 FP 1, P=2/3, R=1 -> AP = 1/2 + 1/3
    assert M.pixel_ap(maps, masks) == pytest.approx(5 / 6)


@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_pixel_metrics_match_sklearn(decimals):
    maps, masks = random_case(np.random.default_rng(decimals or 0), decimals=decimals)
    assert M.pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert M.pixel_ap(maps, masks) == pytest.approx(
        average_precision_score(masks.ravel(), maps.ravel())
    )


def test_roc_curve_points_area_is_auroc():
    rng = np.random.default_rng(3)
    maps, masks = random_case(rng, decimals=2)
    fpr, tpr = M.roc_curve_points(maps, masks)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum((tpr[1:] + tpr[:-1]) * np.diff(fpr)) / 2)
    assert area == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    fpr_s, tpr_s = M.roc_curve_points(maps, masks, max_points=40)
    assert len(fpr_s) <= 41 and (fpr_s[-1], tpr_s[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr_s) >= 0) and np.all(np.diff(tpr_s) >= 0)
    # image level, no class -> empty curve
    assert M.roc_curve_points([0.1, 0.2], [0, 0])[0].size == 0


# ----------------------------------------------------------------------------- AU-PRO
def two_region_case():
    """One 1 x 16 image: region A (2 px), region B (4 px), 10 good pixels.

    Layout (columns): A A g B B B B g g g g g g g g g.
    Good scores: 0.05, 0.15, ..., 0.95 (shuffled). A scores 0.6 on both pixels; B scores
    2.0 on two pixels (covered at every threshold) and 0.0 on the other two (never).
    """
    gt = np.zeros(16, dtype=np.uint8)
    gt[[0, 1, 3, 4, 5, 6]] = 1
    row = np.zeros(16)
    row[[0, 1]] = 0.6
    row[[3, 4]] = 2.0
    row[[5, 6]] = 0.0
    good_cols = [2, *range(7, 16)]
    row[good_cols] = np.random.default_rng(0).permutation(np.arange(10) * 0.1 + 0.05)
    return row[None, None, :], gt[None, None, :]


# Hand computation for two_region_case: good scores ascending s_p = 0.05 + 0.1 p, p = 0..9,
# FPR at rank p = 1 - (p + 1) / 10 = (9 - p) / 10.  A is detected iff s_p < 0.6 iff p <= 5,
# i.e. FPR >= 0.4; B is always half detected.  PRO = mean(A, B):
#   FPR 0.0, 0.1, 0.2, 0.3 -> (0 + 1/2) / 2 = 0.25;   FPR 0.4 ... 0.9 -> (1 + 1/2) / 2 = 0.75
# then the point (1, 1).
#   AU-PRO@0.3 = 0.25 * 0.3 / 0.3 = 0.25
#   AU-PRO@0.35: PRO at 0.35 interpolated = 0.5; area = 0.075 + 0.05 * (0.25 + 0.5) / 2
#                = 0.09375 -> / 0.35 = 0.267857142857...
#   AU-PRO@1.0: 0.25 * 0.3 + 0.1 * (0.25 + 0.75) / 2 + 0.75 * 0.5 + 0.1 * (0.75 + 1) / 2
#               = 0.075 + 0.05 + 0.375 + 0.0875 = 0.5875
@pytest.mark.parametrize(
    ("limit", "expected"), [(0.3, 0.25), (0.35, 0.09375 / 0.35), (1.0, 0.5875)]
)
@pytest.mark.parametrize("num_thresholds", [None, 10, M.DEFAULT_NUM_THRESHOLDS])
def test_aupro_two_regions_hand_worked(limit, expected, num_thresholds):
    maps, masks = two_region_case()
    assert M.aupro(maps, masks, limit, num_thresholds) == pytest.approx(expected, abs=1e-9)


def test_pro_curve_two_regions_hand_worked():
    fpr, pro = M.pro_curve_points(*two_region_case(), num_thresholds=None)
    # exact curve keeps only the corners: (0, .25) (0.3, .25) (0.4, .75) (0.9, .75) (1, 1)
    np.testing.assert_allclose(fpr, [0.0, 0.3, 0.4, 0.9, 1.0], atol=1e-12)
    np.testing.assert_allclose(pro, [0.25, 0.25, 0.75, 0.75, 1.0], atol=1e-12)


def test_aupro_default_thresholds_approximate_exact_curve():
    # 1 x (n + 6) image, same regions as two_region_case but n = 10000 good pixels scoring
    # p / n, and A scoring 0.5: A is detected iff p < 5000, i.e. FPR >= 0.5.
    # Exact curve: PRO 0.25 up to FPR 0.4999, 0.75 from 0.5 to 0.9999, then (1, 1):
    #   AU-PRO@1 = 0.25 * 0.4999 + 0.0001 * 0.5 + 0.75 * 0.4999 + 0.0001 * 0.875 = 0.5000375
    #   AU-PRO@0.3 = 0.25 (the jump lies beyond the limit)
    n = 10_000
    gt = np.zeros(n + 6, dtype=bool)
    gt[[0, 1, 3, 4, 5, 6]] = True
    row = np.empty(n + 6)
    row[[0, 1]], row[[3, 4]], row[[5, 6]] = 0.5, 2.0, -1.0
    row[~gt] = np.random.default_rng(1).permutation(np.arange(n) / n)
    maps, masks = row[None, None], gt[None, None]
    assert M.aupro(maps, masks, 1.0, None) == pytest.approx(0.5000375, abs=1e-9)
    assert M.aupro(maps, masks, 0.3, None) == pytest.approx(0.25, abs=1e-9)
    # 2000 ranks are ~5 apart: the jump segment widens to ~1/2000 of FPR
    assert M.aupro(maps, masks, 1.0) == pytest.approx(0.5000375, abs=1e-3)
    assert M.aupro(maps, masks, 0.3) == pytest.approx(0.25, abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_thresholds", [None, 7, 100, 2000])
def test_aupro_matches_slow_reference(seed, num_thresholds):
    rng = np.random.default_rng(seed)
    maps, masks = random_case(rng, decimals=2 if seed % 2 else None)
    fpr, pro = M.pro_curve_points(maps, masks, num_thresholds)
    ref_fpr, ref_pro = reference_pro_curve(maps, masks, num_thresholds)
    # our curve drops collinear / repeated points; every point must lie on the reference
    np.testing.assert_allclose(np.interp(fpr, ref_fpr, ref_pro), pro, atol=1e-12)
    for limit in (0.3, 0.01, 0.05, 1.0):
        expected = reference_aupro(maps, masks, limit, num_thresholds)
        assert M.aupro(maps, masks, limit, num_thresholds) == pytest.approx(expected, abs=1e-9)


def test_aupro_invariant_under_monotone_rescaling():
    maps, masks = random_case(np.random.default_rng(7))
    for num_thresholds in (None, 50):
        base = M.aupro(maps, masks, 0.3, num_thresholds)
        assert M.aupro(np.exp(maps), masks, 0.3, num_thresholds) == pytest.approx(base, abs=1e-12)
        assert M.aupro(3 * maps - 7, masks, 0.3, num_thresholds) == pytest.approx(base, abs=1e-12)
    assert M.pixel_auroc(np.exp(maps), masks) == pytest.approx(M.pixel_auroc(maps, masks))
    assert M.pixel_ap(np.exp(maps), masks) == pytest.approx(M.pixel_ap(maps, masks))


def test_aupro_uses_8_connected_regions():
    # mask pixels (0,0), (1,1), (1,2) touch diagonally: one 8-connected region of 3 pixels
    # (4-connectivity would split it into {(0,0)} and {(1,1),(1,2)}).  Only (0,0) scores
    # above every good pixel, so PRO = 1/3 at every threshold (4-connected: (1 + 0) / 2).
    masks = np.zeros((1, 3, 3), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 2] = True
    maps = np.zeros((1, 3, 3))
    maps[0, 0, 0] = 1.0
    maps[0][~masks[0]] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert M.aupro(maps, masks, 0.3, None) == pytest.approx(1 / 3)


def test_aupro_regions_do_not_connect_across_images():
    # image 0: region {(0,0)} fully detected; image 1: region {(0,0),(0,1)} never detected.
    # Separate regions -> PRO = (1 + 0) / 2 = 0.5 everywhere (merged through the stack: 1/3).
    masks = np.zeros((2, 2, 2), dtype=bool)
    masks[0, 0, 0] = masks[1, 0, 0] = masks[1, 0, 1] = True
    maps = np.zeros((2, 2, 2))
    maps[0, 0, 0] = 1.0
    maps[~masks] = [0.2, 0.3, 0.4, 0.5, 0.6]
    assert M.aupro(maps, masks, 0.3, None) == pytest.approx(0.5)


def test_pro_curve_shape():
    maps, masks = random_case(np.random.default_rng(11))
    fpr, pro = M.pro_curve_points(maps, masks)
    assert fpr[0] == 0.0 and (fpr[-1], pro[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) > 0) and np.all(np.diff(pro) >= 0)
    assert pro.min() >= 0.0


# ----------------------------------------------------------------------------- edge cases
def test_no_anomalous_pixel_is_nan(caplog):
    maps = np.random.default_rng(0).random((2, 4, 4))
    masks = np.zeros((2, 4, 4), dtype=bool)
    with caplog.at_level(logging.WARNING, logger="bridgenet.metrics"):
        assert np.isnan(M.aupro(maps, masks))
        assert np.isnan(M.pixel_auroc(maps, masks))
        assert np.isnan(M.pixel_ap(maps, masks))
        assert M.pro_curve_points(maps, masks)[0].size == 0
    assert "undefined" in caplog.text


def test_no_good_pixel_is_nan():
    maps = np.random.default_rng(0).random((1, 3, 3))
    masks = np.ones((1, 3, 3), dtype=bool)
    assert np.isnan(M.aupro(maps, masks))
    assert np.isnan(M.pixel_auroc(maps, masks))
    assert M.pixel_ap(maps, masks) == pytest.approx(1.0)  # every pixel is a true positive


def test_constant_scores(caplog):
    maps = np.full((2, 4, 4), 0.5)
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 1:3, 1:3] = True
    with caplog.at_level(logging.WARNING, logger="bridgenet.metrics"):
        # no pixel is strictly above any threshold: PRO 0 for every FPR < 1 -> AU-PRO 0
        assert M.aupro(maps, masks, 0.3, None) == 0.0
        assert M.aupro(maps, masks) == 0.0
    assert "no signal" in caplog.text
    # every (anomalous, good) pair tied -> 1/2; AP = prevalence = 4 / 32
    assert M.pixel_auroc(maps, masks) == pytest.approx(0.5)
    assert M.pixel_ap(maps, masks) == pytest.approx(4 / 32)
    assert M.image_auroc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_map_names_the_sample(bad):
    maps, masks = random_case(np.random.default_rng(0))
    maps[2, 3, 4] = bad
    for fn in (M.aupro, M.pixel_auroc, M.pixel_ap, M.pro_curve_points):
        with pytest.raises(ValueError, match=r"anomaly_maps\[2\]"):
            fn(maps, masks)


def test_invalid_arguments():
    maps, masks = random_case(np.random.default_rng(0))
    with pytest.raises(ValueError, match="limit"):
        M.aupro(maps, masks, limit=0.0)
    with pytest.raises(ValueError, match="limit"):
        M.aupro(maps, masks, limit=1.5)
    with pytest.raises(ValueError, match="num_thresholds"):
        M.aupro(maps, masks, num_thresholds=1)
    with pytest.raises(TypeError, match="num_thresholds"):
        M.aupro(maps, masks, num_thresholds=2.5)
    with pytest.raises(ValueError, match="masks"):
        M.aupro(maps, masks.astype(np.uint8) * 255)
    with pytest.raises(ValueError, match="masks"):
        M.aupro(maps, masks[:, :-1])
    with pytest.raises(ValueError, match="anomaly_maps"):
        M.aupro(maps[0], masks[0])


# ----------------------------------------------------------------------------- compute_all
def test_compute_all_keys_and_consistency():
    rng = np.random.default_rng(5)
    maps, masks = random_case(rng, n=6)
    labels = masks.reshape(6, -1).any(axis=1).astype(int)
    scores = maps.reshape(6, -1).max(axis=1)
    out = M.compute_all(scores, labels, maps, masks, num_thresholds=None)
    assert tuple(out) == M.METRIC_KEYS
    assert out["n_test"] == 6 and out["n_anomalous"] == int(labels.sum())
    assert isinstance(out["n_test"], int) and isinstance(out["n_anomalous"], int)
    assert out["image_auroc"] == pytest.approx(M.image_auroc(scores, labels))
    assert out["image_ap"] == pytest.approx(M.image_ap(scores, labels))
    assert out["image_f1_max"] == pytest.approx(M.image_f1_max(scores, labels))
    assert out["pixel_auroc"] == pytest.approx(M.pixel_auroc(maps, masks))
    assert out["pixel_ap"] == pytest.approx(M.pixel_ap(maps, masks))
    assert out["aupro_30"] == pytest.approx(reference_aupro(maps, masks, 0.3, None))
    assert out["aupro_1"] == pytest.approx(reference_aupro(maps, masks, 0.01, None))


def test_compute_all_without_anomalous_image():
    maps = np.random.default_rng(0).random((3, 5, 5))
    out = M.compute_all(maps.max(axis=(1, 2)), [0, 0, 0], maps, np.zeros((3, 5, 5)))
    assert out["n_anomalous"] == 0 and out["n_test"] == 3
    for key in M.METRIC_KEYS[:7]:
        assert np.isnan(out[key]), key


def test_compute_all_rejects_inconsistent_inputs():
    maps, masks = random_case(np.random.default_rng(0), n=3)
    labels = np.array([1, 1, 0])
    scores = np.array([0.9, 0.8, 0.1])
    bad_labels = np.array([1, 0, 0])  # image 1 has mask pixels
    with pytest.raises(ValueError, match=r"masks\[1\]"):
        M.compute_all(scores, bad_labels, maps, masks)
    with pytest.raises(ValueError, match="anomaly_maps"):
        M.compute_all(scores[:2], labels[:2], maps, masks)
    scores[2] = np.nan
    with pytest.raises(ValueError, match=r"image_scores\[2\]"):
        M.compute_all(scores, labels, maps, masks)
