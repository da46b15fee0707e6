"""Aggregates over images: bootstrap intervals, and the set-level metrics of an evaluation recomputed from its
per-image records (``records.jsonl`` of :mod:`chipjax.eval`).

Conventions: :mod:`chipjax.metrics`."""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import InputError
from .localisation import V2_IOUS, pxap_from_histograms


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




# --- per-image records of an evaluation, and the set-level metrics recomputed from them ---------------------
#: The thresholds of ``max_box_acc`` / ``max_box_acc_v2`` records (a fraction of the map's maximum): 0, 0.01, ..., 0.99.
MAX_BOX_THRESHOLDS = np.arange(0.0, 1.0, 0.01)
#: Bins of a PxAP histogram record (bin width 0.001, as :func:`~chipjax.metrics.pxap_histograms`).
PXAP_BINS = 1002


def bits_text(bits) -> str:
    """Booleans ``(T,)`` (one per threshold) as the record's text ``"0110..."``."""
    return "".join("1" if a else "0" for a in np.asarray(bits).reshape(-1))


def sparse_histogram(hist: np.ndarray) -> list[list[int]]:
    """``(2, nbins)`` PxAP counts -> ``[[bin, object count, background count], ...]`` of the non-empty bins."""
    nonzero = np.flatnonzero(hist.sum(axis=0))
    return [[int(k), int(hist[0, k]), int(hist[1, k])] for k in nonzero]


def dense_histograms(rows: Sequence[dict]) -> np.ndarray:
    """The records' sparse PxAP histograms (``pxap_hist``) as ``(n, 2, PXAP_BINS)``."""
    out = np.zeros((len(rows), 2, PXAP_BINS), np.int64)
    for i, r in enumerate(rows):
        for k, pos, neg in r["pxap_hist"]:
            out[i, 0, k], out[i, 1, k] = pos, neg
    return out


def record_values(rows: Iterable[dict], field: str, transform: Callable = float) -> np.ndarray:
    """``(n,)`` float64: ``transform(record[field])`` of the records that have the field (not ``None``)."""
    return np.array([transform(r[field]) for r in rows if r.get(field) is not None], np.float64)


def box_hits(rows: Iterable[dict]) -> np.ndarray:
    """``(n, T)`` bool: CAM-box hits of each ``max_box_acc`` record at every threshold of :data:`MAX_BOX_THRESHOLDS`."""
    return np.array([[c == "1" for c in r["box_ok_at"]] for r in rows if r.get("box_ok_at")],
                    bool).reshape(-1, len(MAX_BOX_THRESHOLDS))


def box_hits_v2(rows: Iterable[dict]) -> np.ndarray:
    """``(n, 3, T)`` bool: MaxBoxAccV2 hits of each record at the IoUs :data:`V2_IOUS` and every threshold."""
    return np.array([[[c == "1" for c in bits] for bits in r["box_v2_ok_at"]] for r in rows if r.get("box_v2_ok_at")],
                    bool).reshape(-1, len(V2_IOUS), len(MAX_BOX_THRESHOLDS))


def top1_loc_errors(rows: Iterable[dict]) -> np.ndarray:
    """``(n,)`` float64: 1 where an image's top-1 class or its box is wrong (records that have both)."""
    return np.array([1.0 - float(r["box_ok"] and r["top1_ok"]) for r in rows
                     if r.get("box_ok") is not None and r.get("top1_ok") is not None], np.float64)


def pxap_histogram_records(rows: Iterable[dict]) -> np.ndarray:
    """``(n, 2, PXAP_BINS)`` PxAP histograms of the records that have one."""
    return dense_histograms([r for r in rows if r.get("pxap_hist")])


def max_box_acc_of_hits(hits: np.ndarray) -> tuple[float, float]:
    """``(MaxBoxAcc, its threshold)`` of per-image hits ``(n, T)``: the best threshold chosen once for the set."""
    acc = hits.mean(axis=0)
    best = int(np.argmax(acc))
    return float(acc[best]), float(MAX_BOX_THRESHOLDS[best])


def max_box_acc_v2_of_hits(hits: np.ndarray) -> float:
    """MaxBoxAccV2 of per-image hits ``(n, 3, T)``: each IoU at its best threshold, averaged."""
    return float(hits.mean(axis=0).max(axis=1).mean())


def pxap_of_histograms(hists: np.ndarray) -> float:
    """PxAP of per-image histograms ``(n, 2, nbins)`` (:func:`~chipjax.metrics.pxap_from_histograms`)."""
    return pxap_from_histograms(hists)["pxap"]


