"""Evaluation metrics for saliency maps: localisation, pointing game, deletion/insertion, sanity checks.

Conventions (every function here):

* **Boxes** are ``(x0, y0, x1, y1)`` in pixel coordinates of the map they are compared with,
  ``x`` the column and ``y`` the row, with ``x1``/``y1`` *exclusive*: the box covers columns
  ``x0 .. x1-1`` and rows ``y0 .. y1-1``, so its area is ``(x1 - x0) * (y1 - y0)`` and the whole
  ``(H, W)`` image is ``(0, 0, W, H)``. Coordinates may be fractional (boxes from another image
  size, rescaled with :func:`resize_boxes`). ILSVRC files store inclusive corners; the readers in
  :mod:`chipjax.data` convert them.
* **Maps** are non-negative saliency maps ``(H, W)`` or ``(B, H, W)``, larger = more important
  (``cj.explain`` returns them in ``[0, 1]``). Negative values are treated as 0.
* Ground-truth boxes come per image as a list of ``(G_i, 4)`` arrays (``G_i`` may differ, and may be 0:
  an image with no box can never be localised).

Functions are numpy, pure, and loop in Python only over images or thresholds; the deletion/insertion
metric calls the model once per chunk of perturbed images.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from .errors import InputError

__all__ = [
    "auc",
    "box_iou",
    "resize_boxes",
    "crop_boxes",
    "map_to_box",
    "maps_to_boxes",
    "localization_correct",
    "localization_errors",
    "max_box_acc",
    "pointing_game",
    "gaussian_blur",
    "deletion_insertion",
    "deletion_insertion_batched",
    "rise_kernel",
    "rise_blur",
    "normalize_maps",
    "component_boxes",
    "best_ious_all_components",
    "max_box_acc_v2",
    "max_box_acc_v2_from_ious",
    "boxes_to_mask",
    "pxap_histograms",
    "pxap_from_histograms",
    "pxap",
    "target_scores",
    "confidence_change",
    "noisy_linear_impute",
    "road_removed",
    "road",
    "bootstrap_interval",
    "rank_correlation",
    "rank_correlations",
    "sanity_check",
    "randomize_top_layers",
    "randomize_layers",
    "ssim_scores",
    "hog_similarities",
    "map_similarities",
    "relevance_mass",
    "relevance_rank",
]

# 8-connectivity: diagonal neighbours belong to the same component (as OpenCV contours in the CAM code).
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# --- curves --------------------------------------------------------------------------------------
def auc(xs, ys) -> np.ndarray:
    """Area under the curve ``ys(xs)`` by the trapezoid rule.

    Args:
      xs: ``(T,)`` abscissae, increasing.
      ys: ``(..., T)`` ordinates; leading axes are batch axes.

    Returns:
      ``(...)`` areas (a 0-d array / float for one curve).
    """
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    if xs.ndim != 1 or ys.shape[-1:] != xs.shape:
        raise InputError(f"auc needs xs (T,) and ys (..., T); got xs {xs.shape} and ys {ys.shape}")
    if xs.size < 2:
        return np.zeros(ys.shape[:-1])
    return np.sum(np.diff(xs) * (ys[..., 1:] + ys[..., :-1]) / 2.0, axis=-1)


# --- boxes ---------------------------------------------------------------------------------------
def _as_boxes(boxes, what: str = "boxes") -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim == 1 and b.size == 0:
        b = b.reshape(0, 4)
    if b.shape[-1:] != (4,):
        raise InputError(f"{what} must have a last axis of 4 (x0, y0, x1, y1); got shape {b.shape}")
    return b


def box_iou(a, b) -> np.ndarray:
    """Intersection over union of boxes ``a (..., 4)`` and ``b (..., 4)`` (broadcast).

    Symmetric and in ``[0, 1]``. Boxes with ``x1 <= x0`` or ``y1 <= y0`` have zero area; the IoU of two
    zero-area boxes is 0 (never NaN).

    Returns:
      ``(...)`` float64 IoUs, the broadcast of the leading axes.
    """
    a = _as_boxes(a, "a")
    b = _as_boxes(b, "b")
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0.0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0.0, None)
    inter = iw * ih
    area_a = np.clip(a[..., 2] - a[..., 0], 0.0, None) * np.clip(a[..., 3] - a[..., 1], 0.0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0.0, None) * np.clip(b[..., 3] - b[..., 1], 0.0, None)
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return np.clip(iou, 0.0, 1.0)


def resize_boxes(boxes, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """Boxes ``(..., 4)`` of an image of size ``src_hw`` mapped onto the same image resized to ``dst_hw``."""
    b = _as_boxes(boxes)
    sy = dst_hw[0] / src_hw[0]
    sx = dst_hw[1] / src_hw[1]
    return b * np.array([sx, sy, sx, sy])


def crop_boxes(boxes, offset_yx: tuple[float, float], crop_hw: tuple[int, int]) -> np.ndarray:
    """Boxes ``(..., 4)`` in the frame of a crop whose top-left corner is ``offset_yx``, clipped to it.

    A box entirely outside the crop becomes a zero-area box (IoU 0 with anything).
    """
    b = _as_boxes(boxes) - np.array([offset_yx[1], offset_yx[0], offset_yx[1], offset_yx[0]])
    hi = np.array([crop_hw[1], crop_hw[0], crop_hw[1], crop_hw[0]], dtype=np.float64)
    return np.clip(b, 0.0, hi)


def _check_map(heatmap, ndim: int, what: str = "heatmap") -> np.ndarray:
    m = np.asarray(heatmap)
    if m.ndim != ndim:
        shape = "(H, W)" if ndim == 2 else "(B, H, W)"
        raise InputError(f"{what} must be {shape}; got shape {m.shape}")
    if m.size == 0:
        raise InputError(f"{what} has no pixels: shape {m.shape}")
    m = m.astype(np.float64)
    if not np.isfinite(m).all():
        raise InputError(f"{what} contains NaN or Inf; clean the map before evaluating it")
    return np.clip(m, 0.0, None)


def map_to_box(heatmap, threshold: float = 0.2) -> np.ndarray:
    """Box around the largest blob of a map: the CAM localisation protocol.

    Pixels with ``heatmap >= threshold * heatmap.max()`` are kept, the largest 8-connected component
    of them (most pixels; ties go to the first in raster order) is taken and its bounding box returned.
    An all-zero map (or ``threshold == 0``) keeps every pixel: the whole image ``(0, 0, W, H)``.

    Args:
      heatmap: ``(H, W)`` non-negative map (negative values count as 0).
      threshold: fraction of the map's maximum, in ``[0, 1]``.

    Returns:
      ``(4,)`` float64 box ``(x0, y0, x1, y1)``, ``x1``/``y1`` exclusive.
    """
    m = _check_map(heatmap, 2)
    return _box_of_largest_component(m >= float(threshold) * m.max())


def _box_of_largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if n == 0:  # only when threshold > 1: nothing passes
        return np.zeros(4)
    largest = 1 + int(np.argmax(np.bincount(labels.ravel(), minlength=n + 1)[1:]))
    rows, cols = ndimage.find_objects(labels, max_label=largest)[largest - 1]
    return np.array([cols.start, rows.start, cols.stop, rows.stop], dtype=np.float64)


def maps_to_boxes(maps, threshold: float = 0.2) -> np.ndarray:
    """:func:`map_to_box` of every map: ``(B, H, W) -> (B, 4)``."""
    m = _check_map(maps, 3, "maps")
    return np.stack([map_to_box(x, threshold) for x in m])


def _best_ious(boxes: np.ndarray, gt_boxes_list: Sequence) -> np.ndarray:
    """``boxes (B, ..., 4)`` -> ``(B, ...)``: best IoU of each box with any ground-truth box of its image."""
    if len(gt_boxes_list) != boxes.shape[0]:
        raise InputError(f"got {boxes.shape[0]} maps but {len(gt_boxes_list)} ground-truth box lists; pass one (G, 4) array per image")
    out = np.zeros(boxes.shape[:-1])
    for i, gt in enumerate(gt_boxes_list):
        gt = _as_boxes(gt, f"gt_boxes_list[{i}]").reshape(-1, 4)
        if len(gt):
            out[i] = box_iou(boxes[i][..., None, :], gt).max(axis=-1)
    return out


def localization_correct(heatmap, gt_boxes, threshold: float = 0.2, iou: float = 0.5) -> bool:
    """Whether the :func:`map_to_box` box of ``heatmap (H, W)`` has IoU ``>= iou`` with any of ``gt_boxes (G, 4)``."""
    box = map_to_box(heatmap, threshold)
    return bool(_best_ious(box[None], [gt_boxes])[0] >= iou)


def localization_errors(
    maps, gt_boxes_list: Sequence, pred_top5, labels, threshold: float = 0.2, iou: float = 0.5
) -> dict[str, float]:
    """ILSVRC weakly supervised localisation errors (the CAM protocol), as fractions in ``[0, 1]``.

    * top-1 loc: correct iff the top-1 class is the label AND the box has IoU ``>= iou`` with a GT box;
    * top-5 loc: correct iff the label is among the top-5 classes AND its box is right;
    * GT-known loc: the box is right (the class is given).

    Args:
      maps: ``(B, H, W)`` maps **for the ground-truth class** of each image.
      gt_boxes_list: ``B`` arrays ``(G_i, 4)`` in the maps' pixel frame.
      pred_top5: ``(B, 5)`` predicted classes, best first (``(B, k)`` with any ``k >= 1`` works).
      labels: ``(B,)`` ground-truth classes.
      threshold: CAM box threshold (fraction of each map's max).
      iou: IoU needed for a correct box.

    Maps of the ground-truth class are all the protocol needs: a prediction (class, box) only counts when
    its class is the label, and then its map *is* the ground-truth class's map. So these errors equal those
    computed with one map per top-5 class.

    Returns:
      ``{"top1_loc_err", "top5_loc_err", "gt_known_loc_err", "top1_cls_err", "top5_cls_err"}``.
    """
    maps = _check_map(maps, 3, "maps")
    pred = np.asarray(pred_top5)
    pred = pred.reshape(len(pred), -1) if pred.ndim else pred.reshape(1, 1)
    labels = np.asarray(labels).reshape(-1)
    if not pred.shape[0] == labels.shape[0] == maps.shape[0] or pred.shape[1] < 1:
        raise InputError(
            f"need one map, one row of predicted classes and one label per image; got {maps.shape[0]} maps, "
            f"pred_top5 of shape {np.shape(pred_top5)} and {labels.shape[0]} labels"
        )
    box_ok = _best_ious(maps_to_boxes(maps, threshold), gt_boxes_list) >= iou
    top1 = pred[:, 0] == labels
    top5 = (pred == labels[:, None]).any(axis=1)
    return {
        "top1_loc_err": float(1.0 - np.mean(top1 & box_ok)),
        "top5_loc_err": float(1.0 - np.mean(top5 & box_ok)),
        "gt_known_loc_err": float(1.0 - np.mean(box_ok)),
        "top1_cls_err": float(1.0 - np.mean(top1)),
        "top5_cls_err": float(1.0 - np.mean(top5)),
    }


def max_box_acc(maps, gt_boxes_list: Sequence, thresholds=None, iou: float = 0.5) -> dict:
    """MaxBoxAcc (Choe et al., CVPR 2020): GT-known box accuracy at the best map threshold.

    Args:
      maps: ``(B, H, W)`` maps for the ground-truth class.
      gt_boxes_list: ``B`` arrays ``(G_i, 4)``.
      thresholds: ``(T,)`` box thresholds, fractions of each map's max; default ``0, 0.01, …, 0.99``
        (the paper's code).
      iou: IoU needed for a correct box (the paper uses 0.5; MaxBoxAccV2 averages 0.3, 0.5, 0.7).

    Returns:
      ``{"max_box_acc": float, "best_threshold": float, "thresholds": (T,), "accuracy": (T,)}``.
    """
    maps = _check_map(maps, 3, "maps")
    ts = np.arange(0.0, 1.0, 0.01) if thresholds is None else np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if ts.size == 0:
        raise InputError("max_box_acc needs at least one threshold")
    peaks = maps.max(axis=(1, 2))
    boxes = np.stack(
        [np.stack([_box_of_largest_component(m >= t * p) for t in ts]) for m, p in zip(maps, peaks)]
    )  # (B, T, 4)
    accuracy = np.mean(_best_ious(boxes, gt_boxes_list) >= iou, axis=0)
    best = int(np.argmax(accuracy))
    return {"max_box_acc": float(accuracy[best]), "best_threshold": float(ts[best]), "thresholds": ts, "accuracy": accuracy}


def pointing_game(maps, gt_boxes_list: Sequence, tolerance: float = 15) -> np.ndarray:
    """Pointing game (Zhang et al., 2016): does the map's maximum fall on the object?

    A hit when the argmax pixel (first in raster order on ties) lies within Euclidean distance
    ``tolerance`` pixels of a ground-truth box, i.e. of one of the pixels the box covers
    (``tolerance=0``: inside the box).

    Args:
      maps: ``(B, H, W)``.
      gt_boxes_list: ``B`` arrays ``(G_i, 4)`` in the maps' pixel frame.
      tolerance: pixels (the paper uses 15 at the input resolution).

    Returns:
      ``(B,)`` bool hits.
    """
    maps = _check_map(maps, 3, "maps")
    b, h, w = maps.shape
    flat = np.argmax(maps.reshape(b, -1), axis=1)
    points = np.stack([flat % w, flat // w], axis=1).astype(np.float64)  # (B, 2) as (x, y)
    if len(gt_boxes_list) != b:
        raise InputError(f"got {b} maps but {len(gt_boxes_list)} ground-truth box lists; pass one (G, 4) array per image")
    hits = np.zeros(b, dtype=bool)
    for i, gt in enumerate(gt_boxes_list):
        gt = _as_boxes(gt, f"gt_boxes_list[{i}]").reshape(-1, 4)
        if not len(gt):
            continue
        x, y = points[i]
        # distance from pixel (x, y) to the pixels [x0, x1-1] x [y0, y1-1] a box covers
        dx = np.maximum(np.maximum(gt[:, 0] - x, x - (gt[:, 2] - 1.0)), 0.0)
        dy = np.maximum(np.maximum(gt[:, 1] - y, y - (gt[:, 3] - 1.0)), 0.0)
        nonempty = (gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])
        hits[i] = bool(np.any(nonempty & (np.hypot(dx, dy) <= tolerance)))
    return hits


# --- deletion / insertion ------------------------------------------------------------------------
def _gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(images, sigma: float = 5.0, truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur of ``images (B, H, W, C)`` over H and W (separable; borders mirrored).

    Matches ``scipy.ndimage.gaussian_filter(images, (0, sigma, sigma, 0), mode="reflect",
    truncate=truncate)``: the kernel has radius ``int(truncate * sigma + 0.5)``.

    Returns:
      float32 ``(B, H, W, C)``.
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4:
        raise InputError(f"gaussian_blur needs images (B, H, W, C); got shape {x.shape}")
    if sigma <= 0:
        return x.astype(np.float32)
    k = _gaussian_kernel(float(sigma), float(truncate))
    r = len(k) // 2
    for axis in (1, 2):
        n = x.shape[axis]
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        xp = np.pad(x, pad, mode="symmetric")  # (d c b a | a b c d): scipy's "reflect"
        out = np.zeros_like(x)
        lead = (slice(None),) * axis
        for i, wi in enumerate(k):
            out += wi * xp[lead + (slice(i, i + n),)]
        x = out
    return x.astype(np.float32)


def _baseline_images(images: np.ndarray, kind: str, sigma: float, fill: float) -> np.ndarray:
    if kind == "blur":
        return gaussian_blur(images, sigma)
    if kind == "constant":
        return np.full_like(images, fill, dtype=np.float32)
    raise InputError(f"unknown baseline {kind!r}; use 'blur' or 'constant'")


def _ranks_desc(maps: np.ndarray) -> np.ndarray:
    """``(B, H, W)`` -> ``(B, H, W)`` int: position of each pixel in decreasing map order (ties: raster order)."""
    b = maps.shape[0]
    flat = maps.reshape(b, -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None, :], axis=1)
    return ranks.reshape(maps.shape)


def rise_kernel(size: int = 11, sigma: float = 5.0) -> np.ndarray:
    """RISE's blur kernel ``gkern(klen=11, nsig=5)``: ``scipy.ndimage.gaussian_filter`` of a centred unit
    impulse on a ``size × size`` grid (so the Gaussian is folded back at the grid's edges): ``(size, size)``."""
    impulse = np.zeros((size, size))
    impulse[size // 2, size // 2] = 1.0
    return ndimage.gaussian_filter(impulse, sigma)


def rise_blur(images) -> np.ndarray:
    """RISE's insertion substrate: every channel of ``images (B, H, W, C)`` convolved with
    :func:`rise_kernel`, zero padding (``conv2d(x, kern, padding=klen // 2)``). float32 ``(B, H, W, C)``."""
    x = np.asarray(images, np.float64)
    if x.ndim != 4:
        raise InputError(f"rise_blur needs images (B, H, W, C); got shape {x.shape}")
    k = rise_kernel()
    r = k.shape[0] // 2
    h, w = x.shape[1:3]
    xp = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)))
    out = np.zeros_like(x)
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            out += k[i, j] * xp[:, i:i + h, j:j + w]
    return out.astype(np.float32)


def _ranks_rise(maps: np.ndarray) -> np.ndarray:
    """As :func:`_ranks_desc` in RISE's order, ``np.flip(np.argsort(map))`` (ties: reverse raster order)."""
    b = maps.shape[0]
    flat = maps.reshape(b, -1)
    order = np.flip(np.argsort(flat, axis=1, kind="stable"), axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None, :], axis=1)
    return ranks.reshape(maps.shape)


