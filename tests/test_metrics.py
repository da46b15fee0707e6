"""Tests of chipjax.metrics: hand-computed cases, scipy references, hypothesis properties."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from chipjax import metrics as M
from chipjax.errors import InputError

# --- auc -------------------------------------------------------------------------------------------


def test_auc_of_known_curves():
    xs = np.linspace(0, 1, 11)
    assert M.auc(xs, xs) == pytest.approx(0.5)
    assert M.auc(xs, 1 - xs) == pytest.approx(0.5)
    assert M.auc(xs, np.ones(11)) == pytest.approx(1.0)
    # trapezoid rule on a coarse grid over-estimates x^2: (1/3 + h^2/6) with h = 0.5
    assert M.auc([0, 0.5, 1], [0, 0.25, 1]) == pytest.approx(0.375)
    batched = M.auc(xs, np.stack([xs, np.ones(11), np.zeros(11)]))
    np.testing.assert_allclose(batched, [0.5, 1.0, 0.0])


def test_auc_rejects_mismatched_shapes():
    with pytest.raises(InputError):
        M.auc([0, 1, 2], [0, 1])


# --- IoU -------------------------------------------------------------------------------------------


def test_box_iou_known_boxes():
    a = [0, 0, 10, 10]
    assert M.box_iou(a, a) == pytest.approx(1.0)  # identical
    assert M.box_iou(a, [20, 20, 30, 30]) == 0.0  # disjoint
    assert M.box_iou(a, [10, 0, 20, 10]) == 0.0  # touching edges: exclusive x1 means no shared pixel
    assert M.box_iou(a, [2, 2, 7, 7]) == pytest.approx(25 / 100)  # contained
    assert M.box_iou(a, [5, 0, 15, 10]) == pytest.approx(50 / 150)  # half overlap
    assert M.box_iou(a, [5, 5, 15, 15]) == pytest.approx(25 / 175)


def test_box_iou_zero_area_and_broadcast():
    assert M.box_iou([3, 3, 3, 3], [3, 3, 3, 3]) == 0.0
    assert M.box_iou([5, 5, 2, 2], [0, 0, 10, 10]) == 0.0  # inverted box has no area
    ious = M.box_iou(np.array([[0, 0, 10, 10], [0, 0, 5, 10]])[:, None], np.array([[0, 0, 10, 10], [5, 0, 10, 10], [0, 0, 0, 0]])[None])
    np.testing.assert_allclose(ious, [[1.0, 0.5, 0.0], [0.5, 0.0, 0.0]])


box_strategy = st.tuples(*[st.floats(-50, 50, allow_nan=False)] * 4)


@settings(max_examples=200, deadline=None)
@given(box_strategy, box_strategy)
def test_box_iou_symmetric_and_bounded(a, b):
    ab, ba = M.box_iou(a, b), M.box_iou(b, a)
    assert ab == pytest.approx(ba, abs=1e-12)
    assert 0.0 <= ab <= 1.0
    assert np.isfinite(ab)


def test_resize_and_crop_boxes():
    np.testing.assert_allclose(M.resize_boxes([[10, 20, 30, 40]], (100, 50), (50, 100)), [[20, 10, 60, 20]])
    np.testing.assert_allclose(M.crop_boxes([[10, 20, 30, 40], [0, 0, 5, 5]], (15, 5), (20, 20)), [[5, 5, 20, 20], [0, 0, 0, 0]])


# --- boxes from maps ---------------------------------------------------------------------------------


def two_blob_map() -> np.ndarray:
    m = np.zeros((10, 12))
    m[1:3, 1:4] = 1.0  # small strong blob: 6 px, cols 1..3, rows 1..2
    m[5:9, 6:11] = 0.5  # large weaker blob: 20 px, cols 6..10, rows 5..8
    return m


def test_map_to_box_picks_largest_component():
    m = two_blob_map()
    np.testing.assert_array_equal(M.map_to_box(m, 0.2), [6, 5, 11, 9])
    # above the weak blob's level only the strong one is left
    np.testing.assert_array_equal(M.map_to_box(m, 0.6), [1, 1, 4, 3])


def test_map_to_box_uses_8_connectivity():
    m = np.zeros((6, 6))
    m[[0, 1, 2, 3], [0, 1, 2, 3]] = 1.0  # a diagonal line: one 8-connected component of 4 px
    m[5, 0:3] = 1.0  # a 3 px row
    np.testing.assert_array_equal(M.map_to_box(m, 0.5), [0, 0, 4, 4])


def test_map_to_box_degenerate_maps():
    np.testing.assert_array_equal(M.map_to_box(np.zeros((4, 7))), [0, 0, 7, 4])  # all zero: whole image
    np.testing.assert_array_equal(M.map_to_box(-np.ones((4, 7))), [0, 0, 7, 4])  # negatives count as 0
    np.testing.assert_array_equal(M.map_to_box(two_blob_map(), 0.0), [0, 0, 12, 10])
    with pytest.raises(InputError):
        M.map_to_box(np.full((3, 3), np.nan))
    with pytest.raises(InputError):
        M.map_to_box(np.zeros((2, 3, 3)))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.integers(0, 2**31 - 1),
    st.floats(0.0, 1.0),
)
def test_map_to_box_inside_image(h, w, seed, threshold):
    m = np.random.default_rng(seed).random((h, w)) ** 3
    x0, y0, x1, y1 = M.map_to_box(m, threshold)
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert threshold > 0 or (x0, y0, x1, y1) == (0, 0, w, h)
    # the box is tight around kept pixels: each of its edge rows/columns holds one
    kept = (m >= threshold * m.max())[int(y0) : int(y1), int(x0) : int(x1)]
    assert kept[0].any() and kept[-1].any() and kept[:, 0].any() and kept[:, -1].any()


# --- localisation ------------------------------------------------------------------------------------


def test_localization_correct():
    m = two_blob_map()
    assert M.localization_correct(m, np.array([[6, 5, 11, 9]]), 0.2)
    assert M.localization_correct(m, np.array([[0, 0, 2, 2], [6, 5, 10, 9]]), 0.2)  # IoU 0.8 with the 2nd
    assert not M.localization_correct(m, np.array([[1, 1, 4, 3]]), 0.2)
    assert M.localization_correct(m, np.array([[1, 1, 4, 3]]), 0.6)
    assert not M.localization_correct(m, np.zeros((0, 4)), 0.2)


def test_localization_errors_cam_protocol():
    m = two_blob_map()
    maps = np.stack([m, m, m, m])
    good, bad = np.array([[6, 5, 11, 9]]), np.array([[0, 0, 2, 2]])
    gt = [good, good, bad, good]
    labels = np.array([3, 3, 3, 3])
    pred = np.array(
        [
            [3, 1, 2, 4, 5],  # top-1 right, box right
            [1, 3, 2, 4, 5],  # top-5 right, box right
            [3, 1, 2, 4, 5],  # top-1 right, box wrong
            [0, 1, 2, 4, 5],  # class wrong, box right
        ]
    )
    err = M.localization_errors(maps, gt, pred, labels, threshold=0.2)
    assert err["top1_loc_err"] == pytest.approx(3 / 4)
    assert err["top5_loc_err"] == pytest.approx(2 / 4)
    assert err["gt_known_loc_err"] == pytest.approx(1 / 4)
    assert err["top1_cls_err"] == pytest.approx(2 / 4)
    assert err["top5_cls_err"] == pytest.approx(1 / 4)
    with pytest.raises(InputError):
        M.localization_errors(maps, gt, pred[:3], labels)


def test_max_box_acc_picks_best_threshold():
    m = two_blob_map()
    strong, weak = np.array([[1, 1, 4, 3]]), np.array([[6, 5, 11, 9]])
    # image 0 wants the weak blob (thresholds <= 0.5), images 1, 2 the strong one (thresholds > 0.5)
    out = M.max_box_acc(np.stack([m, m, m]), [weak, strong, strong], thresholds=[0.0, 0.3, 0.5, 0.7, 1.0])
    np.testing.assert_allclose(out["accuracy"], [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert out["max_box_acc"] == pytest.approx(2 / 3)
    assert out["best_threshold"] == pytest.approx(0.7)
    default = M.max_box_acc(np.stack([m]), [weak])
    assert default["thresholds"].shape == (100,) and default["max_box_acc"] == 1.0


# --- pointing game -------------------------------------------------------------------------------------


def test_pointing_game_hits_and_tolerance():
    maps = np.zeros((4, 40, 40))
    maps[0, 10, 10] = 1  # inside the box
    maps[1, 10, 30] = 1  # 6 px right of the last covered column (24)
    maps[2, 35, 35] = 1  # (11, 11) px off the corner (24, 24): distance 15.56
    maps[3, 10, 10] = 1  # no boxes
    box = np.array([[5, 5, 25, 25]])
    gts = [box, box, box, np.zeros((0, 4))]
    np.testing.assert_array_equal(M.pointing_game(maps, gts, tolerance=0), [True, False, False, False])
    np.testing.assert_array_equal(M.pointing_game(maps, gts, tolerance=5), [True, False, False, False])
    np.testing.assert_array_equal(M.pointing_game(maps, gts, tolerance=6), [True, True, False, False])
    np.testing.assert_array_equal(M.pointing_game(maps, gts, tolerance=15), [True, True, False, False])
    np.testing.assert_array_equal(M.pointing_game(maps, gts, tolerance=16), [True, True, True, False])
    # any of several boxes counts
    assert M.pointing_game(maps[2:3], [np.array([[0, 0, 2, 2], [34, 34, 36, 36]])], tolerance=0)[0]


# --- deletion / insertion -------------------------------------------------------------------------------


def test_gaussian_blur_matches_scipy(rng):
    x = rng.random((2, 9, 13, 3))
    for sigma in (0.7, 2.0, 6.0):  # 6.0: radius 24, wider than the image
        want = scipy.ndimage.gaussian_filter(x, (0, sigma, sigma, 0), mode="reflect", truncate=4.0)
        np.testing.assert_allclose(M.gaussian_blur(x, sigma), want, atol=1e-6)


def region_score_fn(region: np.ndarray):
    """Probability of class 1 = mean of channel 0 over ``region``; class 0 = 1 minus that."""

    def score(images):
        p = (images[..., 0] * region).sum(axis=(1, 2)) / region.sum()
        return np.stack([1 - p, p], axis=1)

    return score


def test_deletion_insertion_analytic():
    s = 8
    region = np.zeros((s, s))
    region[:4, :4] = 1.0  # 16 of 64 pixels: a quarter of the image
    images = np.ones((2, s, s, 3), np.float32)
    ramp = np.arange(s * s, dtype=np.float64).reshape(s, s) / (s * s)  # distinct values, no ties
    good = region + 0.01 * ramp  # the region first
    bad = (1 - region) + 0.01 * ramp  # the region last
    calls = []

    def score(batch):
        calls.append(len(batch))
        return region_score_fn(region)(batch)

    # fractions k/16: the score is linear in the number of region pixels changed, exact under the trapezoid rule
    out = M.deletion_insertion(score, images, np.stack([good, bad]), [1, 1], steps=17, baseline="constant", fill=0.0, batch=10)
    # good map: the score falls 1 -> 0 over the first quarter, then stays 0
    np.testing.assert_allclose(out["deletion_auc"], [0.125, 0.875], atol=1e-12)
    np.testing.assert_allclose(out["insertion_auc"], [0.875, 0.125], atol=1e-12)
    curves = out["curves"]
    np.testing.assert_allclose(curves["fractions"], np.linspace(0, 1, 17))
    np.testing.assert_allclose(curves["deletion"][0, :5], [1, 0.75, 0.5, 0.25, 0])
    np.testing.assert_allclose(curves["insertion"][1, -5:], [0, 0.25, 0.5, 0.75, 1])
    # 2 images x 2 modes x 17 steps = 68 images in chunks of exactly 10
    assert calls == [10] * 7


def test_deletion_insertion_blur_baseline_endpoints(rng):
    images = rng.random((1, 16, 16, 3)).astype(np.float32)
    maps = rng.random((1, 16, 16))

    def mean_red(batch):
        p = batch[..., 0].mean(axis=(1, 2))
        return np.stack([p, 1 - p], axis=1)

    out = M.deletion_insertion(mean_red, images, maps, [0], steps=5, baseline="blur", sigma=2.0)
    blurred = M.gaussian_blur(images, 2.0)
    c = out["curves"]
    # deletion starts at the image and ends at its blur; insertion the other way round
    assert c["deletion"][0, 0] == pytest.approx(images[0, ..., 0].mean(), abs=1e-6)
    assert c["deletion"][0, -1] == pytest.approx(blurred[0, ..., 0].mean(), abs=1e-6)
    assert c["insertion"][0, 0] == pytest.approx(blurred[0, ..., 0].mean(), abs=1e-6)
    assert c["insertion"][0, -1] == pytest.approx(images[0, ..., 0].mean(), abs=1e-6)
    # a pair of baselines: deletion to a constant, insertion from the blur
    pair = M.deletion_insertion(mean_red, images, maps, [0], steps=5, baseline=("constant", "blur"), fill=0.25, sigma=2.0)
    assert pair["curves"]["deletion"][0, -1] == pytest.approx(0.25)
    np.testing.assert_allclose(pair["curves"]["insertion"], c["insertion"])


def test_deletion_insertion_rejects_bad_inputs():
    f = region_score_fn(np.ones((4, 4)))
    with pytest.raises(InputError):
        M.deletion_insertion(f, np.ones((1, 4, 4, 3)), np.ones((1, 5, 5)), [0])
    with pytest.raises(InputError):
        M.deletion_insertion(f, np.ones((1, 4, 4, 3)), np.ones((1, 4, 4)), [0], baseline="noise")


# --- rank correlation / sanity check -------------------------------------------------------------------


def test_rank_correlation_matches_scipy(rng):
    a = rng.random((6, 5))
    b = a + 0.5 * rng.random((6, 5))
    assert M.rank_correlation(a, b) == pytest.approx(scipy.stats.spearmanr(a.ravel(), b.ravel())[0], abs=1e-12)
    # ties get average ranks, as in scipy
    ta, tb = np.round(a * 3), np.round(b * 2)
    assert M.rank_correlation(ta, tb) == pytest.approx(scipy.stats.spearmanr(ta.ravel(), tb.ravel())[0], abs=1e-12)
    assert M.rank_correlation(a, a) == pytest.approx(1.0)
    assert M.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert M.rank_correlation(a, np.zeros_like(a)) == 0.0  # constant: defined as 0


def test_rank_correlations_batched(rng):
    a, b = rng.random((3, 4, 4)), rng.random((3, 4, 4))
    want = [scipy.stats.spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a, b)]
    np.testing.assert_allclose(M.rank_correlations(a, b), want, atol=1e-12)


def test_sanity_check(rng):
    trained = rng.random((4, 8, 8))
    out = M.sanity_check(trained, {"none": trained.copy(), "all": rng.random((4, 8, 8)), "flipped": -trained})
    assert out["none"] == pytest.approx(1.0)
    assert abs(out["all"]) < 0.3
    assert out["flipped"] == pytest.approx(-1.0)
    assert M.sanity_check(trained, {"flipped": -trained}, absolute=True)["flipped"] == pytest.approx(1.0)


def test_randomize_top_layers():
    trained = {"params": {"a": {"w": 1}, "b": {"w": 2}, "c": {"w": 3}}, "batch_stats": {"b": {"m": 2}}}
    fresh = {"params": {"a": {"w": -1}, "b": {"w": -2}, "c": {"w": -3}}, "batch_stats": {"b": {"m": -2}}}
    out = M.randomize_top_layers(trained, fresh, ["a", "b", "c"], 2)
    assert out == {"params": {"a": {"w": 1}, "b": {"w": -2}, "c": {"w": -3}}, "batch_stats": {"b": {"m": -2}}}
    assert trained["params"]["c"] == {"w": 3}  # not modified
    assert M.randomize_top_layers(trained, fresh, ["a", "b", "c"], 0) == trained
    with pytest.raises(InputError):
        M.randomize_top_layers(trained, fresh, ["a", "x"], 1)
