"""The runner: batches of images explained by every run, each (batch, run) unit scored into per-image records
by the functions of :mod:`chipjax.metrics`, stored as it goes (:mod:`chipjax.eval.store`)."""
from __future__ import annotations

import dataclasses
import logging
import os
import time
import weakref
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import metrics as M
from ..data import EvalSource, load_source
from ..errors import ChipjaxError, InputError
from ..models.preprocess import boxes_in_view
from .class_chip import class_chip_models
from .report import add_tuned_box_accuracy, summarize, write_outputs
from .sanity import SanityModels, randomized_model, sanity_layer_records
from .spec import (ALL_METHODS, CLASS_CHIP, DEFAULT_METRICS, EXAMPLES_DIR, Run, Settings, check_metrics,
                   check_options, parse_runs, run_config, sample_digests)
from .store import RecordStore, example_path, flush_on_exit, save_example

log = logging.getLogger("chipjax")

_SCORERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def softmax_scorer(model) -> Callable[[np.ndarray], np.ndarray]:
    """``images (n, S, S, 3) -> softmax probabilities (n, C)``, jit-compiled once per model (for deletion/insertion)."""
    import jax
    import jax.numpy as jnp

    if model not in _SCORERS:
        module, variables = model.module, model.variables  # not the model: the cache must not keep it alive
        apply = jax.jit(lambda v, x: jax.nn.softmax(module.apply(v, x), axis=-1))
        _SCORERS[model] = lambda images: np.asarray(apply(variables, jnp.asarray(images, jnp.float32)))
    return _SCORERS[model]


_PROB_FNS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def softmax_fn(model) -> Callable:
    """The jax-traceable ``images (n, S, S, 3) -> softmax (n, C)`` of ``model``, one function object per model
    (so :func:`chipjax.metrics.deletion_insertion_batched` reuses its compiled program)."""
    import jax

    if model not in _PROB_FNS:
        module, variables = model.module, model.variables
        _PROB_FNS[model] = lambda images: jax.nn.softmax(module.apply(variables, images), axis=-1)
    return _PROB_FNS[model]


# ----------------------------------------------------------------------------------- the work
@dataclasses.dataclass
class _Batch:
    """One batch of images, prepared once and shared by every run."""

    indices: list[int]
    names: list[str]
    views: list[np.ndarray]       # uint8 (S, S, 3)
    x: Any                        # (B, S, S, 3) float32
    labels: list[int | None]
    targets: np.ndarray           # (B,) int
    top5: np.ndarray              # (B, 5)
    top1_ok: list[bool | None]
    top5_ok: list[bool | None]
    boxes: list[np.ndarray]       # (G, 4) in view pixels
    masks: list | None = None     # (S, S) bool object pixels, where the source has them


def _load_samples(source: EvalSource, indices: Sequence[int], skip_bad: bool) -> tuple[list, list, dict]:
    """``(indices, samples, {index: reason})``: the samples that load, and (with ``skip_bad``) why the others
    did not; without it the first unreadable sample is an error that says how to skip it."""
    good, samples, bad = [], [], {}
    for i in indices:
        try:
            samples.append(source.samples[i])
            good.append(i)
        except ChipjaxError as e:
            if not skip_bad:
                raise type(e)(f"{e}; rerun with --skip-bad to skip (and list) such samples") from None
            bad[i] = str(e)
    return good, samples, bad


def dropped_reason(boxes_given: np.ndarray, boxes_seen: np.ndarray) -> str | None:
    """Why a sample with boxes counts in no box metric: all its boxes ``(G, 4)`` (in the image) have no area,
    or none is left in the network's view ``boxes_seen (G, 4)``; ``None`` when it counts (or has no boxes)."""
    given = np.asarray(boxes_given, np.float64).reshape(-1, 4)
    if len(given) == 0:
        return None
    if not np.any((given[:, 2] > given[:, 0]) & (given[:, 3] > given[:, 1])):
        return "every box lies outside the image"
    seen = np.asarray(boxes_seen, np.float64).reshape(-1, 4)
    if not np.any((seen[:, 2] > seen[:, 0]) & (seen[:, 3] > seen[:, 1])):
        return "every box lies outside the network's view (cropped away)"
    return None