def _deletion_plan(images, maps, targets, steps: int, baseline, sigma: float, fill: float, protocol: str):
    """What deletion/insertion needs, shared by :func:`deletion_insertion` and :func:`deletion_insertion_batched`:
    images ``(B, H, W, C)``, targets ``(B,)``, bases ``(2, B, H, W, C)`` (deletion's, insertion's), pixel ranks
    ``(B, H, W)``, pixels changed per step ``(T,)``, the curve's fractions ``(T,)`` and the AUC abscissae ``(T,)``."""
    x = np.asarray(images, dtype=np.float32)
    m = _check_map(maps, 3, "maps")
    t = np.asarray(targets).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != m.shape:
        raise InputError(f"images must be (B, H, W, C) with maps (B, H, W) of the same B, H, W; got {x.shape} and {m.shape}")
    if t.shape[0] != x.shape[0]:
        raise InputError(f"got {x.shape[0]} images but {t.shape[0]} targets")
    if steps < 2:
        raise InputError(f"need steps >= 2; got steps={steps}")
    n_img, h, w = m.shape
    if protocol == "rise":
        bases = np.stack([np.zeros_like(x), rise_blur(x)])
        ranks = _ranks_rise(m)
        step = -(-h * w // (steps - 1))
        n_steps = -(-h * w // step)
        counts = np.minimum(np.arange(n_steps + 1) * step, h * w)
        fractions = counts / float(h * w)
        xs = np.linspace(0.0, 1.0, n_steps + 1)  # RISE's AUC: uniform in the step index
    elif protocol == "chipjax":
        kinds = (baseline, baseline) if isinstance(baseline, str) else tuple(baseline)
        made = {kind: _baseline_images(x, kind, sigma, fill) for kind in set(kinds)}
        bases = np.stack([made[kind] for kind in kinds])
        ranks = _ranks_desc(m)
        fractions = np.linspace(0.0, 1.0, steps)
        counts = np.rint(fractions * h * w).astype(np.int64)
        xs = fractions
    else:
        raise InputError(f"unknown deletion/insertion protocol {protocol!r}; use 'rise' or 'chipjax'")
    return x, t, bases, ranks, counts, fractions, xs


def _curves_result(curves: np.ndarray, fractions: np.ndarray, xs: np.ndarray) -> dict:
    """``curves (B, 2, T)`` -> :func:`deletion_insertion`'s dict."""
    return {
        "deletion_auc": auc(xs, curves[:, 0]),
        "insertion_auc": auc(xs, curves[:, 1]),
        "curves": {"fractions": fractions, "deletion": curves[:, 0], "insertion": curves[:, 1]},
    }


def deletion_insertion(
    score_fn: Callable,
    images,
    maps,
    targets,
    steps: int = 21,
    baseline: str | tuple[str, str] = "blur",
    batch: int = 64,
    sigma: float = 5.0,
    fill: float = 0.0,
    protocol: str = "chipjax",
) -> dict:
    """Deletion and insertion curves and their AUCs (Petsiuk et al., RISE, 2018).

    ``protocol="rise"`` follows RISE's reference (``evaluation.py``, ``CausalMetric``) exactly: deletion
    to a zero substrate (0 = the mean colour of mean/std-normalised images), insertion from
    :func:`rise_blur` of the image, pixels in the order of ``np.flip(np.argsort(map))``, ``step =
    ceil(H*W / (steps - 1))`` pixels per step (the last step may be partial), and the AUC
    ``(Σ y - y_0/2 - y_n/2) / n`` over the ``n + 1`` points (``baseline``, ``sigma`` and ``fill`` are
    ignored). ``protocol="chipjax"`` (the first variant) is what follows.

    Pixels are taken in decreasing map order. At fraction ``f`` of the pixels (``round(f * H * W)``
    pixels, all channels):

    * deletion: those pixels of the image are replaced by the baseline image's (lower AUC = better map);
    * insertion: those pixels of the baseline image are replaced by the image's (higher AUC = better).

    Each curve is the target class's score at ``steps`` evenly spaced fractions from 0 to 1; the AUC is
    the trapezoid rule over ``[0, 1]``.

    Args:
      score_fn: images ``(n, H, W, 3)`` -> class probabilities ``(n, C)`` (numpy or jax). It always
        receives exactly ``batch`` images (the last chunk is padded), so a jitted function compiles once.
      images: ``(B, H, W, 3)`` float images as ``score_fn`` takes them (usually preprocessed).
      maps: ``(B, H, W)`` saliency maps at the images' resolution.
      targets: ``(B,)`` class scored for each image.
      steps: number of fractions ``>= 2`` (``0, 1/(steps-1), …, 1``).
      baseline: ``"blur"`` (Gaussian blur of the image, ``sigma`` pixels) or ``"constant"`` (every value
        ``fill``, e.g. 0 = the mean colour of mean/std-normalised images); a pair
        ``(deletion_baseline, insertion_baseline)`` sets them apart (RISE: ``("constant", "blur")``).
      batch: images per ``score_fn`` call.

    Returns:
      ``{"deletion_auc": (B,), "insertion_auc": (B,),
      "curves": {"fractions": (T,), "deletion": (B, T), "insertion": (B, T)}}``.
    """
    if batch < 1:
        raise InputError(f"need batch >= 1; got batch={batch}")
    x, t, bases, ranks, counts, fractions, xs = _deletion_plan(images, maps, targets, steps, baseline, sigma, fill,
                                                               protocol)
    n_img, steps = x.shape[0], len(counts)

    # one job per (image, mode, step); mode 0 deletion, 1 insertion
    img_idx, mode_idx, step_idx = (a.ravel() for a in np.meshgrid(np.arange(n_img), [0, 1], np.arange(steps), indexing="ij"))
    scores = np.empty(img_idx.size, dtype=np.float64)
    for start in range(0, img_idx.size, batch):
        sel = np.arange(start, min(start + batch, img_idx.size))
        i, mode, k = img_idx[sel], mode_idx[sel], counts[step_idx[sel]]
        changed = ranks[i] < k[:, None, None]  # (n, H, W)
        take_base = (changed != (mode == 1)[:, None, None])[..., None]
        chunk = np.where(take_base, bases[mode, i], x[i])
        if len(sel) < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(sel), axis=0)])
        probs = np.asarray(score_fn(chunk))
        if probs.ndim != 2 or probs.shape[0] != batch:
            raise InputError(f"score_fn must return probabilities (n, C) for n={batch} images; got shape {probs.shape}")
        scores[sel] = probs[np.arange(len(sel)), t[i]]
    return _curves_result(scores.reshape(n_img, 2, steps), fractions, xs)


