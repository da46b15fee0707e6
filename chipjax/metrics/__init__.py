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

Layout: :mod:`~chipjax.metrics.localisation` (boxes, box accuracy, pointing game, PxAP, relevance in a mask),
:mod:`~chipjax.metrics.faithfulness` (the one :func:`auc`, deletion/insertion, confidence change, ROAD),
:mod:`~chipjax.metrics.sanity` (rank correlation, layer randomisation, map similarity) and
:mod:`~chipjax.metrics.aggregate` (bootstrap intervals; the set-level metrics of an evaluation recomputed from
its per-image records). Every public name is re-exported here: ``from chipjax import metrics; metrics.X``.
"""

from __future__ import annotations

from .localisation import (  # noqa: F401
    box_iou,
    resize_boxes,
    crop_boxes,
    map_to_box,
    maps_to_boxes,
    localization_correct,
    localization_errors,
    max_box_acc,
    pointing_game,
    V2_IOUS,
    normalize_maps,
    component_boxes,
    best_ious_all_components,
    max_box_acc_v2,
    max_box_acc_v2_from_ious,
    boxes_to_mask,
    pxap_histograms,
    pxap_from_histograms,
    pxap,
    relevance_mass,
    relevance_rank,
)

from .faithfulness import (  # noqa: F401
    auc,
    gaussian_blur,
    rise_kernel,
    rise_blur,
    deletion_insertion,
    deletion_insertion_batched,
    target_scores,
    confidence_change,
    ROAD_PERCENTILES,
    noisy_linear_impute,
    road_removed,
    road,
)

from .sanity import (  # noqa: F401
    rank_correlations,
    rank_correlation,
    sanity_check,
    randomize_top_layers,
    randomize_layers,
    ssim_scores,
    hog_similarities,
    map_similarities,
)

from .aggregate import (  # noqa: F401
    bootstrap_interval,
    MAX_BOX_THRESHOLDS,
    PXAP_BINS,
    bits_text,
    sparse_histogram,
    dense_histograms,
    record_values,
    box_hits,
    box_hits_v2,
    top1_loc_errors,
    pxap_histogram_records,
    max_box_acc_of_hits,
    max_box_acc_v2_of_hits,
    pxap_of_histograms,
    SUMMARY_ENTRIES,
    summary_values,
    summary_intervals,
    tuned_box_accuracy,
)


__all__ = [
    "box_iou",
    "resize_boxes",
    "crop_boxes",
    "map_to_box",
    "maps_to_boxes",
    "localization_correct",
    "localization_errors",
    "max_box_acc",
    "pointing_game",
    "V2_IOUS",
    "normalize_maps",
    "component_boxes",
    "best_ious_all_components",
    "max_box_acc_v2",
    "max_box_acc_v2_from_ious",
    "boxes_to_mask",
    "pxap_histograms",
    "pxap_from_histograms",
    "pxap",
    "relevance_mass",
    "relevance_rank",
    "auc",
    "gaussian_blur",
    "rise_kernel",
    "rise_blur",
    "deletion_insertion",
    "deletion_insertion_batched",
    "target_scores",
    "confidence_change",
    "ROAD_PERCENTILES",
    "noisy_linear_impute",
    "road_removed",
    "road",
    "rank_correlations",
    "rank_correlation",
    "sanity_check",
    "randomize_top_layers",
    "randomize_layers",
    "ssim_scores",
    "hog_similarities",
    "map_similarities",
    "bootstrap_interval",
    "MAX_BOX_THRESHOLDS",
    "PXAP_BINS",
    "bits_text",
    "sparse_histogram",
    "dense_histograms",
    "record_values",
    "box_hits",
    "box_hits_v2",
    "top1_loc_errors",
    "pxap_histogram_records",
    "max_box_acc_of_hits",
    "max_box_acc_v2_of_hits",
    "pxap_of_histograms",
    "SUMMARY_ENTRIES",
    "summary_values",
    "summary_intervals",
    "tuned_box_accuracy",
]
