"""Class-level CHIP fits over image folders (the ``chipjax fit`` command), resumable.

Progress is checkpointed (orbax, atomic) every ``checkpoint_every`` batches and when
SIGINT/SIGTERM arrives; the same command run again continues from the last
checkpoint and gives the same model as an uninterrupted run (to float32 rounding):
images are read in a fixed order and every image sees the same mask stream.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
from typing import Iterable, Iterator

import jax.numpy as jnp
import numpy as np

from .errors import ChipjaxError, InputError

log = logging.getLogger("chipjax")


class Interrupted(ChipjaxError):
    """A fit stopped by SIGINT/SIGTERM after saving its progress."""


def preprocessed_batches(model, samples: Iterable, batch_size: int) -> Iterator[tuple[jnp.ndarray, np.ndarray]]:
    """Group ``Sample``s into ``(x (B, S, S, 3), labels (B,))`` batches preprocessed for ``model``, one image at a
    time in the calling thread (for any iterable; sized sources read faster with :func:`chipjax.pipeline.batches`)."""
    if batch_size < 1:
        raise InputError(f"batch size must be ≥ 1, got {batch_size}")
    xs, ys = [], []
    for sample in samples:
        if sample.label is None:
            raise InputError(f"image {sample.name} has no class label; class-level CHIP needs one per image")
        xs.append(model.preprocess(sample.image)[0])
        ys.append(int(sample.label))
        if len(xs) == batch_size:
            yield jnp.stack(xs), np.asarray(ys)
            xs, ys = [], []
    if xs:
        yield jnp.stack(xs), np.asarray(ys)


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between batches (restores the old handlers on exit)."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._set)
            except ValueError:  # not the main thread: no handlers
                pass
        return self

    def _set(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def fit_folder(model, root: str, **options):
    """Fit class-level CHIP over the labelled images under ``root`` (see :func:`chipjax.data.folder_source`);
    the options are those of :func:`fit_source`."""
    from .data import folder_source

    return fit_source(model, folder_source(root), data_id=os.path.abspath(root), **options)


def fit_source(model, source, *, data_id: str | None = None, layer: str | None = None, batch_size: int = 8,
               progress: bool = True, checkpoint_dir: str | None = None, checkpoint_every: int = 10,
               num_masks: int = 2048, keep_prob: float = 0.5, lam_ratio: float = 0.05, score: str = "prob",
               nonneg: bool = False, seed: int = 0, chunk_size: int = 256, num_workers: int = 2,
               classes: str = "seen", compute_dtype=None, order_seed: int | None = None, report=None):
    """Fit class-level CHIP over the labelled samples of ``source``, fed by :func:`chipjax.pipeline.batches`.

    Args:
      model: a zoo model; source: a sized, indexable sequence of labelled :class:`~chipjax.data.Sample`.
      data_id: what identifies the data in a checkpoint (default: the source's description).
      layer, num_masks, keep_prob, lam_ratio, score, nonneg, seed, chunk_size, classes, compute_dtype: as
        :meth:`chipjax.chip.CHIP.fit`.
      batch_size: images per step; num_workers: decode + resize threads; order_seed: None = source order.
      checkpoint_dir, checkpoint_every: progress is saved there every ``checkpoint_every`` batches and on
        SIGINT/SIGTERM (then :class:`Interrupted` is raised); an existing checkpoint with the same settings
        is resumed (after SIGKILL at most one interval is redone). Single-process only: with several processes
        (each reads its share; the statistics are merged across processes at the end) no checkpoint is written.
      report: a :class:`chipjax.pipeline.LoadReport`, filled with the images loaded and skipped (unreadable
        images are skipped and listed, never fatal); kept across a resume.

    Returns:
      The fitted :class:`~chipjax.chip.CHIP` model (``.fit_report`` holds the load report and the rates).
    """
    import jax

    from . import io as cjio
    from . import pipeline
    from .chip import ClassStatsAccumulator, check_lam_ratio
    from .distributed import merge_class_statistics
    from .progress import rate_bar

    check_lam_ratio(lam_ratio)
    if checkpoint_every < 1:
        raise InputError(f"checkpoint interval must be ≥ 1 batch, got {checkpoint_every}")
    tap = model.tap(layer)
    pi, pc = jax.process_index(), jax.process_count()
    if checkpoint_dir and pc > 1:
        # orbax synchronises its saves across every process of a jax.distributed job, and the processes' shares
        # end after different numbers of batches: per-process progress checkpoints would deadlock
        log.warning("progress checkpoints are single-process only; with %d processes this fit is not resumable", pc)
        checkpoint_dir = None
    config = dict(num_masks=num_masks, keep_prob=keep_prob, lam_ratio=lam_ratio, score=score, nonneg=nonneg, seed=seed)
    fingerprint = dict(config, arch=model.name, weights=str(model.weights), layer=tap.layer,
                       data=data_id or getattr(source, "description", "?"), num_samples=len(source),
                       batch_size=batch_size, classes=classes, order_seed=order_seed, process=[pi, pc],
                       compute_dtype=None if compute_dtype is None else str(compute_dtype))
    acc = ClassStatsAccumulator(tap, num_masks=num_masks, keep_prob=keep_prob, score=score, seed=seed,
                                chunk_size=chunk_size, classes=classes, compute_dtype=compute_dtype)
    report = pipeline.LoadReport() if report is None else report
    position = 0
    if checkpoint_dir and cjio.is_variables_dir(checkpoint_dir):
        state, meta = cjio.load_variables(checkpoint_dir)
        if meta.get("fit") != fingerprint:
            raise InputError(f"{checkpoint_dir} holds a partial fit with other settings; delete it or rerun with "
                             f"the same options")
        acc.restore(state)
        position = int(meta.get("position", acc.num_images))
        restored = pipeline.LoadReport.from_state(meta.get("loader"))
        report.loaded, report.skipped = restored.loaded, restored.skipped
        log.info("resuming at image %d of %d", position, len(source))

    def save(at: int):
        if checkpoint_dir:
            cjio.save_variables(acc.state(), checkpoint_dir, {"kind": "chip-fit-progress", "fit": fingerprint,
                                                              "position": at, "loader": report.state()})
            log.info("checkpoint: %d images", at)

    stream = pipeline.batches(source, model, batch_size=batch_size, num_workers=num_workers, seed=order_seed,
                              process_index=pi, process_count=pc, start=position, report=report,
                              require_labels=True)
    share = len(range(pi, len(source), pc))
    with _StopFlag() as stop, rate_bar(f"CHIP fit @ {tap.layer}", num_masks, total=share - position,
                                       enable=progress) as bar:
        for i, batch in enumerate(stream, start=1):
            acc.add(batch.x, batch.labels)
            bar.update(len(batch.labels))
            log.info("done %d images", batch.position)
            if stop.signal is not None:
                save(batch.position)
                raise Interrupted(f"stopped by signal {stop.signal} after {batch.position} images; progress saved "
                                  f"to {checkpoint_dir or '(nowhere: no checkpoint folder)'}; rerun to continue")
            if i % checkpoint_every == 0:
                save(batch.position)
        acc.block_until_ready()
    log.info("CHIP fit @ %s: %s", tap.layer, bar.summary())
    if report.skipped:
        log.warning("%s", report.summary())
    if pc > 1:
        merge_class_statistics(acc)
    cm = acc.to_model(model.name, config)
    cm.fit_report = dict(loader=report, images_per_s=bar.images_per_s, evals_per_s=bar.evals_per_s,
                         seconds=bar.seconds)
    return cm


def fit_data_source(spec: str, *, labels_file: str | None = None, boxes: str | None = None,
                    split: str = "train", num_images: int | None = None, seed: int = 0):
    """The samples ``chipjax fit`` reads: ``FOLDER`` (class sub-folders or boxes.json), ``FOLDER`` with
    ``labels_file``, ``ilsvrc:IMAGES_DIR`` (with ``boxes``), ``tfds:NAME_OR_DIR`` (``split``), or a bundled set
    (``composites``, ``two-object``, ``photos``; ``seed`` = the data seed). Returns ``(source, data_id)``."""
    from .data import labels_file_source
    from .evaluate import BUNDLED_SETS, load_source

    if labels_file:
        source = labels_file_source(spec, labels_file)
        data_id = f"{os.path.abspath(spec)} + {os.path.abspath(labels_file)}"
    elif spec in BUNDLED_SETS:  # made to size, from the seed
        src = load_source(spec, num_images=num_images, seed=seed)
        return src.samples, src.description
    elif not spec.startswith(("tfds:", "ilsvrc:")) and not os.path.isdir(spec):
        raise InputError(f"image folder not found: {spec}; give a FOLDER, ilsvrc:IMAGES_DIR, tfds:NAME_OR_DIR or a "
                         f"bundled set ({', '.join(BUNDLED_SETS)})")
    else:
        src = load_source(spec, boxes=boxes, split=split)
        source = src.samples
        data_id = os.path.abspath(spec) if os.path.isdir(spec) else src.description
    if num_images is not None:
        source = spread(source, num_images)
        data_id = f"{data_id} ({len(source)} spread)"
    return source, data_id


def spread(source, n: int):
    """``n`` samples of ``source`` evenly spaced over it (``source[floor(i · len / n)]``): a folder sorted by
    class keeps every class, where its first ``n`` would keep the first classes only."""
    from .data import Source

    if int(n) < 1:
        raise InputError(f"the number of images must be at least 1, got {n}")
    size = len(source)
    n = min(int(n), size)
    pick = [i * size // n for i in range(n)]
    name_of = getattr(source, "name_of", None)
    return Source(n, lambda i: source[pick[i]], f"{getattr(source, 'description', 'samples')} ({n} of {size}, spread)",
                  name_of=(lambda i: name_of(pick[i])) if callable(name_of) else None)


def remove_checkpoint(checkpoint_dir: str | None) -> None:
    """Delete a finished fit's progress checkpoint."""
    if checkpoint_dir and os.path.isdir(checkpoint_dir):
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
