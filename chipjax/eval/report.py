"""The report of an evaluation: per-run summaries (from the records, by :mod:`chipjax.metrics`), the Markdown
table, ``results.md``, ``results.csv``, ``timing.csv``, the per-layer sanity table, the curve plots and the
examples grid. Every file is written atomically (:func:`chipjax.jobs.atomic_write`)."""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .. import metrics as M
from ..data import EvalSource
from ..jobs import atomic_write
from .sanity import SANITY_MODES, SANITY_SIMILARITIES
from .spec import DELETION_PROTOCOLS, Run, Settings
from .store import RecordStore, example_path

def sanity_layer_table(records: Iterable[dict], runs: Sequence[Run]) -> tuple[str, str]:
    """The per-layer sanity check as (Markdown, CSV): for every run and mode, the mean of each similarity
    over the images at every randomised unit, from the logits down (a curve: left = only the top changed)."""
    rows = []
    for run in runs:
        recs = [r["sanity_layers"] for r in records if r["run"] == run.key and r.get("sanity_layers")]
        if not recs:
            continue
        for mode in SANITY_MODES:
            units = [u for u, _ in recs[0][mode]]
            means = np.mean([[v for _, v in rec[mode]] for rec in recs], axis=0)  # (units, 4)
            rows.append((run.key, mode, units, means, len(recs)))
    if not rows:
        return "", ""
    csv_lines = ["run,mode,depth,unit,images," + ",".join(SANITY_SIMILARITIES)]
    md = []
    for key, mode, units, means, n in rows:
        for depth, (u, m) in enumerate(zip(units, means), start=1):
            csv_lines.append(f"{key},{mode},{depth},{u},{n}," + ",".join(f"{v:.6f}" for v in m))
    units = rows[0][2]
    md.append("| method @ layer | randomisation | " + " | ".join(units) + " |")
    md.append("|---|---|" + "---:|" * len(units))
    for key, mode, u, means, n in rows:
        md.append(f"| {key} | {mode} | " + " | ".join(f"{a:.2f} / {b:.2f}" for a, b in zip(means[:, 0], means[:, 2])) + " |")
    text = ("\n## Sanity check by layer (Adebayo et al.)\n\nSpearman r / SSIM between each map and the map of the "
            "model whose units are re-initialised from the logits down (cascading: every unit up to this one; "
            "independent: this unit alone); near 0 = the map depends on those weights. All four similarities "
            "(Spearman, Spearman of |maps|, SSIM, HOG) are in sanity_layers.csv.\n\n" + "\n".join(md) + "\n")
    return text, "\n".join(csv_lines) + "\n"


# ------------------------------------------------------------------------------------ summaries
def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


def add_tuned_box_accuracy(summary: dict, records: Iterable[dict], thresholds: Mapping[str, float | None],
                           tuned_on: str, bootstrap: int = 1000) -> None:
    """Add ``box_acc_tuned`` (with ``_ci``), ``tuned_threshold`` and ``tuned_on`` to every run of ``summary``:
    the CAM box accuracy of each run's ``max_box_acc`` records at the threshold tuned on another split
    (:func:`chipjax.metrics.tuned_box_accuracy`)."""
    records = list(records)
    for key, row in summary.items():
        t = thresholds.get(key)
        row["tuned_threshold"], row["tuned_on"] = t, tuned_on
        value, ci = (None, None) if t is None else M.tuned_box_accuracy([r for r in records if r["run"] == key], t,
                                                                        bootstrap)
        row["box_acc_tuned"] = value
        if ci is not None:
            row["box_acc_tuned_ci"] = ci


def summarize(records: Iterable[dict], runs: Sequence[Run], metrics: Sequence[str],
              bootstrap: int = 1000) -> tuple[dict, dict]:
    """Per-run summaries of the per-image records (:func:`chipjax.metrics.summary_values` and
    :func:`chipjax.metrics.summary_intervals`), and the classification errors.

    Returns:
      ``({run_key: {"images", "pointing", "box_acc", "max_box_acc", "max_box_threshold", "top1_loc_err",
      "deletion_auc", "insertion_auc", "sanity_r", "max_box_acc_v2", "pxap", "avg_drop", "conf_increase",
      "road_*"}}, {"images", "top1_err", "top5_err"})``: the metrics asked for, each ``None`` when no image
      could be scored, and ``NAME_ci`` ``(low, high)`` 95 % intervals (``bootstrap`` resamples; 0: none).
    """
    by_run: dict[str, list[dict]] = {r.key: [] for r in runs}
    for rec in records:
        if rec["run"] in by_run:
            by_run[rec["run"]].append(rec)
    summary = {}
    for key, rows in by_run.items():
        rows.sort(key=lambda r: r["i"])
        row: dict[str, Any] = {"images": len(rows)}
        row.update(M.summary_values(rows, metrics))
        row.update(M.summary_intervals(rows, metrics, bootstrap))
        summary[key] = row
    first = next((rows for rows in by_run.values() if rows), [])
    labelled = [r for r in first if r.get("top1_ok") is not None]
    classification = {
        "images": len(first),
        "top1_err": 1.0 - _mean(r["top1_ok"] for r in labelled) if labelled else None,
        "top5_err": 1.0 - _mean(r["top5_ok"] for r in labelled) if labelled else None,
    }
    return summary, classification


