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


# --- MaxBoxAccV2 -------------------------------------------------------------------------------------------


def v2_map():
    """12x12: a small strong blob A (value 1, box (1, 1, 4, 3), 6 px) and a large weak blob B (0.5, box (6, 5, 11, 9), 20 px)."""
    m = np.zeros((12, 12))
    m[1:3, 1:4] = 1.0
    m[5:9, 6:11] = 0.5
    return m


def test_component_boxes_every_component_and_empty():
    boxes = M.component_boxes(v2_map() > 0)
    np.testing.assert_array_equal(boxes, [[1, 1, 4, 3], [6, 5, 11, 9]])
    assert M.component_boxes(np.zeros((4, 4), bool)).shape == (0, 4)
    ring = np.zeros((5, 5), bool)
    ring[0, :] = ring[-1, :] = ring[:, 0] = ring[:, -1] = True  # one component with a hole
    np.testing.assert_array_equal(M.component_boxes(ring), [[0, 0, 5, 5]])


def test_max_box_acc_v2_hand_computed():
    m = v2_map()
    a, b = np.array([[1, 1, 4, 3]]), np.array([[6, 5, 11, 9]])
    half_a = np.array([[1, 1, 4, 5]])  # area 12, holds A (6 px): IoU 0.5 with A's box
    ts = [0.0, 0.25, 0.5, 0.75]
    out = M.max_box_acc_v2(np.stack([m, m, m]), [a, b, half_a], thresholds=ts)
    # t=0: the whole image (IoU 6/144, 20/144, 12/144: all miss); t<=0.5: A and B; t>0.5: A alone
    np.testing.assert_allclose(out["accuracy"][0], [0, 1, 1, 2 / 3])  # IoU 0.3
    np.testing.assert_allclose(out["accuracy"][1], [0, 1, 1, 2 / 3])  # IoU 0.5
    np.testing.assert_allclose(out["accuracy"][2], [0, 2 / 3, 2 / 3, 1 / 3])  # IoU 0.7: half_a never
    assert out["per_iou"] == pytest.approx({0.3: 1.0, 0.5: 1.0, 0.7: 2 / 3})
    assert out["max_box_acc_v2"] == pytest.approx(8 / 9)
    # ties between thresholds 0.25 and 0.5 go to the lower one
    assert out["best_thresholds"] == {0.3: 0.25, 0.5: 0.25, 0.7: 0.25}
    # the first version boxes only the largest component (B at t <= 0.5): 2/3 at IoU 0.5, not 1
    v1 = M.max_box_acc(np.stack([m, m, m]), [a, b, half_a], thresholds=ts)
    assert v1["max_box_acc"] == pytest.approx(2 / 3)


def test_max_box_acc_v2_min_max_normalises():
    m = v2_map()
    shifted = 3.0 + 2.0 * m  # same map up to an affine change: same boxes at every threshold
    gt = [np.array([[1, 1, 4, 3]])]
    a = M.max_box_acc_v2(m[None], gt, thresholds=[0.3, 0.7])["accuracy"]
    b = M.max_box_acc_v2(shifted[None], gt, thresholds=[0.3, 0.7])["accuracy"]
    np.testing.assert_array_equal(a, b)


def test_max_box_acc_v2_constant_and_empty_maps_are_defined():
    whole = [np.array([[0, 0, 8, 8]])]
    for m in (np.zeros((8, 8)), np.full((8, 8), 0.3)):
        out = M.max_box_acc_v2(m[None], whole)
        # normalised to zeros: the whole-image box at t=0 only, which is the GT here
        np.testing.assert_array_equal(out["accuracy"][:, 0], [1, 1, 1])
        np.testing.assert_array_equal(out["accuracy"][:, 1:], 0)
        assert out["max_box_acc_v2"] == 1.0 and np.isfinite(out["accuracy"]).all()
    # no GT box: never correct
    out = M.max_box_acc_v2(v2_map()[None], [np.zeros((0, 4))])
    assert out["max_box_acc_v2"] == 0.0
    with pytest.raises(InputError):
        M.max_box_acc_v2(v2_map()[None], [])


# --- PxAP ----------------------------------------------------------------------------------------------------


def test_pxap_matches_sklearn_average_precision(rng):
    from sklearn.metrics import average_precision_score

    levels = np.array([0.0, 0.1003, 0.3507, 0.6004, 0.8502, 1.0])  # distinct values in distinct bins
    maps = levels[rng.integers(0, len(levels), (3, 10, 12))]
    maps[:, 0, 0], maps[:, 0, 1] = 0.0, 1.0  # min 0, max 1: normalisation leaves the values alone
    masks = rng.random((3, 10, 12)) < 0.3
    got = M.pxap(maps, masks)["pxap"]
    want = average_precision_score(masks.ravel(), maps.ravel())
    assert got == pytest.approx(want, abs=1e-12)


