"""Class-level CHIP fits over image folders (the ``chipjax fit`` command), resumable.

Progress is checkpointed (orbax, atomic) every ``checkpoint_every`` batches, after the last
batch, and when SIGINT/SIGTERM arrives; the same command run again continues from the last
checkpoint and gives the same model as an uninterrupted run (to float32 rounding):
images are read in a fixed order and every image sees the same mask stream.

The default progress folder (:func:`default_checkpoint_dir`) is named by what is fitted (model,
weights, layer, settings, data), not by where the result goes, so a rerun with another
``--out`` continues the same work. A checkpoint records a content hash of the images it has
read (bytes, labels, boxes); when the data changed since, the fit starts over instead of
mixing old and new images. The output is checked before the first image (:func:`check_fit_out`);
a save that fails at the end leaves the finished progress in place for a rerun.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from typing import Iterable, Iterator

import jax.numpy as jnp
import numpy as np

from . import jobs
from .errors import ChipjaxError, InputError
from .options import FitOptions

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


def check_fit_options(from_text: bool = False, **values) -> dict:
    """The fit's options (fields of :class:`chipjax.options.FitOptions`) checked and typed, before any work
    (``from_text``: command-line text)."""
    checked = FitOptions(**values).check(from_text)
    return {k: getattr(checked, k) for k in values}


def check_fit_out(out: str) -> str:
    """Refuse, before the first image, an output the fitted model could not be written to.

    ``out`` may be missing (its parent folder must exist and be writable), an empty folder, or an
    earlier CHIP model (replaced atomically); a file or a folder holding anything else is refused.
    """
    from .io.orbax_store import HEADER_FILE

    out = os.path.abspath(os.fspath(out))
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise InputError(f"output folder {parent} does not exist; create it or choose another --out")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output folder {parent} is not writable; choose another --out")
    if os.path.lexists(out):
        if not os.path.isdir(out) or os.path.islink(out):
            raise InputError(f"--out {out} is an existing file; the CHIP model is a folder: choose another --out")
        if os.listdir(out) and not os.path.isfile(os.path.join(out, HEADER_FILE)):
            raise InputError(f"--out {out} is a folder that holds other files; choose a new or empty folder")
    return out


def cache_dir() -> str:
    """Where default progress folders live: ``$CHIPJAX_CACHE``, else ``$XDG_CACHE_HOME/chipjax``, else
    ``~/.cache/chipjax``."""
    if os.environ.get("CHIPJAX_CACHE"):
        return os.environ["CHIPJAX_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "chipjax")


def default_checkpoint_dir(fingerprint: dict) -> str:
    """The progress folder of a fit, named by a hash of what is fitted (not of where it is saved)."""
    return os.path.join(cache_dir(), "fit", jobs.fingerprint(fingerprint))


def _prefix_digest(digests, order, n: int) -> str:
    """Content hash of the first ``n`` samples in the loader's ``order`` (source indices), from their
    :meth:`chipjax.data.Source.digest` values (``None``: a source that cannot tell; its description counts)."""
    h = hashlib.sha256()
    for i in range(min(int(n), len(order))):
        h.update(f"{digests[int(order[i])]}\n".encode())
    return h.hexdigest()[:16]


def _sample_digests(source) -> list:
    """:meth:`chipjax.data.Source.digest` of every sample (``None`` where the source has no digests)."""
    digest = getattr(source, "digest", None)
    return [digest(i) if callable(digest) else None for i in range(len(source))]


def fit_folder(model, root: str, **options):
    """Fit class-level CHIP over the labelled images under ``root`` (see :func:`chipjax.data.folder_source`);
    the options are those of :func:`fit_source`."""
    from .data import folder_source

    return fit_source(model, folder_source(root), data_id=os.path.abspath(root), **options)


def fit_source(model, source, *, data_id: str | None = None, layer: str | None = None,
               batch_size: int = FitOptions.batch_size, progress: bool = True, checkpoint_dir: str | None = None,
               checkpoint_every: int = FitOptions.checkpoint_every, num_masks: int = FitOptions.num_masks,
               keep_prob: float = FitOptions.keep_prob, lam_ratio: float = FitOptions.lam_ratio,
               score: str = FitOptions.score, nonneg: bool = FitOptions.nonneg, seed: int = FitOptions.seed,
               chunk_size: int = FitOptions.chunk_size, num_workers: int = FitOptions.num_workers,
               classes: str = FitOptions.classes, compute_dtype=None, order_seed: int | None = None, report=None,
               out: str | None = None):
    """Fit class-level CHIP over the labelled samples of ``source``, fed by :func:`chipjax.pipeline.batches`.

    Args:
      model: a zoo model; source: a sized, indexable sequence of labelled :class:`~chipjax.data.Sample`.
      data_id: what identifies the data in a checkpoint (default: the source's description).
      layer, num_masks, keep_prob, lam_ratio, score, nonneg, seed, chunk_size, classes, compute_dtype: as
        :meth:`chipjax.chip.CHIP.fit`.
      batch_size: images per step; num_workers: decode + resize threads; order_seed: None = source order.
      checkpoint_dir, checkpoint_every: progress is saved in ``checkpoint_dir`` (a folder, or ``"auto"`` for
        :func:`default_checkpoint_dir`) every ``checkpoint_every`` batches, after the last batch and on
        SIGINT/SIGTERM (then :class:`Interrupted` is raised); an existing checkpoint with the same settings
        is resumed (after SIGKILL at most one interval is redone), or started over when the images it read
        have changed since (content hashes, :meth:`chipjax.data.Source.digest`). Single-process only: with
        several processes (each reads its share; the statistics are merged across processes at the end) no
        checkpoint is written.
      out: where to save the fitted model: checked before the first image (:func:`check_fit_out`); the
        checkpoint is removed only once the model is saved there.
      report: a :class:`chipjax.pipeline.LoadReport`, filled with the images loaded and skipped (unreadable
        images are skipped and listed, never fatal); kept across a resume.

    Returns:
      The fitted :class:`~chipjax.chip.CHIP` model (``.fit_report`` holds the load report and the rates).
    """
    import jax

    from . import io as cjio
    from . import pipeline
    from .chip import ClassStatsAccumulator
    from .distributed import merge_class_statistics
    from .progress import rate_bar

    opts = check_fit_options(num_masks=num_masks, keep_prob=keep_prob, lam_ratio=lam_ratio, batch_size=batch_size,
                             seed=seed, checkpoint_every=checkpoint_every, score=score, chunk_size=chunk_size,
                             nonneg=nonneg, num_workers=num_workers, classes=classes)
    num_masks, keep_prob, lam_ratio, batch_size, seed, checkpoint_every = (
        opts[k] for k in ("num_masks", "keep_prob", "lam_ratio", "batch_size", "seed", "checkpoint_every"))
    if out is not None:
        out = check_fit_out(out)
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
    if checkpoint_dir == "auto":
        checkpoint_dir = None if pc > 1 else default_checkpoint_dir(fingerprint)
        if checkpoint_dir:
            log.info("progress folder: %s", checkpoint_dir)
    acc = ClassStatsAccumulator(tap, num_masks=num_masks, keep_prob=keep_prob, score=score, seed=seed,
                                chunk_size=chunk_size, classes=classes, compute_dtype=compute_dtype)
    report = pipeline.LoadReport() if report is None else report
    position = 0
    digests = _sample_digests(source) if checkpoint_dir else None
    order = pipeline.shard_order(len(source), seed=order_seed) if checkpoint_dir else None  # single process
    if checkpoint_dir and cjio.is_variables_dir(checkpoint_dir):
        state, meta = cjio.load_variables(checkpoint_dir)
        if meta.get("fit") != fingerprint:
            raise InputError(f"{checkpoint_dir} holds a partial fit with other settings; delete it or rerun with "
                             f"the same options")
        done = int(meta.get("position", np.asarray(state.get("num_images", 0)) if state else 0))
        if done > len(source) or meta.get("data_digest") != _prefix_digest(digests, order, done):
            log.warning("chipjax: the images of %s changed since the partial fit in %s; starting over",
                        data_id or getattr(source, "description", "the data"), checkpoint_dir)
        else:
            acc.restore(state)
            position = done
            restored = pipeline.LoadReport.from_state(meta.get("loader"))
            report.loaded, report.skipped = restored.loaded, restored.skipped
            log.info("resuming at image %d of %d", position, len(source))
    saved_at = position

    def save(at: int):
        nonlocal saved_at
        if checkpoint_dir:
            cjio.save_variables(acc.state(), checkpoint_dir, {"kind": "chip-fit-progress", "fit": fingerprint,
                                                              "position": at, "loader": report.state(),
                                                              "data_digest": _prefix_digest(digests, order, at)})
            saved_at = at
            log.info("checkpoint: %d images", at)

    stream = pipeline.batches(source, model, batch_size=batch_size, num_workers=num_workers, seed=order_seed,
                              process_index=pi, process_count=pc, start=position, report=report,
                              require_labels=True)
    share = len(range(pi, len(source), pc))
    with jobs.StopSignals() as stop, rate_bar(f"CHIP fit @ {tap.layer}", num_masks, total=share - position,
                                       enable=progress) as bar:
        for i, batch in enumerate(stream, start=1):
            acc.add(batch.x, batch.labels)
            bar.update(len(batch.labels))
            position = batch.position
            log.info("done %d images", position)
            if stop.signal is not None:
                save(position)
                raise Interrupted(f"stopped by signal {stop.signal} after {position} images; progress saved "
                                  f"to {checkpoint_dir or '(nowhere: no checkpoint folder)'}; rerun to continue")
            if i % checkpoint_every == 0 and position < share:
                save(position)
        acc.block_until_ready()
    if position != saved_at:
        save(position)  # the finished statistics: a failed save of the model below loses nothing
    log.info("CHIP fit @ %s: %s", tap.layer, bar.summary())
    if report.skipped:
        log.warning("%s", report.summary())
    if pc > 1:
        merge_class_statistics(acc)
    cm = acc.to_model(model.name, config)
    cm.fit_report = dict(loader=report, images_per_s=bar.images_per_s, evals_per_s=bar.evals_per_s,
                         seconds=bar.seconds)
    if out is not None:
        cm.save(out)
        remove_checkpoint(checkpoint_dir)
    return cm


def fit_data_source(spec: str, *, labels_file: str | None = None, boxes: str | None = None,
                    split: str = "train", num_images: int | None = None, seed: int = 0):
    """The samples ``chipjax fit`` reads: ``FOLDER`` (class sub-folders or boxes.json), ``FOLDER`` with
    ``labels_file``, ``ilsvrc:IMAGES_DIR`` (with ``boxes``), ``tfds:NAME_OR_DIR`` (``split``), or a bundled set
    (``composites``, ``two-object``, ``photos``; ``seed`` = the data seed). Returns ``(source, data_id)``."""
    from .data import labels_file_source
    from .data import BUNDLED_SETS, load_source

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
    digest = getattr(source, "digest", None)
    return Source(n, lambda i: source[pick[i]], f"{getattr(source, 'description', 'samples')} ({n} of {size}, spread)",
                  name_of=(lambda i: name_of(pick[i])) if callable(name_of) else None,
                  digest=(lambda i: digest(pick[i])) if callable(digest) else None)


def remove_checkpoint(checkpoint_dir: str | None) -> None:
    """Delete a finished fit's progress checkpoint."""
    if checkpoint_dir and os.path.isdir(checkpoint_dir):
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