def _prepare_batch(model, source: EvalSource, indices: Sequence[int], samples=None) -> _Batch:
    import jax.numpy as jnp

    samples = [source.samples[i] for i in indices] if samples is None else samples
    views = [model.view(s.image) for s in samples]
    x = jnp.concatenate([jnp.asarray(model.spec.normalize(v)[None], jnp.float32) for v in views])
    logits = np.asarray(model(x))
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    labels = [None if s.label is None else int(s.label) for s in samples]
    targets = np.array([top5[b, 0] if l is None else l for b, l in enumerate(labels)], np.int32)
    ok1, ok5 = [], []
    for b, l in enumerate(labels):
        accepted = set(source.accept(l)) if l is not None else None
        ok1.append(None if accepted is None else bool(int(top5[b, 0]) in accepted))
        ok5.append(None if accepted is None else bool(any(int(c) in accepted for c in top5[b])))
    boxes = [boxes_in_view(s.boxes, s.image.shape[:2], model.spec.view) for s in samples]
    masks = [M.boxes_to_mask(b, v.shape[:2]) for b, v in zip(boxes, views)] if source.boxes_are_masks else None
    batch = _Batch(list(indices), [str(s.name) for s in samples], views, x, labels, targets, top5, ok1, ok5, boxes,
                   masks)
    batch.dropped = [dropped_reason(s.boxes, b) for s, b in zip(samples, boxes)]
    return batch


def _maps(model, batch: _Batch, run: Run, options: Mapping, class_models: Mapping | None = None) -> np.ndarray:
    from ..methods import explain

    if run.method == CLASS_CHIP:
        return np.asarray(class_models[run.layers[0]].explain(model, batch.x, batch.targets), np.float32)
    maps = explain(model, batch.x, method=run.method, layer=run.layer_arg, target=[int(t) for t in batch.targets],
                   **dict(options.get(run.method, {})))
    return np.asarray(maps, np.float32)


def _unit_records(model, batch: _Batch, run: Run, metrics: Sequence[str], options: Mapping, settings: Settings,
                  scorer, random_model, sanity: "SanityModels | None" = None,
                  class_models: Mapping | None = None) -> tuple[list[dict], np.ndarray]:
    """Records of one (batch, run) unit, and its maps ``(B, S, S)``."""
    t0 = time.perf_counter()
    maps = _maps(model, batch, run, options, class_models)
    records = []
    for b, i in enumerate(batch.indices):
        rec: dict[str, Any] = {"i": int(i), "name": batch.names[b], "run": run.key, "label": batch.labels[b],
                               "target": int(batch.targets[b]), "top5": [int(c) for c in batch.top5[b]],
                               "top1_ok": batch.top1_ok[b], "top5_ok": batch.top5_ok[b]}
        gt = batch.boxes[b]
        has_box = bool(np.any((gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])))
        if getattr(batch, "dropped", None) and batch.dropped[b]:
            rec["dropped"] = batch.dropped[b]
        if "pointing" in metrics:
            rec["pointing"] = bool(M.pointing_game(maps[b:b + 1], [batch.boxes[b]], settings.pointing_tolerance)[0]) \
                if has_box else None
        if "box_acc" in metrics or "top1_loc" in metrics:
            rec["box_ok"] = M.localization_correct(maps[b], batch.boxes[b], settings.box_threshold, settings.iou) \
                if has_box else None
        if "max_box_acc" in metrics:
            acc = M.max_box_acc(maps[b:b + 1], [batch.boxes[b]], M.MAX_BOX_THRESHOLDS, settings.iou)["accuracy"]
            rec["box_ok_at"] = M.bits_text(acc) if has_box else None
        if "max_box_acc_v2" in metrics:
            best = M.best_ious_all_components(maps[b], batch.boxes[b], M.MAX_BOX_THRESHOLDS)
            rec["box_v2_ok_at"] = [M.bits_text(best >= iou) for iou in M.V2_IOUS] if has_box else None
        if "pxap" in metrics and batch.masks is not None and batch.masks[b].any():
            rec["pxap_hist"] = M.sparse_histogram(M.pxap_histograms(maps[b:b + 1], batch.masks[b][None])[0])
        records.append(rec)
    if "deletion" in metrics or "insertion" in metrics:
        # B images x steps x 2 modes in one jitted call on the device
        di = M.deletion_insertion_batched(softmax_fn(model), np.asarray(batch.x), maps, batch.targets,
                                          steps=settings.deletion_steps, baseline=settings.baseline,
                                          protocol=settings.deletion_protocol)
        for b, rec in enumerate(records):
            rec["deletion_auc"] = float(di["deletion_auc"][b])
            rec["insertion_auc"] = float(di["insertion_auc"][b])
            rec["deletion_curve"] = [float(v) for v in di["curves"]["deletion"][b]]
            rec["insertion_curve"] = [float(v) for v in di["curves"]["insertion"][b]]
    if "confidence" in metrics:
        cc = M.confidence_change(scorer, np.asarray(batch.x), maps, batch.targets,
                                 batch=min(settings.score_batch, len(records)))
        for b, rec in enumerate(records):
            rec["avg_drop"], rec["conf_increase"] = float(cc["drop"][b]), bool(cc["increase"][b])
    if "road" in metrics:
        rd = M.road(scorer, np.asarray(batch.x), maps, batch.targets,
                    batch=min(settings.score_batch, 2 * len(M.ROAD_PERCENTILES) * len(records)),
                    seed=int(batch.indices[0]))
        for b, rec in enumerate(records):
            rec["road_morf"], rec["road_lerf"] = float(rd["morf_mean"][b]), float(rd["lerf_mean"][b])
            rec["road_combined"] = float(rd["combined"][b])
    if "sanity" in metrics:
        r = M.rank_correlations(maps, _maps(random_model, batch, run, options, class_models))
        for b, rec in enumerate(records):
            rec["sanity_r"] = float(r[b])
    if "sanity_layers" in metrics:
        for rec, layers in zip(records, sanity_layer_records(maps, lambda m: _maps(m, batch, run, options), sanity)):
            rec["sanity_layers"] = layers
    seconds = (time.perf_counter() - t0) / len(records)
    for rec in records:
        rec["seconds"] = round(seconds, 4)
    return records, maps