def test_pxap_hand_cases():
    mask = np.zeros((1, 4, 4), bool)
    mask[0, :2, :2] = True  # 4 of 16 pixels
    assert M.pxap(mask.astype(float), mask)["pxap"] == pytest.approx(1.0)  # the mask itself
    assert M.pxap(np.zeros((1, 4, 4)), mask)["pxap"] == pytest.approx(0.25)  # constant: the object fraction
    inverted = M.pxap(1.0 - mask, mask)["pxap"]
    # background first: precision 0 until every pixel is predicted, then 4/16
    assert inverted == pytest.approx(0.25)
    with pytest.raises(InputError):
        M.pxap(np.zeros((1, 4, 4)), np.zeros((1, 4, 4), bool))


def test_pxap_histograms_sum_over_images():
    rng = np.random.default_rng(3)
    maps, masks = rng.random((4, 6, 6)), rng.random((4, 6, 6)) < 0.5
    h = M.pxap_histograms(maps, masks, bin_width=0.01)
    assert h.shape == (4, 2, 102) and h.sum() == 4 * 36
    assert M.pxap_from_histograms(h)["pxap"] == pytest.approx(M.pxap(maps, masks, 0.01)["pxap"])


def test_boxes_to_mask_pixel_centres():
    m = M.boxes_to_mask([[1, 0, 3, 2], [2.6, 3.4, 4, 4]], (4, 4))
    want = np.zeros((4, 4), bool)
    want[0:2, 1:3] = True
    want[3, 3] = True  # centre (3.5, 3.5) inside (2.6..4, 3.4..4); (2.5, 3.5) not
    np.testing.assert_array_equal(m, want)
    assert not M.boxes_to_mask(np.zeros((0, 4)), (3, 3)).any()


# --- references in PyTorch: a tiny CNN scored by pytorch-grad-cam and by us ------------------------------


