"""The :class:`Sample` record every data source yields (:mod:`chipjax.data`, :mod:`chipjax.evalsets`): a module of
its own so that the bundled sets and the data-source registry of :mod:`chipjax.data` need not import each other."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Sample"]


class Sample(NamedTuple):
    """One image with what is known about it.

    Attributes:
      image: uint8 ``(H, W, 3)`` RGB.
      label: ImageNet class index (or the data set's label), ``None`` when unknown.
      boxes: float32 ``(G, 4)`` object boxes ``(x0, y0, x1, y1)`` in this image's pixels, ``x1``/``y1``
        exclusive; ``(0, 4)`` when none are known.
      name: where it came from, e.g. a path relative to the source's root or an ILSVRC image id.
    """

    image: np.ndarray
    label: int | None
    boxes: np.ndarray
    name: str