def _device_curves(prob_fn, images, bases, ranks, counts, targets):
    """Jitted body of :func:`deletion_insertion_batched`: ``(B, 2, T)`` target scores, one ``prob_fn`` call per
    (mode, step) on all B images, looped by ``lax.map`` inside one compiled program."""
    import jax
    import jax.numpy as jnp

    b = images.shape[0]
    modes = jnp.repeat(jnp.arange(2), counts.shape[0])
    ks = jnp.tile(counts, 2)

    def one(args):
        mode, k = args
        take_base = (ranks < k) != (mode == 1)  # deletion: the first k from the base; insertion: the rest
        mixed = jnp.where(take_base[..., None], bases[mode], images)
        return prob_fn(mixed)[jnp.arange(b), targets]

    scores = jax.lax.map(one, (modes, ks))  # (2T, B)
    return scores.reshape(2, counts.shape[0], b).transpose(2, 0, 1)


def deletion_insertion_batched(prob_fn: Callable, images, maps, targets, steps: int = 21,
                               baseline: str | tuple[str, str] = "blur", sigma: float = 5.0, fill: float = 0.0,
                               protocol: str = "chipjax") -> dict:
    """:func:`deletion_insertion` with the whole ``B`` images × ``T`` steps × 2 modes as one jitted call on
    the device.

    Args:
      prob_fn: a **jax-traceable** function images ``(B, H, W, C)`` -> probabilities ``(B, C)`` (e.g. a
        model's softmax); it is a static argument of the jit, so pass the same function object every time
        to reuse the compiled program. The other arguments are as :func:`deletion_insertion`.

    Returns:
      the same dict as :func:`deletion_insertion` (equal to it up to float32 rounding).
    """
    import jax
    import jax.numpy as jnp

    x, t, bases, ranks, counts, fractions, xs = _deletion_plan(images, maps, targets, steps, baseline, sigma, fill,
                                                               protocol)
    run = _jitted_device_curves()
    curves = run(prob_fn, jnp.asarray(x), jnp.asarray(bases), jnp.asarray(ranks, jnp.int32),
                 jnp.asarray(counts, jnp.int32), jnp.asarray(t, jnp.int32))
    return _curves_result(np.asarray(curves, np.float64), fractions, xs)


