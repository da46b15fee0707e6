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


def fit_folder(model, root: str, *, layer: str | None = None, batch_size: int = 8, progress: bool = True,
               checkpoint_dir: str | None = None, checkpoint_every: int = 10, num_masks: int = 2048,
               keep_prob: float = 0.5, lam_ratio: float = 0.05, score: str = "prob", nonneg: bool = False,
               seed: int = 0, chunk_size: int = 256):
    """Fit class-level CHIP over the labelled images under ``root`` (see :func:`chipjax.data.folder_source`).

    With ``checkpoint_dir``, progress is saved there every ``checkpoint_every`` batches and
    on SIGINT/SIGTERM (then :class:`Interrupted` is raised), and an existing checkpoint
    with the same settings is resumed. The checkpoint is removed when the fit completes.
    """
    from . import io as cjio
    from .chip import ClassStatsAccumulator, check_lam_ratio
    from .data import folder_source
    from .progress import progress_bar

    check_lam_ratio(lam_ratio)
    if checkpoint_every < 1:
        raise InputError(f"checkpoint interval must be ≥ 1 batch, got {checkpoint_every}")
    source = folder_source(root)
    tap = model.tap(layer)
    config = dict(num_masks=num_masks, keep_prob=keep_prob, lam_ratio=lam_ratio, score=score, nonneg=nonneg, seed=seed)
    fingerprint = dict(config, arch=model.name, weights=str(model.weights), layer=tap.layer, data=os.path.abspath(root),
                       num_samples=len(source), batch_size=batch_size)
    acc = ClassStatsAccumulator(tap, num_masks=num_masks, keep_prob=keep_prob, score=score, seed=seed,
                                chunk_size=chunk_size)
    if checkpoint_dir and cjio.is_variables_dir(checkpoint_dir):
        state, meta = cjio.load_variables(checkpoint_dir)
        if meta.get("fit") != fingerprint:
            raise InputError(f"{checkpoint_dir} holds a partial fit with other settings; delete it or rerun with "
                             f"the same options")
        acc.restore(state)
        log.info("resuming at image %d of %d", acc.num_images, len(source))

    def save():
        if checkpoint_dir:
            cjio.save_variables(acc.state(), checkpoint_dir, {"kind": "chip-fit-progress", "fit": fingerprint})
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
            if i % checkpoint_every == 0:
                save()
    return acc.to_model(model.name, config)


def remove_checkpoint(checkpoint_dir: str | None) -> None:
    """Delete a finished fit's progress checkpoint."""
    if checkpoint_dir and os.path.isdir(checkpoint_dir):
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
