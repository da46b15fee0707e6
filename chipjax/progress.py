"""Progress bars that stay silent when output is not a terminal (or when asked)."""
from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def progress_bar(items: Iterable[T], desc: str = "", total: int | None = None, enable: bool = True) -> Iterable[T]:
    """Wrap ``items`` in a tqdm bar on stderr when ``enable`` and stderr is a terminal."""
    if not enable or not sys.stderr.isatty():
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False)