_JITTED = {}


def _jitted_device_curves():
    if "curves" not in _JITTED:
        import jax

        _JITTED["curves"] = jax.jit(_device_curves, static_argnums=0)
    return _JITTED["curves"]


# --- rank correlation / randomisation sanity check -------------------------------------------------
def _average_ranks(x: np.ndarray) -> np.ndarray:
    """``(B, N)`` -> ``(B, N)`` ranks 1..N along the last axis, ties given their mean rank."""
    order = np.argsort(x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)
    n = x.shape[1]
    ranks_sorted = np.empty(x.shape, dtype=np.float64)
    for row in range(x.shape[0]):
        # start of each run of equal values, and the mean rank of the run
        new = np.concatenate([[True], xs[row, 1:] != xs[row, :-1]])
        starts = np.flatnonzero(new)
        ends = np.concatenate([starts[1:], [n]])
        ranks_sorted[row] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    ranks = np.empty_like(ranks_sorted)
    np.put_along_axis(ranks, order, ranks_sorted, axis=1)
    return ranks


def rank_correlations(a, b) -> np.ndarray:
    """Spearman rank correlation per item: ``a, b (B, ...)`` -> ``(B,)``, each item flattened.

    Ties get their average rank (as ``scipy.stats.spearmanr``). An item where either map is constant has
    no ranking; its correlation is defined as 0 (scipy gives NaN).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 1:
        raise InputError(f"rank_correlations needs two arrays of the same shape (B, ...); got {a.shape} and {b.shape}")
    ra = _average_ranks(a.reshape(a.shape[0], -1))
    rb = _average_ranks(b.reshape(b.shape[0], -1))
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom > 0, (ra * rb).sum(axis=1) / np.where(denom > 0, denom, 1.0), 0.0)
    return np.clip(r, -1.0, 1.0)


def rank_correlation(a, b) -> float:
    """Spearman rank correlation of two maps, flattened (0 when either is constant)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"rank_correlation needs two maps of the same shape; got {a.shape} and {b.shape}")
    return float(rank_correlations(a.reshape(1, -1), b.reshape(1, -1))[0])