_COLUMNS = (  # (summary key, metric, Markdown header)
    ("pointing", "pointing", "pointing ↑"),
    ("box_acc", "box_acc", "box acc @{thr} ↑"),
    ("max_box_acc", "max_box_acc", "MaxBoxAcc ↑ (thr)"),
    ("box_acc_tuned", "max_box_acc", "box acc @tuned thr ↑ (thr)"),
    ("max_box_acc_v2", "max_box_acc_v2", "MaxBoxAccV2 ↑"),
    ("pxap", "pxap", "PxAP ↑"),
    ("top1_loc_err", "top1_loc", "top-1 loc err ↓"),
    ("deletion_auc", "deletion", "deletion AUC ↓ ({protocol})"),
    ("insertion_auc", "insertion", "insertion AUC ↑ ({protocol})"),
    ("avg_drop", "confidence", "avg drop ↓"),
    ("conf_increase", "confidence", "increase in conf. ↑"),
    ("road_morf", "road", "ROAD MoRF ↓"),
    ("road_lerf", "road", "ROAD LeRF ↑"),
    ("road_combined", "road", "ROAD combined ↑"),
    ("sanity_r", "sanity", "sanity r ↓"),
)


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def results_table(summary: Mapping[str, Mapping], metrics: Sequence[str], settings: Settings) -> str:
    """The Markdown table: a row per run (``method@layer``), a column per metric, 3 decimals, and the 95 %
    bootstrap interval in brackets where the summary has one; ``dropped`` / ``skipped`` sample counts
    after ``images`` when any run has some."""
    cols = [c for c in _COLUMNS if c[1] in metrics
            and (c[0] != "box_acc_tuned" or any("box_acc_tuned" in row for row in summary.values()))]
    protocol = DELETION_PROTOCOLS[settings.deletion_protocol]
    extra = [c for c in ("dropped", "skipped") if any(row.get(c) for row in summary.values())]
    header = (["method @ layer", "images"] + extra
              + [h.format(thr=f"{settings.box_threshold:g}", protocol=protocol) for _, _, h in cols])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for key, row in summary.items():
        cells = [key, str(row["images"])] + [str(row.get(c, 0)) for c in extra]
        for name, _, _ in cols:
            text = _fmt(row.get(name))
            if name == "max_box_acc" and row.get(name) is not None:
                text += f" ({row['max_box_threshold']:.2f})"
            if name == "box_acc_tuned" and row.get(name) is not None:
                text += f" ({row['tuned_threshold']:.2f})"
            if row.get(f"{name}_ci") is not None:
                text += " [{:.2f}, {:.2f}]".format(*row[f"{name}_ci"])
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_markdown(model, source: EvalSource, metrics, settings: Settings, options, summary, classification,
                     skipped: Mapping[str, str] | None = None, dropped: Mapping[str, str] | None = None) -> str:
    """``results.md``: what was evaluated and the table (deterministic: no dates, no timings)."""
    cls = classification
    cls_text = ("classification top-1 error {:.3f}, top-5 error {:.3f} (a prediction counts when it is one of the "
                "sample's acceptable labels)".format(cls["top1_err"], cls["top5_err"])
                if cls["top1_err"] is not None else "no labels: maps explain the top-1 class")
    opts = "; ".join(f"{m}: {json.dumps(o, sort_keys=True)}" for m, o in options.items()) or "library defaults"
    return (
        f"# chipjax eval: {source.description}\n\n"
        f"Model {model.name} ({model.weights}); {len(source.samples)} images; {cls_text}.\n"
        f"Maps explain the ground-truth class; boxes are compared in the network's {model.input_size}px view. "
        f"Pointing tolerance {settings.pointing_tolerance:g} px; box threshold {settings.box_threshold:g}, "
        f"IoU ≥ {settings.iou:g}; deletion/insertion: {settings.deletion_steps} steps, {_protocol_text(settings)}, "
        f"softmax probability; [low, high]: 95 % bootstrap intervals over images "
        f"({settings.bootstrap} resamples, seed 0). Method options: {opts}.{_tuned_text(summary)}\n\n"
        + results_table(summary, metrics, settings)
        + "".join(f"\n{title}:\n" + "".join(f"- {name}: {why}\n" for name, why in names.items())
                  for title, names in (("Skipped (unreadable; --skip-bad)", skipped or {}),
                                       ("Dropped from the box metrics", dropped or {})) if names)
    )


def _tuned_text(summary: Mapping) -> str:
    tuned_on = next((row["tuned_on"] for row in summary.values() if row.get("tuned_on")), None)
    return (f" Tuning: each run's box threshold was chosen on {tuned_on} (its MaxBoxAcc threshold there) and "
            f"applied here ('box acc @tuned thr')." if tuned_on else "")


