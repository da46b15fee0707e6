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


class RateBar:
    """Counts images as they pass; shows images/s and perturbed evaluations/s (a tqdm bar on a terminal).

    Attributes after use: ``images``, ``seconds``, ``images_per_s``, ``evals_per_s``.
    """

    def __init__(self, desc: str, evals_per_image: int, total: int | None = None, enable: bool = True):
        import time

        self._time = time.perf_counter
        self.evals_per_image = int(evals_per_image)
        self.images = 0
        self._t0 = self._time()
        self.seconds = 0.0
        self._bar = None
        if enable and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(desc=desc, total=total, unit="img", file=sys.stderr, leave=False)

    def update(self, n: int) -> None:
        self.images += int(n)
        self.seconds = self._time() - self._t0
        if self._bar is not None:
            self._bar.update(int(n))
            self._bar.set_postfix_str(f"{self.evals_per_s:,.0f} perturbed evals/s", refresh=False)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def evals_per_s(self) -> float:
        return self.images_per_s * self.evals_per_image

    def summary(self) -> str:
        return (f"{self.images} images in {self.seconds:.1f} s: {self.images_per_s:.2f} images/s, "
                f"{self.evals_per_s:,.0f} perturbed evaluations/s")

    def close(self) -> None:
        self.seconds = self._time() - self._t0
        if self._bar is not None:
            self._bar.close()


class rate_bar:  # noqa: N801 - used as a context manager like open()
    """``with rate_bar(desc, evals_per_image) as bar: ... bar.update(batch)``: a :class:`RateBar` closed on exit."""

    def __init__(self, desc: str, evals_per_image: int, total: int | None = None, enable: bool = True):
        self.bar = RateBar(desc, evals_per_image, total, enable)

    def __enter__(self) -> RateBar:
        return self.bar

    def __exit__(self, *exc) -> None:
        self.bar.close()
