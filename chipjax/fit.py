"""Class-level CHIP fits over image folders (the ``chipjax fit`` command), resumable.

Progress is checkpointed (orbax, atomic) every ``checkpoint_every`` batches, after the last
batch, and when SIGINT/SIGTERM arrives; the same command run again continues from the last
checkpoint and gives the same model as an uninterrupted run (to float32 rounding):
images are read in a fixed order and every image sees the same mask stream.

The default progress folder (:func:`default_checkpoint_dir`) is named by what is fitted (model,
weights, layer, settings, data folder), not by where the result goes, so a rerun with another
``--out`` continues the same work. A checkpoint records a content hash of the images it has
folded in (bytes, labels, boxes); when the data changed since, the fit starts over instead of
mixing old and new images. The output is checked before the first image (:func:`check_fit_out`);
a save that fails at the end leaves the finished progress in place for a rerun.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
from itertools import islice
from typing import Iterable, Iterator

import jax.numpy as jnp
import numpy as np

from .errors import ChipjaxError, InputError

log = logging.getLogger("chipjax")


class Interrupted(ChipjaxError):
    """A fit stopped by SIGINT/SIGTERM after saving its progress."""


def preprocessed_batches(model, samples: Iterable, batch_size: int) -> Iterator[tuple[jnp.ndarray, np.ndarray]]:
    """Group ``Sample``s into ``(x (B, S, S, 3), labels (B,))`` batches preprocessed for ``model``."""
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


def check_fit_options(*, num_masks, keep_prob, lam_ratio, batch_size, seed, checkpoint_every, score="prob",
                      chunk_size=256) -> dict:
    """The fit's options checked and typed (:func:`chipjax.options.check_option`), before any work."""
    from .options import check_options

    return check_options(dict(num_masks=num_masks, keep_prob=keep_prob, lam_ratio=lam_ratio, batch_size=batch_size,
                              seed=seed, checkpoint_every=checkpoint_every, score=score, chunk_size=chunk_size))


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
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), "fit", key)


def _prefix_digest(digests, n: int) -> str:
    """Content hash of the first ``n`` samples, from their :meth:`chipjax.data.Source.digest` values."""
    h = hashlib.sha256()
    for d in digests[:n]:
        h.update(f"{d}\n".encode())
    return h.hexdigest()[:16]


def fit_folder(model, root: str, *, layer: str | None = None, batch_size: int = 8, progress: bool = True,
               checkpoint_dir: str | None = None, checkpoint_every: int = 10, num_masks: int = 2048,
               keep_prob: float = 0.5, lam_ratio: float = 0.05, score: str = "prob", nonneg: bool = False,
               seed: int = 0, chunk_size: int = 256, out: str | None = None):
    """Fit class-level CHIP over the labelled images under ``root`` (see :func:`chipjax.data.folder_source`).

    With ``checkpoint_dir`` (a folder, or ``"auto"`` for :func:`default_checkpoint_dir`), progress is
    saved there every ``checkpoint_every`` batches, after the last batch and on SIGINT/SIGTERM (then
    :class:`Interrupted` is raised), and an existing checkpoint with the same settings is resumed
    (started over when the images it folded in have changed since). With ``out``, the output is
    checked before the first image (:func:`check_fit_out`), the model is saved there, and only then
    is the checkpoint removed.
    """
    from . import io as cjio
    from .chip import ClassStatsAccumulator
    from .data import folder_source
    from .progress import progress_bar

    opts = check_fit_options(num_masks=num_masks, keep_prob=keep_prob, lam_ratio=lam_ratio, batch_size=batch_size,
                             seed=seed, checkpoint_every=checkpoint_every, score=score, chunk_size=chunk_size)
    num_masks, keep_prob, lam_ratio, batch_size, seed, checkpoint_every = (
        opts[k] for k in ("num_masks", "keep_prob", "lam_ratio", "batch_size", "seed", "checkpoint_every"))
    if out is not None:
        out = check_fit_out(out)
    source = folder_source(root)
    digests = [source.digest(i) for i in range(len(source))]
    tap = model.tap(layer)
    config = dict(num_masks=num_masks, keep_prob=keep_prob, lam_ratio=lam_ratio, score=score, nonneg=nonneg, seed=seed)
    fingerprint = dict(config, arch=model.name, weights=str(model.weights), layer=tap.layer, data=os.path.abspath(root),
                       batch_size=batch_size)
    if checkpoint_dir == "auto":
        checkpoint_dir = default_checkpoint_dir(fingerprint)
        log.info("progress folder: %s", checkpoint_dir)
    acc = ClassStatsAccumulator(tap, num_masks=num_masks, keep_prob=keep_prob, score=score, seed=seed,
                                chunk_size=chunk_size)
    if checkpoint_dir and cjio.is_variables_dir(checkpoint_dir):
        state, meta = cjio.load_variables(checkpoint_dir)
        if meta.get("fit") != fingerprint:
            raise InputError(f"{checkpoint_dir} holds a partial fit with other settings; delete it or rerun with "
                             f"the same options")
        done = int(np.asarray(state.get("num_images", 0))) if state else 0
        if done > len(source) or meta.get("data_digest") != _prefix_digest(digests, done):
            log.warning("chipjax: the images under %s changed since the partial fit in %s; starting over",
                        root, checkpoint_dir)
        else:
            acc.restore(state)
            log.info("resuming at image %d of %d", acc.num_images, len(source))

    def save():
        if checkpoint_dir:
            cjio.save_variables(acc.state(), checkpoint_dir, {"kind": "chip-fit-progress", "fit": fingerprint,
                                                              "data_digest": _prefix_digest(digests, acc.num_images)})
            log.info("checkpoint: %d images", acc.num_images)

    remaining = islice((source[i] for i in range(len(source))), acc.num_images, None)
    batches = preprocessed_batches(model, remaining, batch_size)
    total = -(-(len(source) - acc.num_images) // batch_size)
    with _StopFlag() as stop:
        for i, (x, labels) in enumerate(progress_bar(batches, desc=f"CHIP fit @ {tap.layer}", total=total,
                                                     enable=progress), start=1):
            acc.add(x, labels)
            log.info("done %d images", acc.num_images)
            if stop.signal is not None:
                save()
                raise Interrupted(f"stopped by signal {stop.signal} after {acc.num_images} images; progress saved "
                                  f"to {checkpoint_dir or '(nowhere: no checkpoint folder)'}; rerun to continue")
            if i % checkpoint_every == 0 and acc.num_images < len(source):
                save()
    if acc.num_images and acc.num_images == len(source):
        save()  # the finished statistics: a failed save of the model below loses nothing
    cm = acc.to_model(model.name, config)
    if out is not None:
        cm.save(out)
        remove_checkpoint(checkpoint_dir)
    return cm


def remove_checkpoint(checkpoint_dir: str | None) -> None:
    """Delete a finished fit's progress checkpoint."""
    if checkpoint_dir and os.path.isdir(checkpoint_dir):
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
