"""Class-level CHIP fits over image folders (the ``chipjax fit`` command)."""
from __future__ import annotations

from typing import Iterable, Iterator

import jax.numpy as jnp
import numpy as np

from .errors import InputError


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


def fit_folder(model, root: str, *, layer: str | None = None, batch_size: int = 8, progress: bool = True, **options):
    """Fit class-level CHIP over the labelled images under ``root`` (see :func:`chipjax.data.folder_source`)."""
    from .chip import CHIP
    from .data import folder_source

    source = folder_source(root)
    return CHIP.fit(model, layer, preprocessed_batches(model, source, batch_size), progress=progress, **options)