def _protocol_text(settings: Settings) -> str:
    if settings.deletion_protocol == "rise":
        return "RISE protocol (deletion to zero, insertion from RISE's blur)"
    return f"chipjax v1 protocol ({settings.baseline} baseline both ways)"


def _csv_value(row: Mapping, name: str):
    for end, side in (("_ci_low", 0), ("_ci_high", 1)):
        if name.endswith(end):
            ci = row.get(name[: -len(end)] + "_ci")
            return None if ci is None else ci[side]
    return row.get(name)


def _csv_text(summary: Mapping[str, Mapping]) -> str:
    names = ["images", "pointing", "box_acc", "max_box_acc", "max_box_threshold", "top1_loc_err", "deletion_auc",
             "insertion_auc", "sanity_r", "box_acc_tuned", "tuned_threshold"] + [n for n in M.SUMMARY_ENTRIES if n not in (
                 "pointing", "box_acc", "max_box_acc", "top1_loc_err", "deletion_auc", "insertion_auc", "sanity_r")]
    present = [n for n in names if any(n in row for row in summary.values())]
    for n in list(present):  # the intervals after the values, as NAME_ci_low, NAME_ci_high
        if any(f"{n}_ci" in row for row in summary.values()):
            present += [f"{n}_ci_low", f"{n}_ci_high"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run", "method", "layer"] + present)
    for key, row in summary.items():
        method, _, layer = key.partition("@")
        values = [_csv_value(row, n) for n in present]
        writer.writerow([key, method, layer] + ["" if v is None else (v if isinstance(v, int) else f"{v:.6f}")
                                                for v in values])
    return out.getvalue()


def _timing_text(records: Iterable[dict], runs: Sequence[Run]) -> str:
    seconds: dict[str, list[float]] = {r.key: [] for r in runs}
    for rec in records:
        if rec["run"] in seconds and "seconds" in rec:
            seconds[rec["run"]].append(float(rec["seconds"]))
    lines = ["run,seconds_per_image"] + [f"{k},{np.mean(v):.4f}" for k, v in seconds.items() if v]
    return "\n".join(lines) + "\n"


def write_outputs(out_dir, model, source, runs, metrics, settings, options, store: RecordStore, summary,
                  classification) -> None:
    """results.md, results.csv, timing.csv, curve plots and the examples grid."""
    from .. import viz

    live = list(getattr(store, "live", []))
    skipped = {f"{r['name']} (#{r['i']})": r["skipped"] for r in live if r.get("skipped")}
    dropped = {f"{r['name']} (#{r['i']})": r["dropped"] for r in live if r.get("dropped")}
    measured = [r for r in getattr(store, "live", store.records.values()) if not r.get("skipped")]
    sanity_md, sanity_csv = sanity_layer_table(measured, runs) if "sanity_layers" in metrics else ("", "")
    atomic_write(os.path.join(out_dir, "results.md"),
                  (results_markdown(model, source, metrics, settings, options, summary, classification,
                                    skipped, dropped) + sanity_md).encode())
    if sanity_csv:
        atomic_write(os.path.join(out_dir, "sanity_layers.csv"), sanity_csv.encode())
    atomic_write(os.path.join(out_dir, "results.csv"), _csv_text(summary).encode())
    records = list(getattr(store, "live", store.records.values()))  # those of the samples as they are now
    atomic_write(os.path.join(out_dir, "timing.csv"), _timing_text(records, runs).encode())
    for kind in ("deletion", "insertion"):
        if kind not in metrics:
            continue
        lines, areas = {}, {}
        for run in runs:
            rows = [r[f"{kind}_curve"] for r in records if r["run"] == run.key and f"{kind}_curve" in r]
            if rows:
                mean = np.mean(np.asarray(rows, np.float64), axis=0)
                lines[run.key] = (np.linspace(0.0, 1.0, len(mean)), mean)
                areas[run.key] = summary[run.key][f"{kind}_auc"]
        if lines:
            viz.curves(lines, kind=kind, auc=areas, out=os.path.join(out_dir, f"{kind}.png"))
    _write_examples(out_dir, model, source, runs, settings)


def _write_examples(out_dir, model, source: EvalSource, runs, settings: Settings) -> None:
    from .. import viz

    shown = [i for i in range(min(settings.num_examples, len(source.samples)))
             if all(os.path.isfile(example_path(out_dir, i, r)) for r in runs)]
    if not shown:
        return
    images = [model.view(source.samples[i].image) for i in shown]
    maps = {r.key: np.stack([np.load(example_path(out_dir, i, r)).astype(np.float32) / 255.0 for i in shown])
            for r in runs}
    titles = [str(source.samples[i].name)[:24] for i in shown]
    viz.method_grid(images, maps, row_titles=titles, out=os.path.join(out_dir, "examples.png"), dpi=60)

