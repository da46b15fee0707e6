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
    "rank_correlation",
    "rank_correlations",
    "sanity_check",
    "randomize_top_layers",
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
) -> dict:
    """Deletion and insertion curves and their AUCs (Petsiuk et al., RISE, 2018).

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
    x = np.asarray(images, dtype=np.float32)
    m = _check_map(maps, 3, "maps")
    t = np.asarray(targets).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != m.shape:
        raise InputError(f"images must be (B, H, W, C) with maps (B, H, W) of the same B, H, W; got {x.shape} and {m.shape}")
    if t.shape[0] != x.shape[0]:
        raise InputError(f"got {x.shape[0]} images but {t.shape[0]} targets")
    if steps < 2 or batch < 1:
        raise InputError(f"need steps >= 2 and batch >= 1; got steps={steps}, batch={batch}")
    kinds = (baseline, baseline) if isinstance(baseline, str) else tuple(baseline)
    made = {kind: _baseline_images(x, kind, sigma, fill) for kind in set(kinds)}
    bases = np.stack([made[kind] for kind in kinds])  # (2, B, H, W, C): deletion's, insertion's
    ranks = _ranks_desc(m)
    n_img, h, w = m.shape
    fractions = np.linspace(0.0, 1.0, steps)
    counts = np.rint(fractions * h * w).astype(np.int64)

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
    curves = scores.reshape(n_img, 2, steps)
    return {
        "deletion_auc": auc(fractions, curves[:, 0]),
        "insertion_auc": auc(fractions, curves[:, 1]),
        "curves": {"fractions": fractions, "deletion": curves[:, 0], "insertion": curves[:, 1]},
    }


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
    top = list(keys_in_order)[len(keys_in_order) - n :]
    out = {col: dict(tree) for col, tree in variables.items()}
    for key in top:
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