def _mean(data: np.ndarray) -> float:
    return float(np.mean(data))


def _record_field(field: str, transform: Callable = float) -> Callable:
    return lambda rows: record_values(rows, field, transform)


#: Summary entry -> (the metric it belongs to, per-image data of the records ``(n, ...)``, statistic of such
#: data -> float). One mechanism gives both a table's value and its bootstrap interval (set-level statistics
#: such as MaxBoxAcc and PxAP are recomputed on every resample).
SUMMARY_ENTRIES: dict[str, tuple[str, Callable, Callable]] = {
    "pointing": ("pointing", _record_field("pointing"), _mean),
    "box_acc": ("box_acc", _record_field("box_ok"), _mean),
    "max_box_acc": ("max_box_acc", box_hits, lambda d: max_box_acc_of_hits(d)[0]),
    "max_box_acc_v2": ("max_box_acc_v2", box_hits_v2, max_box_acc_v2_of_hits),
    "pxap": ("pxap", pxap_histogram_records, pxap_of_histograms),
    "top1_loc_err": ("top1_loc", top1_loc_errors, _mean),
    "deletion_auc": ("deletion", _record_field("deletion_auc"), _mean),
    "insertion_auc": ("insertion", _record_field("insertion_auc"), _mean),
    "avg_drop": ("confidence", _record_field("avg_drop"), _mean),
    "conf_increase": ("confidence", _record_field("conf_increase"), _mean),
    "road_morf": ("road", _record_field("road_morf"), _mean),
    "road_lerf": ("road", _record_field("road_lerf"), _mean),
    "road_combined": ("road", _record_field("road_combined"), _mean),
    "sanity_r": ("sanity", _record_field("sanity_r"), _mean),
}


#: The order of a summary row: these first (as the table's first columns), then the rest of SUMMARY_ENTRIES.
_FIRST_ENTRIES = ("pointing", "box_acc", "max_box_acc", "top1_loc_err", "deletion_auc", "insertion_auc", "sanity_r")


def summary_values(rows: Sequence[dict], metrics: Sequence[str]) -> dict:
    """``{entry: value}`` of one run's records for every summary entry of ``metrics`` (``None`` without data);
    ``max_box_acc`` adds its ``max_box_threshold``; ``top1_loc_err`` is ``1 −`` the mean of the images whose
    top-1 class and box are both right."""
    out: dict = {}
    order = list(_FIRST_ENTRIES) + [n for n in SUMMARY_ENTRIES if n not in _FIRST_ENTRIES]
    for name in order:
        metric, data_fn, stat = SUMMARY_ENTRIES[name]
        if metric not in metrics:
            continue
        data = data_fn(rows)
        if name == "top1_loc_err":
            out[name] = 1.0 - float(np.mean(1.0 - data)) if len(data) else None
        else:
            out[name] = stat(data) if len(data) else None
        if name == "max_box_acc":
            out["max_box_threshold"] = max_box_acc_of_hits(data)[1] if len(data) else None
    return out


def summary_intervals(rows: Sequence[dict], metrics: Sequence[str], resamples: int = 1000, seed: int = 0) -> dict:
    """``{entry_ci: (low, high)}``: percentile-bootstrap 95 % intervals over the images of one run's records,
    for every summary entry of ``metrics`` that has data (:func:`bootstrap_interval`)."""
    out = {}
    if resamples < 1:
        return out
    for name, (metric, data_fn, stat) in SUMMARY_ENTRIES.items():
        if metric in metrics:
            data = data_fn(rows)
            if len(data):
                out[f"{name}_ci"] = bootstrap_interval(data, stat, n_resamples=resamples, seed=seed)
    return out


def tuned_box_accuracy(rows: Sequence[dict], threshold: float, bootstrap: int = 1000) -> tuple:
    """CAM box accuracy of one run's ``max_box_acc`` records at ``threshold`` (tuned on another split; the
    nearest of :data:`MAX_BOX_THRESHOLDS`), and its bootstrap interval (``None`` when ``bootstrap`` is 0).
    Returns ``(None, None)`` without records."""
    hits = box_hits(rows)
    if not len(hits):
        return None, None
    j = int(np.argmin(np.abs(MAX_BOX_THRESHOLDS - threshold)))
    column = hits[:, j].astype(float)
    return float(column.mean()), (bootstrap_interval(column, n_resamples=bootstrap) if bootstrap else None)
