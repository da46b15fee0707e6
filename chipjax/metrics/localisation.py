"""Localisation metrics: boxes, CAM box accuracy, MaxBoxAcc(V2), pointing game, PxAP, relevance in a mask.

Conventions: :mod:`chipjax.metrics`."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from ..errors import InputError


# 8-connectivity: diagonal neighbours belong to the same component (as OpenCV contours in the CAM code).
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


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

