"""ImageNet-1k class names, shipped in the package (torchvision's list, index order)."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, index order."""
    text = resources.files("chipjax").joinpath("assets/imagenet_labels.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line]