def sanity_check(maps_trained, maps_randomized: Mapping[str, np.ndarray], absolute: bool = False) -> dict[str, float]:
    """Model-randomisation sanity check (Adebayo et al., 2018): how much do maps survive randomised weights?

    Args:
      maps_trained: ``(B, H, W)`` maps of the trained model.
      maps_randomized: ``{name: (B, H, W)}`` maps of the same images after randomising the weights named
        ``name`` (e.g. cascading from the top layer down).
      absolute: compare ``|maps|`` (the paper reports both).

    Returns:
      ``{name: mean Spearman r over the B images}``; a method that passes has r near 0.
    """
    ref = np.asarray(maps_trained, dtype=np.float64)
    if absolute:
        ref = np.abs(ref)
    out = {}
    for name, maps in maps_randomized.items():
        maps = np.asarray(maps, dtype=np.float64)
        if maps.shape != ref.shape:
            raise InputError(f"maps_randomized[{name!r}] has shape {maps.shape}, the trained maps {ref.shape}")
        out[name] = float(np.mean(rank_correlations(ref, np.abs(maps) if absolute else maps)))
    return out


def randomize_top_layers(variables: Mapping, fresh_variables: Mapping, keys_in_order: Sequence[str], n: int) -> dict:
    """Cascading randomisation: the top ``n`` entries of ``keys_in_order`` take their fresh (random) values.

    Args:
      variables: trained Flax variables ``{collection: {key: subtree}}`` (e.g. ``params``, ``batch_stats``).
      fresh_variables: variables of the same architecture from a random init (e.g.
        ``chipjax.models.init_variables(spec, seed)``).
      keys_in_order: top-level keys of the variable collections, input to output (the module names the
        zoo uses for its units).
      n: how many keys, counted from the output end, to replace.

    Returns:
      a new variables dict (the inputs are not modified); every collection holding a replaced key gets
      the fresh subtree.
    """
    if not 0 <= n <= len(keys_in_order):
        raise InputError(f"n must be in [0, {len(keys_in_order)}]; got {n}")
    return randomize_layers(variables, fresh_variables, list(keys_in_order)[len(keys_in_order) - n:])


def randomize_layers(variables: Mapping, fresh_variables: Mapping, keys: Sequence[str]) -> dict:
    """The ``keys`` (top-level keys of the variable collections) take their fresh (random) values; the
    rest stays trained. One key: Adebayo et al.'s *independent* randomisation of a layer; the top ``n``:
    the *cascading* one (:func:`randomize_top_layers`).

    Returns:
      a new variables dict (the inputs are not modified).
    """
    out = {col: dict(tree) for col, tree in variables.items()}
    for key in keys:
        found = False
        for col, tree in out.items():
            if key in tree:
                if col not in fresh_variables or key not in fresh_variables[col]:
                    raise InputError(f"fresh_variables lacks {col}/{key}; build them from the same architecture")
                tree[key] = fresh_variables[col][key]
                found = True
        if not found:
            raise InputError(f"no variable collection has a top-level key {key!r}; keys are {sorted(out.get('params', {}))}")
    return out


# --- MaxBoxAccV2 and PxAP (Choe et al., CVPR 2020) ----------------------------------------------------
V2_IOUS = (0.3, 0.5, 0.7)


def normalize_maps(maps) -> np.ndarray:
    """Min-max normalisation of every map to ``[0, 1]``: ``(B, H, W) -> (B, H, W)`` float64.

    A constant map (all zero included) becomes all zeros, never NaN (as ``normalize_scoremap`` in
    Choe et al.'s evaluation code).
    """
    m = _check_map(maps, 3, "maps")
    lo = m.min(axis=(1, 2), keepdims=True)
    span = m.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (m - lo) / np.where(span > 0, span, 1.0), 0.0)


def component_boxes(mask) -> np.ndarray:
    """Bounding boxes of every 8-connected component of a boolean ``mask (H, W)``: ``(n, 4)``
    ``(x0, y0, x1, y1)``, ``x1``/``y1`` exclusive, in label (raster) order; ``(0, 4)`` when the mask is empty."""
    labels, n = ndimage.label(np.asarray(mask, bool), structure=_EIGHT_CONNECTED)
    if n == 0:
        return np.zeros((0, 4))
    return np.array([[c.start, r.start, c.stop, r.stop] for r, c in ndimage.find_objects(labels)], np.float64)


def best_ious_all_components(heatmap, gt_boxes, thresholds) -> np.ndarray:
    """MaxBoxAccV2's per-image score: at every threshold, the best IoU of any component's box with any GT box.

    Args:
      heatmap: ``(H, W)`` map, min-max normalised here (:func:`normalize_maps`).
      gt_boxes: ``(G, 4)`` ground-truth boxes.
      thresholds: ``(T,)`` in ``[0, 1]``; pixels with normalised value ``>= t`` are kept.

    Returns:
      ``(T,)`` float64 best IoUs; 0 where nothing passes the threshold or there is no GT box.
    """
    m = normalize_maps(np.asarray(heatmap)[None])[0]
    gt = _as_boxes(gt_boxes, "gt_boxes").reshape(-1, 4)
    ts = np.asarray(thresholds, np.float64).reshape(-1)
    out = np.zeros(ts.size)
    if not len(gt):
        return out
    for j, t in enumerate(ts):
        boxes = component_boxes(m >= t)
        if len(boxes):
            out[j] = box_iou(boxes[:, None, :], gt[None, :, :]).max()
    return out


def max_box_acc_v2(maps, gt_boxes_list: Sequence, thresholds=None, ious: Sequence[float] = V2_IOUS) -> dict:
    """MaxBoxAccV2 (Choe et al., CVPR 2020, "Evaluating weakly supervised object localization methods right").

    Differences from :func:`max_box_acc` (the first version, kept as it was): each map is min-max
    normalised; a box is drawn around **every** 8-connected component of ``map >= t`` and the best one
    (highest IoU with any GT box) counts; the accuracy is computed at IoU 0.3, 0.5 and 0.7, each at its own
    best threshold for the whole set, and the three are averaged.

    Args:
      maps: ``(B, H, W)`` maps for the ground-truth class.
      gt_boxes_list: ``B`` arrays ``(G_i, 4)``.
      thresholds: ``(T,)``; default ``0, 0.01, …, 0.99``.
      ious: IoU levels to average.

    Returns:
      ``{"max_box_acc_v2": float, "per_iou": {iou: float}, "best_thresholds": {iou: float},
      "thresholds": (T,), "accuracy": (len(ious), T)}``. A set of constant maps gives a defined value
      (the whole-image box at threshold 0, nothing above it).
    """
    maps = _check_map(maps, 3, "maps")
    ts = np.arange(0.0, 1.0, 0.01) if thresholds is None else np.asarray(thresholds, np.float64).reshape(-1)
    if ts.size == 0 or not len(ious):
        raise InputError("max_box_acc_v2 needs at least one threshold and one IoU level")
    if len(gt_boxes_list) != maps.shape[0]:
        raise InputError(f"got {maps.shape[0]} maps but {len(gt_boxes_list)} ground-truth box lists; pass one (G, 4) array per image")
    best = np.stack([best_ious_all_components(m, g, ts) for m, g in zip(maps, gt_boxes_list)])  # (B, T)
    return max_box_acc_v2_from_ious(best, ts, ious)