@pytest.fixture(scope="module")
def torch_net():
    """A tiny random CNN (3 -> 4 channels, pooled, 5 classes) and the same network as a NHWC score_fn."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(16, 5)).eval()

    def score_fn(images):
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2)))
            return torch.softmax(net(x), dim=1).numpy()

    return torch, net, score_fn


def _nchw(torch, x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def test_confidence_change_matches_pytorch_grad_cam(torch_net, rng):
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    torch, net, score_fn = torch_net
    images = rng.standard_normal((5, 12, 12, 3)).astype(np.float32)
    maps = rng.random((5, 12, 12)).astype(np.float32)
    maps[0] = 1.0  # the image itself: no drop, no increase
    targets = [0, 1, 2, 3, 4]
    ours = M.confidence_change(score_fn, images, maps, targets, batch=4)
    tt = [ClassifierOutputSoftmaxTarget(t) for t in targets]
    drop = DropInConfidence()(_nchw(torch, images), maps, tt, net)  # max(Y - O, 0), not divided by Y
    increase = IncreaseInConfidence()(_nchw(torch, images), maps, tt, net)
    np.testing.assert_allclose(ours["drop"] * ours["score"], drop.ravel(), atol=1e-6)
    np.testing.assert_array_equal(ours["increase"], increase.ravel() > 0)
    assert ours["drop"][0] == pytest.approx(0.0, abs=1e-6) and not ours["increase"][0]
    # Grad-CAM++'s definition divides by the score on the image
    y = score_fn(images)[np.arange(5), targets]
    np.testing.assert_allclose(ours["score"], y, rtol=1e-6)


def test_confidence_change_zero_map_is_defined():
    f = region_score_fn(np.ones((4, 4)))
    out = M.confidence_change(f, np.ones((2, 4, 4, 3)), np.zeros((2, 4, 4)), [1, 0])
    np.testing.assert_allclose(out["drop"], [1.0, 0.0])  # class 1 loses everything; class 0 gains
    np.testing.assert_array_equal(out["increase"], [False, True])


def test_noisy_linear_imputation_matches_pytorch_grad_cam(torch_net, rng):
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    torch = torch_net[0]
    image = rng.standard_normal((9, 11, 3)).astype(np.float32)
    removed = rng.random((9, 11)) < 0.6
    removed[0, :] = True  # a removed border row
    want = NoisyLinearImputer(noise=0.0)(_nchw(torch, image[None])[0], torch.from_numpy((~removed).astype(np.float32)))
    got = M.noisy_linear_impute(image, removed, noise=0.0)
    np.testing.assert_allclose(got, want.numpy().transpose(1, 2, 0), atol=1e-5)
    np.testing.assert_array_equal(got[~removed], image[~removed])
    # the noise: only on removed pixels, of the asked standard deviation
    noisy = M.noisy_linear_impute(image, removed, noise=0.01, rng=np.random.default_rng(1))
    diff = noisy - got
    assert np.all(diff[~removed] == 0) and 0.008 < diff[removed].std() < 0.012
    # everything removed: the channel means, never NaN
    np.testing.assert_allclose(M.noisy_linear_impute(image, np.ones((9, 11), bool), 0.0),
                               np.broadcast_to(image.mean(axis=(0, 1)), image.shape), atol=1e-6)


def test_road_matches_pytorch_grad_cam(torch_net, rng):
    from pytorch_grad_cam.metrics.perturbation_confidence import (PerturbationConfidenceMetric,
                                                                  RemoveLeastRelevantFirst, RemoveMostRelevantFirst)
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    torch, net, score_fn = torch_net
    images = rng.standard_normal((3, 10, 10, 3)).astype(np.float32)
    maps = rng.random((3, 10, 10)).astype(np.float32)
    targets = [1, 3, 4]
    ps = [10, 30, 50, 70, 90]
    ours = M.road(score_fn, images, maps, targets, percentiles=ps, noise=0.0, batch=8)
    x, tt = _nchw(torch, images), [ClassifierOutputSoftmaxTarget(t) for t in targets]
    # pytorch-grad-cam's ROADMostRelevantFirst / ROADLeastRelevantFirst with the noise switched off
    morf = np.stack([PerturbationConfidenceMetric(RemoveMostRelevantFirst(p, NoisyLinearImputer(noise=0.0)))(x, maps, tt, net)
                     for p in ps], axis=1).reshape(3, len(ps))
    lerf = np.stack([PerturbationConfidenceMetric(RemoveLeastRelevantFirst(p, NoisyLinearImputer(noise=0.0)))(x, maps, tt, net)
                     for p in ps], axis=1).reshape(3, len(ps))
    np.testing.assert_allclose(ours["morf"] - ours["score"][:, None], morf, atol=2e-6)
    np.testing.assert_allclose(ours["lerf"] - ours["score"][:, None], lerf, atol=2e-6)
    np.testing.assert_allclose(ours["combined"], (lerf.mean(1) - morf.mean(1)) / 2, atol=2e-6)  # ROADCombined
    # MoRF at percentile 10 removes the top 90 %
    assert M.road_removed(maps[0], 10, "morf").mean() == pytest.approx(0.9)
    assert M.road_removed(maps[0], 90, "lerf").mean() == pytest.approx(0.1)
    # noise is seeded: the same numbers twice
    a = M.road(score_fn, images[:1], maps[:1], targets[:1], percentiles=[50], seed=3)
    b = M.road(score_fn, images[:1], maps[:1], targets[:1], percentiles=[50], seed=3)
    np.testing.assert_array_equal(a["combined"], b["combined"])


def test_road_constant_map_is_defined(torch_net):
    score_fn = torch_net[2]
    out = M.road(score_fn, np.ones((1, 6, 6, 3), np.float32), np.zeros((1, 6, 6)), [0], percentiles=[50])
    assert np.isfinite(out["combined"]).all()


# --- RISE's deletion / insertion --------------------------------------------------------------------------


def rise_reference(torch, net, img, explanation, mode, step):
    """RISE's ``CausalMetric.single_run`` (evaluation.py of the RISE repository), transcribed to torch:
    the class is the top-1 of the image, deletion substrate zeros, insertion from the gkern(11, 5) blur."""
    n_ch, h, w = img.shape[1:]
    hw = h * w
    impulse = np.zeros((11, 11))
    impulse[5, 5] = 1
    k = scipy.ndimage.gaussian_filter(impulse, 5)
    kern = np.zeros((n_ch, n_ch, 11, 11), np.float32)
    for i in range(n_ch):
        kern[i, i] = k
    kern = torch.from_numpy(kern)
    with torch.no_grad():
        c = int(torch.argmax(net(img), 1)[0])
        n_steps = (hw + step - 1) // step
        if mode == "del":
            start, finish = img.clone(), torch.zeros_like(img)
        else:
            start, finish = torch.nn.functional.conv2d(img, kern, padding=5), img.clone()
        scores = np.empty(n_steps + 1)
        order = np.flip(np.argsort(explanation.reshape(-1, hw), axis=1), axis=-1)
        for i in range(n_steps + 1):
            scores[i] = torch.softmax(net(start), 1)[0, c].item()
            if i < n_steps:
                coords = order[:, step * i: step * (i + 1)]
                s, f = start.numpy().reshape(1, n_ch, hw), finish.numpy().reshape(1, n_ch, hw)
                s[0, :, coords] = f[0, :, coords]
                start = torch.from_numpy(s.reshape(img.shape))
    return (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (len(scores) - 1), scores


def test_deletion_insertion_rise_protocol_matches_the_reference(torch_net, rng):
    torch, net, score_fn = torch_net
    images = rng.standard_normal((2, 10, 10, 3)).astype(np.float32)
    maps = rng.random((2, 10, 10))
    targets = score_fn(images).argmax(axis=1)
    steps = 8  # step = ceil(100 / 7) = 15 px: 7 steps, the last one partial (10 px)
    ours = M.deletion_insertion(score_fn, images, maps, targets, steps=steps, protocol="rise", batch=16)
    for b in range(2):
        img = _nchw(torch, images[b:b + 1])
        for mode, key in (("del", "deletion"), ("ins", "insertion")):
            want_auc, want_curve = rise_reference(torch, net, img, maps[b], mode, 15)
            np.testing.assert_allclose(ours["curves"][key][b], want_curve, atol=1e-6)
            assert ours[f"{key}_auc"][b] == pytest.approx(want_auc, abs=1e-6)
    np.testing.assert_allclose(ours["curves"]["fractions"], [0, .15, .3, .45, .6, .75, .9, 1.0])
    with pytest.raises(InputError):
        M.deletion_insertion(score_fn, images, maps, targets, protocol="nope")


def test_rise_blur_is_a_zero_padded_convolution(rng):
    x = rng.random((1, 13, 14, 2))
    k = M.rise_kernel()
    want = np.stack([scipy.ndimage.convolve(x[0, ..., c], k, mode="constant") for c in range(2)], axis=-1)
    np.testing.assert_allclose(M.rise_blur(x)[0], want, atol=1e-6)


# --- bootstrap intervals ------------------------------------------------------------------------------------


def test_bootstrap_interval_agrees_with_scipy(rng):
    # continuous values and many resamples: the two percentile intervals differ only by their resampling noise
    # (about 0.1 standard errors of the mean here), not by the 1/B steps a small binary sample would quantise to
    values = rng.random(200)
    lo, hi = M.bootstrap_interval(values, n_resamples=20000, seed=0)
    ref = scipy.stats.bootstrap((values,), np.mean, n_resamples=20000, method="percentile", random_state=0)
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.25 * se)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.25 * se)
    assert lo < values.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_bootstrap_interval_deterministic_and_statistic(rng):
    values = rng.random(20)
    assert M.bootstrap_interval(values, seed=5) == M.bootstrap_interval(values, seed=5)
    assert M.bootstrap_interval(values[:1]) == (values[0], values[0])
    # any statistic over rows, e.g. MaxBoxAcc's best-threshold accuracy of a (B, T) correctness matrix
    bits = np.zeros((10, 3), bool)
    bits[:, 1] = True
    assert M.bootstrap_interval(bits, lambda r: float(r.mean(axis=0).max())) == (1.0, 1.0)
    with pytest.raises(InputError):
        M.bootstrap_interval(np.zeros(0))


@pytest.mark.parametrize("protocol", ["rise", "chipjax"])
def test_deletion_insertion_batched_equals_the_chunked_loop(rng, protocol):
    import jax
    import jax.numpy as jnp

    weights = jnp.asarray(rng.standard_normal((12, 12, 3, 4)).astype(np.float32) * 0.3)

    def prob_fn(x):  # a linear classifier on the pixels, softmax over 4 classes
        return jax.nn.softmax(jnp.einsum("bhwc,hwck->bk", x, weights), axis=-1)

    images = rng.standard_normal((3, 12, 12, 3)).astype(np.float32)
    maps = rng.random((3, 12, 12))
    targets = [0, 2, 3]
    loop = M.deletion_insertion(lambda x: np.asarray(prob_fn(jnp.asarray(x))), images, maps, targets, steps=7,
                                protocol=protocol, sigma=1.5, batch=5)
    dev = M.deletion_insertion_batched(prob_fn, images, maps, targets, steps=7, protocol=protocol, sigma=1.5)
    for key in ("deletion", "insertion"):  # float32 sums over 432 pixels, in batches of another size
        np.testing.assert_allclose(dev["curves"][key], loop["curves"][key], atol=1e-5)
        np.testing.assert_allclose(dev[f"{key}_auc"], loop[f"{key}_auc"], atol=1e-5)
    np.testing.assert_array_equal(dev["curves"]["fractions"], loop["curves"]["fractions"])


# --- similarities and relevance, against Quantus and scikit-image ------------------------------------------


def test_ssim_matches_quantus(rng):
    quantus = pytest.importorskip("quantus")
    a, b = rng.random((3, 16, 16)), rng.random((3, 16, 16))
    b[0] = a[0] * 0.5 + 0.2 * b[0]
    want = quantus.functions.similarity_func.ssim(a, b, batched=True)
    np.testing.assert_allclose(M.ssim_scores(a, b), want, atol=1e-10)
    assert M.ssim_scores(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)))[0] == 1.0


def test_spearman_matches_quantus(rng):
    quantus = pytest.importorskip("quantus")
    a, b = rng.standard_normal((4, 10, 10)), rng.standard_normal((4, 10, 10))
    want = quantus.functions.similarity_func.correlation_spearman(a.reshape(4, -1), b.reshape(4, -1), batched=True)
    sims = M.map_similarities(np.abs(a) + 0.1 * b, np.abs(b))  # also the four keys together
    np.testing.assert_allclose(M.rank_correlations(a, b), want, atol=1e-12)
    assert set(sims) == {"spearman", "spearman_abs", "ssim", "hog"}
    # with signs, the absolute-value variant differs
    assert not np.allclose(M.map_similarities(a, b)["spearman"], M.map_similarities(a, b)["spearman_abs"])


def test_hog_similarity_is_pearson_of_skimage_hog(rng):
    from skimage.feature import hog

    a, b = rng.random((2, 32, 32)), rng.random((2, 32, 32))
    b[1] = a[1].T
    want = [scipy.stats.pearsonr(hog(x, pixels_per_cell=(16, 16), cells_per_block=(2, 2)),
                                 hog(y, pixels_per_cell=(16, 16), cells_per_block=(2, 2)))[0] for x, y in zip(a, b)]
    np.testing.assert_allclose(M.hog_similarities(a, b, pixels_per_cell=16), want, atol=1e-12)
    assert M.hog_similarities(a[:1], a[:1])[0] == pytest.approx(1.0)
    assert M.hog_similarities(np.zeros((1, 32, 32)), a[:1])[0] == 0.0  # flat map: defined, not NaN


def test_pointing_and_relevance_match_quantus(rng):
    quantus = pytest.importorskip("quantus")
    n, s = 6, 16
    maps = rng.random((n, s, s))
    boxes = [np.array([[2 + i, 3, 9 + i, 12]]) for i in range(n)]
    masks = np.stack([M.boxes_to_mask(b, (s, s)) for b in boxes])
    maps[0][masks[0]] += 1.0  # one clear hit
    x = rng.random((n, 1, s, s)).astype(np.float32)
    y = np.zeros(n, int)
    a, sb = maps[:, None].astype(np.float32), masks[:, None].astype(np.float32)
    kw = dict(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=sb, channel_first=True)
    want_pg = quantus.PointingGame(disable_warnings=True)(**kw)
    np.testing.assert_array_equal(M.pointing_game(maps, boxes, tolerance=0), np.asarray(want_pg, bool))
    want_mass = quantus.RelevanceMassAccuracy(disable_warnings=True)(**kw)
    np.testing.assert_allclose(M.relevance_mass(maps, masks), want_mass, atol=1e-6)
    want_rank = quantus.RelevanceRankAccuracy(disable_warnings=True)(**kw)
    np.testing.assert_allclose(M.relevance_rank(maps, masks), want_rank, atol=1e-12)
    # defined where Quantus gives NaN
    assert M.relevance_mass(np.zeros((1, 4, 4)), np.ones((1, 4, 4)))[0] == 0.0
    assert M.relevance_rank(maps[:1], np.zeros((1, s, s)))[0] == 0.0


def test_randomize_layers_independent():
    trained = {"params": {"a": 1, "b": 2, "c": 3}, "batch_stats": {"b": 20}}
    fresh = {"params": {"a": -1, "b": -2, "c": -3}, "batch_stats": {"b": -20}}
    out = M.randomize_layers(trained, fresh, ["b"])
    assert out == {"params": {"a": 1, "b": -2, "c": 3}, "batch_stats": {"b": -20}}
    assert trained["params"]["b"] == 2  # inputs untouched
    assert M.randomize_top_layers(trained, fresh, ["a", "b", "c"], 2)["params"] == {"a": 1, "b": -2, "c": -3}
    with pytest.raises(InputError):
        M.randomize_layers(trained, fresh, ["zzz"])