def evaluate(model="efficientnet_lite0", source="photos", methods=ALL_METHODS, layers=None, metrics=DEFAULT_METRICS,
             options: Mapping[str, Mapping] | None = None, out_dir: str = "chipjax_eval", resume: bool = True,
             progress: bool = True, checkpoint_every: int = 16, *, settings: Settings | None = None,
             num_images: int | None = None, seed: int = 0, tune_source=None, fit_data=None,
             skip_bad: bool = False) -> dict:
    """Evaluate ``methods`` × ``layers`` on ``source`` with ``metrics``; write the table and plots to ``out_dir``.

    Args:
      model: a zoo model, or a name loaded with its shipped weights (default EfficientNet-Lite0).
      source: an :class:`EvalSource`, or what :func:`load_source` takes (``"photos"``, ``"composites"``,
        ``"two-object"``, a folder, ``tfds:…``, ``ilsvrc:…``, a list of samples).
      methods, layers: see :func:`parse_runs`.
      metrics: names from :data:`METRICS` (or ``"all"``).
      options: ``{method: {option: value}}`` passed to :func:`chipjax.explain`, e.g.
        ``{"chip": {"num_masks": 1024, "seed": 0}}``.
      out_dir: output folder (created; its parent must exist).
      resume: continue the evaluation already in ``out_dir`` (it must have the same settings); False
        discards it.
      progress: show a progress bar (only on a terminal).
      checkpoint_every: records (image × run) between appends to ``records.jsonl``.
      settings: :class:`Settings`.
      num_images, seed: for a named source (see :func:`load_source`).
      tune_source: a separate split (what ``source`` takes) on which each run's box threshold is tuned
        (its MaxBoxAcc threshold, evaluated in ``out_dir/tune``); the table then adds the box accuracy
        at that threshold on ``source`` (``box_acc_tuned``), as Choe et al. require.
      fit_data: for ``chip-class`` runs, the samples the class-level models are fitted on: an
        :class:`EvalSource`, a sequence of samples, or what :func:`load_source` takes (composites: use
        another data seed, ``load_source("composites", seed=1)``). Must not be the evaluated images.
      skip_bad: skip (and list) samples that cannot be read instead of stopping at the first.

    Every sample's records carry a content hash (:func:`sample_digests`): a rerun recomputes those of
    samples that changed (or moved to another index) and keeps the rest.

    Returns:
      ``{"summary": {run: {metric: value}}, "classification": {...}, "computed": records computed now,
      "out_dir": out_dir, "skipped": {name: reason}, "dropped": {name: reason}}``; ``dropped`` are samples
      whose boxes all fall outside the image or the view: they count in no box metric.
    """
    from ..progress import progress_bar

    settings = (settings or Settings()).check()
    if isinstance(model, str):
        from ..models import load_model

        model = load_model(model)
    src = source if isinstance(source, EvalSource) else load_source(source, num_images=num_images, seed=seed)
    if len(src.samples) == 0:
        raise InputError(f"the data source {src.description} holds no images")
    runs = parse_runs(methods, layers, model)
    metric_names = check_metrics(metrics)
    opts = check_options(options, runs)
    out_dir = make_out_dir(out_dir)
    class_models, fit_description = class_chip_models(model, runs, opts.get(CLASS_CHIP, {}), fit_data, src, out_dir,
                                                      progress=progress)
    if fit_description is not None:
        opts = {**opts, CLASS_CHIP: {**opts.get(CLASS_CHIP, {}), "fit_data": fit_description}}
    tuned = None
    if tune_source is not None:  # tune each run's box threshold on the other split first
        tsrc = tune_source if isinstance(tune_source, EvalSource) else load_source(tune_source, num_images=num_images,
                                                                                   seed=seed + 1)
        if tsrc.description == src.description and len(tsrc.samples) == len(src.samples):
            raise InputError(f"the tuning split is the evaluated one ({src.description}); tune on another split "
                             f"(e.g. composites with another --data-seed)")
        tune = evaluate(model, tsrc, [r.key for r in runs], None, ("max_box_acc",), opts,
                        os.path.join(out_dir, "tune"), resume, progress, checkpoint_every,
                        settings=dataclasses.replace(settings, bootstrap=0, num_examples=0), fit_data=fit_data,
                        skip_bad=skip_bad)
        tuned = ({k: row["max_box_threshold"] for k, row in tune["summary"].items()}, tsrc.description)
        metric_names = check_metrics(sorted(set(metric_names) | {"max_box_acc"}))
    config = run_config(model, src, runs, metric_names, opts, settings)
    store = RecordStore(out_dir, config, resume, checkpoint_every)
    digests = sample_digests(src)
    store.digests = digests

    n = len(src.samples)
    batches = [list(range(s, min(s + settings.batch_size, n))) for s in range(0, n, settings.batch_size)]
    todo = [(b, run) for b in batches for run in runs if not store.done(b, run)]
    total = len(batches) * len(runs)
    log.info("%s: %d of %d units (batch × run) already done in %s", src.description, total - len(todo), total, out_dir)
    needs_scores = any(m in metric_names for m in ("deletion", "insertion", "confidence", "road"))
    scorer = softmax_scorer(model) if needs_scores and todo else None
    random_model = randomized_model(model, settings.sanity_top) if "sanity" in metric_names and todo else None
    sanity = SanityModels(model, settings.sanity_depth) if "sanity_layers" in metric_names and todo else None
    os.makedirs(os.path.join(out_dir, EXAMPLES_DIR), exist_ok=True)
    computed = 0
    units_done = total - len(todo)
    current: _Batch | None = None
    current_indices = None
    with flush_on_exit(store):
        for indices, run in progress_bar(todo, desc=f"eval {src.description}", total=len(todo), enable=progress):
            if current is None or current_indices != indices:
                current_indices = indices
                good, samples, bad = _load_samples(src, indices, skip_bad)
                current = _prepare_batch(model, src, good, samples) if good else None
            records = [{"i": int(i), "run": run.key, "name": f"sample {i}", "skipped": why} for i, why in bad.items()]
            if current is not None:
                unit, maps = _unit_records(model, current, run, metric_names, opts, settings, scorer, random_model,
                                           sanity, class_models)
                for b, i in enumerate(current.indices):
                    if i < settings.num_examples:
                        save_example(example_path(out_dir, i, run), maps[b])
                records += unit
            for rec in records:
                rec["sample"] = digests[rec["i"]]
            store.add(records)
            computed += len(records)
            units_done += 1
            log.info("done %d/%d: images %d-%d %s (%.2f s/image); %d records on disk", units_done, total,
                     indices[0], indices[-1], run.key, records[-1].get("seconds", 0.0), store.on_disk)
    live = [r for r in (store.current(i, run.key) for i in range(n) for run in runs) if r is not None]
    skipped = {f"{r['name']} (#{r['i']})": r["skipped"] for r in live if r.get("skipped")}
    dropped = {f"{r['name']} (#{r['i']})": r["dropped"] for r in live if r.get("dropped")}
    measured = [r for r in live if not r.get("skipped")]
    summary, classification = summarize(measured, runs, metric_names, settings.bootstrap)
    if tuned is not None:
        add_tuned_box_accuracy(summary, measured, *tuned, bootstrap=settings.bootstrap)
    for key, row in summary.items():
        row["dropped"] = sum(1 for r in live if r["run"] == key and r.get("dropped"))
        row["skipped"] = sum(1 for r in live if r["run"] == key and r.get("skipped"))
    store.live = live
    write_outputs(out_dir, model, src, runs, metric_names, settings, opts, store, summary, classification)
    return {"summary": summary, "classification": classification, "computed": computed, "out_dir": out_dir,
            "skipped": skipped, "dropped": dropped}




def make_out_dir(out_dir: str, create: bool = True) -> str:
    out_dir = os.fspath(out_dir)
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise InputError(f"the folder {parent} (parent of the output folder) does not exist; create it first")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"--out {out_dir} is a file, not a folder; choose another --out")
    if not create:
        if not os.access(out_dir if os.path.isdir(out_dir) else parent, os.W_OK):
            raise InputError(f"output folder {out_dir} is not writable; choose another --out")
        return out_dir
    os.makedirs(out_dir, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise InputError(f"output folder {out_dir} is not writable; choose another --out")
    return out_dir