def max_box_acc_v2_from_ious(best_ious, thresholds, ious: Sequence[float] = V2_IOUS) -> dict:
    """:func:`max_box_acc_v2` from the per-image best IoUs ``(B, T)`` (:func:`best_ious_all_components`)
    or per-image correctness ``(B, len(ious), T)`` booleans."""
    ts = np.asarray(thresholds, np.float64).reshape(-1)
    b = np.asarray(best_ious)
    correct = b[:, None, :] >= np.asarray(ious, np.float64)[None, :, None] if b.ndim == 2 else b.astype(bool)
    accuracy = correct.mean(axis=0)  # (I, T)
    arg = np.argmax(accuracy, axis=1)  # ties: the lowest threshold
    per = accuracy[np.arange(len(ious)), arg]
    return {"max_box_acc_v2": float(per.mean()), "per_iou": {float(i): float(a) for i, a in zip(ious, per)},
            "best_thresholds": {float(i): float(ts[a]) for i, a in zip(ious, arg)}, "thresholds": ts,
            "accuracy": accuracy}


def boxes_to_mask(boxes, hw: tuple[int, int]) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the pixels whose centres lie inside any of ``boxes (G, 4)``."""
    b = _as_boxes(boxes).reshape(-1, 4)
    ys = np.arange(int(hw[0])) + 0.5
    xs = np.arange(int(hw[1])) + 0.5
    inside = ((xs[None, None, :] >= b[:, 0, None, None]) & (xs[None, None, :] < b[:, 2, None, None])
              & (ys[None, :, None] >= b[:, 1, None, None]) & (ys[None, :, None] < b[:, 3, None, None]))
    return inside.any(axis=0) if len(b) else np.zeros((int(hw[0]), int(hw[1])), bool)


def pxap_histograms(maps, gt_masks, bin_width: float = 0.001) -> np.ndarray:
    """Per-image histograms of normalised map values on object and background pixels (PxAP's statistics).

    Bins (as Choe et al.'s ``MaskEvaluator``): ``[0, w), [w, 2w), …, [1 - w, 1), [1, 2), [2, 3)``; a
    value of exactly 1 falls in ``[1, 2)``.

    Args:
      maps: ``(B, H, W)`` maps (min-max normalised here).
      gt_masks: ``(B, H, W)`` booleans, True on the object.
      bin_width: ``w``; ``1 / w`` must be a whole number.

    Returns:
      ``(B, 2, nbins)`` int64 counts: ``[:, 0]`` object pixels, ``[:, 1]`` background pixels.
    """
    m = normalize_maps(maps)
    g = np.asarray(gt_masks)
    if g.shape != m.shape:
        raise InputError(f"gt_masks must be (B, H, W) like the maps {m.shape}; got {g.shape}")
    n = int(round(1.0 / bin_width))
    if n < 1 or abs(n * bin_width - 1.0) > 1e-9:
        raise InputError(f"bin_width must divide 1 (e.g. 0.001 or 0.01); got {bin_width}")
    edges = np.append(np.arange(n) / n, [1.0, 2.0, 3.0])
    out = np.zeros((m.shape[0], 2, len(edges) - 1), np.int64)
    for i in range(m.shape[0]):
        pos = g[i].astype(bool)
        out[i, 0] = np.histogram(m[i][pos], bins=edges)[0]
        out[i, 1] = np.histogram(m[i][~pos], bins=edges)[0]
    return out


def pxap_from_histograms(hists) -> dict:
    """PxAP (pixel average precision) from summed histograms ``(B, 2, nbins)`` or ``(2, nbins)``.

    Precision and recall at every bin edge from the top; AP is ``Σ precision[k] · (recall[k] - recall[k-1])``
    over the edges where something is predicted (as ``MaskEvaluator.compute``, as a fraction, not %).
    A set without object pixels raises :class:`InputError`; constant maps give the object fraction.

    Returns:
      ``{"pxap": float, "precision": (nbins,), "recall": (nbins,)}``, highest threshold first.
    """
    h = np.asarray(hists, np.float64)
    h = h.sum(axis=0) if h.ndim == 3 else h
    tp = np.cumsum(h[0][::-1])
    fp = np.cumsum(h[1][::-1])
    if tp[-1] <= 0:
        raise InputError("PxAP needs object pixels: every ground-truth mask is empty")
    predicted = tp + fp
    precision = np.where(predicted > 0, tp / np.where(predicted > 0, predicted, 1.0), 0.0)
    recall = tp / tp[-1]
    ap = float(np.sum((precision[1:] * np.diff(recall))[predicted[1:] > 0]))
    return {"pxap": ap, "precision": precision, "recall": recall}


def pxap(maps, gt_masks, bin_width: float = 0.001) -> dict:
    """PxAP (Choe et al., CVPR 2020): the area under the pixel precision-recall curve of the whole set.

    Args:
      maps: ``(B, H, W)`` maps for the ground-truth class (min-max normalised here).
      gt_masks: ``(B, H, W)`` booleans, True on the object (e.g. :func:`boxes_to_mask` of a pasted region).
      bin_width: threshold step (0.001 as the paper's code).

    Returns:
      see :func:`pxap_from_histograms`.
    """
    return pxap_from_histograms(pxap_histograms(maps, gt_masks, bin_width))


# --- scoring masked copies ---------------------------------------------------------------------------
def target_scores(score_fn: Callable, images, targets, batch: int = 64) -> np.ndarray:
    """``score_fn`` on ``images (n, H, W, C)`` in chunks of exactly ``batch`` (the last one padded):
    ``(n,)`` float64, the score of ``targets[i]`` for image ``i``."""
    x = np.asarray(images, np.float32)
    t = np.asarray(targets).reshape(-1)
    if t.shape[0] != x.shape[0]:
        raise InputError(f"got {x.shape[0]} images but {t.shape[0]} targets")
    out = np.empty(x.shape[0], np.float64)
    for start in range(0, x.shape[0], batch):
        chunk = x[start:start + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        probs = np.asarray(score_fn(chunk))
        if probs.ndim != 2 or probs.shape[0] != batch:
            raise InputError(f"score_fn must return probabilities (n, C) for n={batch} images; got shape {probs.shape}")
        out[start:start + n] = probs[np.arange(n), t[start:start + n]]
    return out


def confidence_change(score_fn: Callable, images, maps, targets, batch: int = 64) -> dict:
    """Average drop and increase in confidence (Chattopadhyay et al., Grad-CAM++, WACV 2018).

    The image is multiplied by its map (``images * maps[..., None]``; for mean/std-normalised images 0 is
    the mean colour, as pytorch-grad-cam's ``CamMultImageConfidenceChange``), and the target's score ``O``
    on it is compared with the score ``Y`` on the image:

    * ``drop = max(0, Y - O) / Y`` per image (0 when ``Y == 0``); *average drop* is its mean (lower = better);
    * ``increase = O > Y`` per image; *increase in confidence* is its mean (higher = better).

    Args:
      score_fn, batch: as :func:`deletion_insertion`.
      images: ``(B, H, W, C)``; maps: ``(B, H, W)`` in ``[0, 1]``; targets: ``(B,)``.

    Returns:
      ``{"score": (B,) Y, "masked_score": (B,) O, "drop": (B,), "increase": (B,) bool}``.
    """
    x = np.asarray(images, np.float32)
    m = _check_map(maps, 3, "maps")
    if x.ndim != 4 or x.shape[:3] != m.shape:
        raise InputError(f"images must be (B, H, W, C) with maps (B, H, W) of the same B, H, W; got {x.shape} and {m.shape}")
    t = np.asarray(targets).reshape(-1)
    y = target_scores(score_fn, x, t, batch)
    o = target_scores(score_fn, x * m[..., None].astype(np.float32), t, batch)
    drop = np.where(y > 0, np.maximum(y - o, 0.0) / np.where(y > 0, y, 1.0), 0.0)
    return {"score": y, "masked_score": o, "drop": drop, "increase": o > y}


# --- ROAD (Rong et al., ICML 2022) -------------------------------------------------------------------
# neighbour offsets (row, column) and weights of the noisy linear imputation: 1/6 sideways, 1/12 diagonal
_ROAD_NEIGHBOURS = tuple(((dr, dc), (1 / 12 if dr and dc else 1 / 6))
                         for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc)
ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def noisy_linear_impute(image, removed, noise: float = 0.01, rng=None) -> np.ndarray:
    """Fill the ``removed`` pixels of ``image`` by noisy linear imputation (ROAD, Rong et al. 2022).

    Every removed pixel becomes the weighted mean of its 8 neighbours inside the image (weights 1/6
    sideways, 1/12 diagonally, renormalised at the border), removed neighbours being unknowns of the same
    sparse linear system; then Gaussian noise of standard deviation ``noise`` is added to the filled pixels.
    When every pixel is removed there is nothing to interpolate from: they take the image's channel means.

    Args:
      image: ``(H, W, C)`` float.
      removed: ``(H, W)`` booleans, True where the pixel is removed.
      noise: absolute noise level (0: none).
      rng: a ``numpy.random.Generator`` for the noise (default: seed 0).

    Returns:
      ``(H, W, C)`` float32, equal to ``image`` where nothing was removed.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    x = np.asarray(image, np.float64)
    r = np.asarray(removed, bool)
    if x.ndim != 3 or r.shape != x.shape[:2]:
        raise InputError(f"noisy_linear_impute needs image (H, W, C) and removed (H, W); got {x.shape} and {r.shape}")
    h, w, c = x.shape
    out = x.copy()
    n = int(r.sum())
    if n == 0:
        return out.astype(np.float32)
    if n == h * w:
        out[:] = x.reshape(-1, c).mean(axis=0)
    else:
        rows, cols = np.nonzero(r)
        var = -np.ones((h, w), np.int64)
        var[rows, cols] = np.arange(n)
        eq_i, eq_j, eq_v = [np.arange(n)], [np.arange(n)], []
        diag = np.zeros(n)
        rhs = np.zeros((n, c))
        for (dr, dc), wt in _ROAD_NEIGHBOURS:
            rr, cc = rows + dr, cols + dc
            ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            diag[ok] += wt
            idx = np.flatnonzero(ok)
            known = ~r[rr[ok], cc[ok]]
            rhs[idx[known]] -= wt * x[rr[ok][known], cc[ok][known]]
            eq_i.append(idx[~known])
            eq_j.append(var[rr[ok][~known], cc[ok][~known]])
            eq_v.append(np.full(int((~known).sum()), wt))
        values = np.concatenate([-diag] + eq_v)
        a = coo_matrix((values, (np.concatenate(eq_i), np.concatenate(eq_j))), shape=(n, n)).tocsc()
        solved = spsolve(a, rhs)
        out[rows, cols] = np.asarray(solved).reshape(n, c)
    if noise:
        rng = np.random.default_rng(0) if rng is None else rng
        out[r] += noise * rng.standard_normal((n, c))
    return out.astype(np.float32)


def road_removed(heatmap, percentile: float, order: str) -> np.ndarray:
    """Pixels ROAD removes from ``heatmap (H, W)`` at ``percentile`` (as pytorch-grad-cam's
    ``RemoveMostRelevantFirst``): ``order="morf"`` removes ``map >= P_p(map)`` (the top ``100 - p`` %),
    ``"lerf"`` removes ``1 - map >= P_p(1 - map)`` (the bottom ``100 - p`` %). ``(H, W)`` booleans."""
    m = np.asarray(heatmap, np.float32)
    if order == "lerf":
        m = 1 - m
    elif order != "morf":
        raise InputError(f"ROAD order must be 'morf' or 'lerf', got {order!r}")
    return ~(m < np.percentile(m, percentile))


def road(score_fn: Callable, images, maps, targets, percentiles: Sequence[float] = ROAD_PERCENTILES,
         noise: float = 0.01, seed: int = 0, batch: int = 64) -> dict:
    """ROAD: RemOve And Debias (Rong et al., ICML 2022), at pytorch-grad-cam's percentiles.

    For every percentile ``p`` the pixels of :func:`road_removed` (most relevant first, MoRF, and least
    relevant first, LeRF) are filled by :func:`noisy_linear_impute` and the target is scored again.
    MoRF: lower = better map; LeRF: higher = better. The combined score is pytorch-grad-cam's
    ``ROADCombined``: ``(mean LeRF - mean MoRF) / 2`` over the percentiles (higher = better; the original
    score cancels).

    Args:
      score_fn, batch: as :func:`deletion_insertion`; images ``(B, H, W, C)``; maps ``(B, H, W)`` in
        ``[0, 1]``; targets ``(B,)``.
      percentiles: ``(P,)``; pytorch-grad-cam's 10, 20, …, 90.
      noise: imputation noise (pytorch-grad-cam and the paper: 0.01).
      seed: noise seed (image ``i``, order ``o``, percentile ``k`` draw from ``(seed, i, o, k)``).

    Returns:
      ``{"percentiles": (P,), "morf": (B, P), "lerf": (B, P), "score": (B,), "morf_mean": (B,),
      "lerf_mean": (B,), "combined": (B,)}`` (scores after imputation; ``score`` on the image).
    """
    x = np.asarray(images, np.float32)
    m = _check_map(maps, 3, "maps")
    if x.ndim != 4 or x.shape[:3] != m.shape:
        raise InputError(f"images must be (B, H, W, C) with maps (B, H, W) of the same B, H, W; got {x.shape} and {m.shape}")
    t = np.asarray(targets).reshape(-1)
    ps = np.asarray(percentiles, np.float64).reshape(-1)
    if ps.size == 0 or (ps < 0).any() or (ps > 100).any():
        raise InputError(f"ROAD percentiles must lie in [0, 100]; got {list(ps)}")
    b = x.shape[0]
    filled = np.empty((b, 2, ps.size) + x.shape[1:], np.float32)
    for i in range(b):
        for o, order in enumerate(("morf", "lerf")):
            for k, p in enumerate(ps):
                rng = np.random.default_rng([seed, i, o, k])
                filled[i, o, k] = noisy_linear_impute(x[i], road_removed(m[i], p, order), noise, rng)
    after = target_scores(score_fn, filled.reshape((-1,) + x.shape[1:]), np.repeat(t, 2 * ps.size), batch)
    after = after.reshape(b, 2, ps.size)
    morf_mean, lerf_mean = after[:, 0].mean(axis=1), after[:, 1].mean(axis=1)
    return {"percentiles": ps, "morf": after[:, 0], "lerf": after[:, 1], "score": target_scores(score_fn, x, t, batch),
            "morf_mean": morf_mean, "lerf_mean": lerf_mean, "combined": (lerf_mean - morf_mean) / 2}


# --- bootstrap intervals ----------------------------------------------------------------------------
def bootstrap_interval(data, statistic: Callable | None = None, n_resamples: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over the rows (images) of ``data``.

    Args:
      data: ``(B, ...)`` per-image values (rows are resampled with replacement).
      statistic: ``(B, ...) -> float``; default the mean over rows (of a ``(B,)`` array).
      n_resamples: bootstrap resamples.
      level: coverage, e.g. 0.95 for the 2.5 % and 97.5 % percentiles.
      seed: the resampling seed; the same inputs and seed give the same interval.

    Returns:
      ``(low, high)`` floats; ``(v, v)`` for a single image.
    """
    d = np.asarray(data)
    if d.ndim < 1 or d.shape[0] == 0:
        raise InputError("bootstrap_interval needs at least one row of data")
    if not 0.0 < level < 1.0 or n_resamples < 1:
        raise InputError(f"need 0 < level < 1 and n_resamples >= 1; got {level}, {n_resamples}")
    stat = statistic or (lambda rows: float(np.mean(rows)))
    idx = np.random.default_rng(seed).integers(0, d.shape[0], size=(int(n_resamples), d.shape[0]))
    values = np.array([stat(d[i]) for i in idx], np.float64)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


# --- similarity of maps (sanity checks, Adebayo et al. 2018) ----------------------------------------------
def _pairs(a, b, what: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise InputError(f"{what} needs two (B, H, W) arrays of the same shape; got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError(f"{what}: the maps contain NaN or Inf")
    return a, b


def ssim_scores(a, b) -> np.ndarray:
    """SSIM (``skimage.metrics.structural_similarity``) of each pair of maps ``(B, H, W)`` -> ``(B,)``, the
    data range being the pair's joint ``max - min`` (as Quantus' ``ssim``). Two identical constant maps
    give 1; maps need ``H, W >= 7`` (the SSIM window)."""
    from skimage.metrics import structural_similarity

    a, b = _pairs(a, b, "ssim_scores")
    out = np.empty(a.shape[0])
    for i in range(a.shape[0]):
        span = float(max(a[i].max(), b[i].max()) - min(a[i].min(), b[i].min()))
        out[i] = 1.0 if span == 0 else structural_similarity(a[i], b[i], data_range=span)
    return out


def _pearson(u: np.ndarray, v: np.ndarray) -> float:
    u, v = u - u.mean(), v - v.mean()
    denom = np.sqrt((u * u).sum() * (v * v).sum())
    return float(np.clip((u * v).sum() / denom, -1.0, 1.0)) if denom > 0 else 0.0


def hog_similarities(a, b, pixels_per_cell: int | None = None, cells_per_block: int = 2) -> np.ndarray:
    """Pearson correlation of the HOG features (``skimage.feature.hog``, 9 orientations) of each pair of
    maps ``(B, H, W)`` -> ``(B,)``, as Adebayo et al.; 0 when either feature vector is constant (e.g. a flat
    map), never NaN. ``pixels_per_cell`` defaults to an eighth of the shorter side (at least 2): 28 px at 224."""
    from skimage.feature import hog

    a, b = _pairs(a, b, "hog_similarities")
    if pixels_per_cell is None:
        pixels_per_cell = max(2, min(a.shape[1:]) // 8)
    cell, block = (int(pixels_per_cell),) * 2, (int(cells_per_block),) * 2
    if min(a.shape[1:]) < pixels_per_cell * cells_per_block:
        raise InputError(f"HOG needs maps of at least {pixels_per_cell * cells_per_block} px a side; got {a.shape[1:]}")
    return np.array([_pearson(hog(x, pixels_per_cell=cell, cells_per_block=block), hog(y, pixels_per_cell=cell,
                                                                                      cells_per_block=block))
                     for x, y in zip(a, b)])


def map_similarities(a, b) -> dict[str, np.ndarray]:
    """Adebayo et al.'s four similarities of each pair of maps ``(B, H, W)``: ``{"spearman", "spearman_abs",
    "ssim", "hog"}``, each ``(B,)`` (:func:`rank_correlations` of the maps and of their absolute values,
    :func:`ssim_scores`, :func:`hog_similarities`). For non-negative maps the two Spearman values agree."""
    a, b = _pairs(a, b, "map_similarities")
    return {"spearman": rank_correlations(a, b), "spearman_abs": rank_correlations(np.abs(a), np.abs(b)),
            "ssim": ssim_scores(a, b), "hog": hog_similarities(a, b)}


# --- relevance inside a mask (Arras et al. 2022; Quantus' RelevanceMassAccuracy / RelevanceRankAccuracy) ---
def _maps_and_masks(maps, masks, what: str) -> tuple[np.ndarray, np.ndarray]:
    m = _check_map(maps, 3, "maps")
    g = np.asarray(masks).astype(bool)
    if g.shape != m.shape:
        raise InputError(f"{what}: masks must be (B, H, W) like the maps {m.shape}; got {g.shape}")
    return m.reshape(m.shape[0], -1), g.reshape(g.shape[0], -1)


def relevance_mass(maps, masks) -> np.ndarray:
    """Fraction of each map's total relevance inside its mask: ``(B, H, W), (B, H, W) bool -> (B,)``.
    An all-zero map or an empty mask gives 0 (Quantus gives NaN)."""
    m, g = _maps_and_masks(maps, masks, "relevance_mass")
    total = m.sum(axis=1)
    inside = (m * g).sum(axis=1)
    return np.where((total > 0) & g.any(axis=1), inside / np.where(total > 0, total, 1.0), 0.0)


def relevance_rank(maps, masks) -> np.ndarray:
    """Fraction of each map's ``K`` highest pixels that lie in its mask, ``K`` the mask's size (ties: raster
    order): ``(B, H, W), (B, H, W) bool -> (B,)``; 0 for an empty mask."""
    m, g = _maps_and_masks(maps, masks, "relevance_rank")
    order = np.argsort(-m, axis=1, kind="stable")
    k = g.sum(axis=1)
    hits = np.take_along_axis(g, order, axis=1) & (np.arange(m.shape[1])[None, :] < k[:, None])
    return np.where(k > 0, hits.sum(axis=1) / np.maximum(k, 1), 0.0)
