"""Input pipeline for data-set runs (class-level CHIP fits, evaluations): grain, with decode + resize workers.

A :class:`~chipjax.data.Source` (image folders, ILSVRC, tensorflow-datasets, the bundled sets) becomes a
stream of preprocessed batches::

    report = LoadReport()
    for batch in cj.pipeline.batches(source, model, batch_size=32, num_workers=2, report=report):
        ...  # batch.x (B, S, S, 3) float32 on device, batch.labels (B,), batch.names, batch.position
    print(report.summary())

* **Loader.** ``grain.MapDataset`` over the sample indices, ``.map(decode + model.view + normalise)``,
  read by ``grain``'s thread pool (``ReadOptions(num_threads=num_workers)``): PIL's decoders and
  resizers release the GIL, so threads decode in parallel without pickling the source or
  forking a process that holds JAX. ``num_workers=0`` reads in the calling thread (no grain).
  Measured and chosen in ``docs/DECISIONS.md``.
* **Order.** The source order, or a permutation fixed by ``seed`` (``grain``'s index shuffle): the
  same arguments give the same batches on every run and every machine.
* **Sharding.** Process ``p`` of ``P`` (default ``jax.process_index()`` / ``jax.process_count()``)
  reads the positions ``p, p + P, p + 2P, …`` of that order: the shares are disjoint and cover it.
* **Bounded memory.** At most ``buffer`` decoded images wait in grain's buffer and ``prefetch``
  batches on the device (``jax.device_put`` is asynchronous: the next batch is copied while the
  current one is computed).
* **Bad images.** An image that cannot be read (corrupt, truncated, missing) is skipped, counted in
  ``report`` with its path and the reason, and logged; it never stops the run and is never dropped
  silently (:meth:`LoadReport.summary`).
* **Resume.** ``start`` skips the first ``start`` positions of this process's share; every batch
  carries ``position``, the number of positions consumed once it is used (skipped images included),
  which is what a checkpoint stores.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np

from .errors import ChipjaxError, InputError

log = logging.getLogger("chipjax")

__all__ = ["Batch", "SkippedImage", "LoadReport", "shard_order", "batches", "load_loop_batches"]

#: What a failed read may raise: chipjax's own image errors, PIL/OS errors, and decoder value errors.
_READ_ERRORS = (ChipjaxError, OSError, ValueError, SyntaxError, EOFError)


class Batch(NamedTuple):
    """One batch of preprocessed images.

    Attributes:
      x: ``(B, S, S, 3)`` float32, normalised as the model expects (on the default device).
      labels: ``(B,)`` int64 class labels (``-1`` where a sample has none).
      names: ``B`` sample names (paths relative to the source root, ILSVRC ids, …).
      indices: ``(B,)`` indices of the samples in the source.
      position: positions of this process's share consumed once this batch is used (skipped included).
      skipped: the :class:`SkippedImage` s met since the previous batch (already in the run's report).
    """

    x: Any
    labels: np.ndarray
    names: list
    indices: np.ndarray
    position: int
    skipped: tuple = ()


class SkippedImage(NamedTuple):
    """An image the loader could not read: its index in the source, its name/path and why."""

    index: int
    name: str
    error: str


@dataclasses.dataclass
class LoadReport:
    """What the loader did: images delivered and images skipped (with their paths), for the end-of-run report."""

    loaded: int = 0
    skipped: list = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """One line, or one line plus a line per skipped image."""
        head = f"loaded {self.loaded} images, skipped {len(self.skipped)} unreadable"
        return "\n".join([head] + [f"  skipped {s.name}: {s.error}" for s in self.skipped])

    def state(self) -> dict:
        """JSON-able form (for checkpoint metadata)."""
        return {"loaded": self.loaded, "skipped": [list(s) for s in self.skipped]}

    @classmethod
    def from_state(cls, state: dict | None) -> "LoadReport":
        if not state:
            return cls()
        return cls(int(state.get("loaded", 0)), [SkippedImage(int(i), str(n), str(e)) for i, n, e in state.get("skipped", [])])


def _import_grain():
    """``import grain`` without the root-logger handler its import installs (it would print every library's logs)."""
    before = list(logging.root.handlers)
    import grain

    for handler in logging.root.handlers[:]:
        if handler not in before:
            logging.root.removeHandler(handler)
    return grain


def shard_order(size: int, *, seed: int | None = None, process_index: int = 0, process_count: int = 1,
                start: int = 0):
    """The source indices this process reads, in order: a grain ``MapDataset`` of ints.

    ``seed=None`` keeps the source order; an int shuffles it with grain's index shuffle (a fixed
    permutation of ``range(size)``). Process ``process_index`` of ``process_count`` takes every
    ``process_count``-th position from ``process_index``; ``start`` drops the first positions of that share.
    """
    grain = _import_grain()

    if process_count < 1 or not 0 <= process_index < process_count:
        raise InputError(f"process_index must lie in 0 … process_count − 1; got {process_index} of {process_count}")
    if start < 0:
        raise InputError(f"start must be ≥ 0, got {start}")
    order = grain.MapDataset.range(int(size))
    if seed is not None:
        order = order.shuffle(seed=int(seed))
    return order[process_index::process_count][start:]


def _reader(source: Sequence, prepare: Callable[[np.ndarray], np.ndarray]) -> Callable[[int], tuple]:
    """``index -> (index, x or None, label, name or path, error)``: never raises for an unreadable image."""

    def read(index: int) -> tuple:
        index = int(index)
        try:
            sample = source[index]
            x = np.asarray(prepare(sample.image), np.float32)
        except _READ_ERRORS as e:
            return index, None, -1, _name_of(source, index), f"{type(e).__name__}: {e}"
        label = -1 if sample.label is None else int(sample.label)
        return index, x, label, str(sample.name), None

    return read


def _name_of(source, index: int) -> str:
    """The path (or name) of sample ``index`` without reading it, when the source knows it."""
    name_of = getattr(source, "name_of", None)
    return str(name_of(index)) if callable(name_of) else f"{getattr(source, 'description', 'source')}[{index}]"


def _prepare_fn(model) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 ``(H, W, 3)`` (or anything :func:`to_rgb_uint8` takes) -> float32 ``(S, S, 3)`` for ``model``."""
    from .models.preprocess import to_rgb_uint8

    spec = getattr(model, "spec", None)
    if not (hasattr(spec, "view") and hasattr(spec, "normalize")):
        return lambda image: np.asarray(model.preprocess(image))[0]
    view, normalize = spec.view, spec.normalize
    return lambda image: normalize(view(to_rgb_uint8(image)))


def batches(source: Sequence, model, *, batch_size: int, num_workers: int = 2, seed: int | None = None,
            process_index: int | None = None, process_count: int | None = None, start: int = 0,
            prefetch: int = 2, buffer: int | None = None, report: LoadReport | None = None,
            require_labels: bool = False, drop_remainder: bool = False) -> Iterator[Batch]:
    """Stream ``source`` as preprocessed :class:`Batch` es for ``model`` (see the module docstring).

    Args:
      source: a sized, indexable sequence of :class:`~chipjax.data.Sample` (every chipjax source).
      model: a zoo model (its ``view`` and normalisation prepare each image) or anything with ``preprocess``.
      batch_size: images per batch (the last one may be smaller unless ``drop_remainder``).
      num_workers: decode + resize threads (grain); 0 reads in the calling thread.
      seed: None keeps the source order; an int shuffles it deterministically.
      process_index, process_count: this process's share (default: jax's).
      start: positions of this share already consumed (resume).
      prefetch: batches copied to the device ahead of use.
      buffer: decoded images grain keeps ahead (default ``2 · batch_size``, at least 4).
      report: a :class:`LoadReport` updated as images are delivered or skipped.
      require_labels: raise :class:`InputError` on the first readable image without a label.
      drop_remainder: drop a last, smaller batch.
    """
    import jax

    if batch_size < 1:
        raise InputError(f"batch size must be ≥ 1, got {batch_size}")
    if num_workers < 0 or prefetch < 0:
        raise InputError(f"num_workers and prefetch must be ≥ 0; got {num_workers}, {prefetch}")
    pi = jax.process_index() if process_index is None else int(process_index)
    pc = jax.process_count() if process_count is None else int(process_count)
    order = shard_order(len(source), seed=seed, process_index=pi, process_count=pc, start=start)
    read = _reader(source, _prepare_fn(model))
    if num_workers == 0:
        records = (read(order[i]) for i in range(len(order)))
    else:
        grain = _import_grain()
        options = grain.ReadOptions(num_threads=int(num_workers),
                                    prefetch_buffer_size=int(buffer or max(4, 2 * batch_size)))
        records = iter(order.map(read).to_iter_dataset(options))
    report = LoadReport() if report is None else report
    trailing: list = []
    host = _host_batches(records, batch_size, start, require_labels, drop_remainder, trailing)
    queue: collections.deque = collections.deque()

    def delivered(b: Batch) -> Batch:  # the report counts what the caller has received, not what is read ahead
        report.loaded += len(b.labels)
        report.skipped.extend(b.skipped)
        return b

    for b in host:
        queue.append(b._replace(x=jax.device_put(b.x)))
        if len(queue) > prefetch:
            yield delivered(queue.popleft())
    while queue:
        yield delivered(queue.popleft())
    report.skipped.extend(trailing)


def _host_batches(records: Iterator[tuple], batch_size: int, start: int, require_labels: bool, drop_remainder: bool,
                  trailing: list) -> Iterator[Batch]:
    """Group reader records into host batches; an unreadable image is logged and attached to the next batch's
    ``skipped`` (those after the last batch, or in a dropped remainder, end up in ``trailing``)."""
    xs, labels, names, indices, skipped = [], [], [], [], []
    position = start
    for index, x, label, name, error in records:
        position += 1
        if x is None:
            skipped.append(SkippedImage(index, name, error))
            log.warning("skipped unreadable image %s (%s)", name, error)
            continue
        if require_labels and label < 0:
            raise InputError(f"image {name} has no class label; class-level CHIP needs one per image")
        xs.append(x), labels.append(label), names.append(name), indices.append(index)
        if len(xs) == batch_size:
            yield Batch(np.stack(xs), np.asarray(labels, np.int64), names, np.asarray(indices), position, tuple(skipped))
            xs, labels, names, indices, skipped = [], [], [], [], []
    if xs and not drop_remainder:
        yield Batch(np.stack(xs), np.asarray(labels, np.int64), names, np.asarray(indices), position, tuple(skipped))
        skipped = []
    trailing.extend(skipped)


def load_loop_batches(source: Sequence, model, batch_size: int) -> Iterator[Batch]:
    """The one-image-at-a-time loop chipjax used before this module (main thread, ``model.preprocess``
    per image, a host batch at a time): kept as the reference the loader is measured against."""
    import jax.numpy as jnp

    xs, labels = [], []
    for i in range(len(source)):
        s = source[i]
        xs.append(model.preprocess(s.image)[0])
        labels.append(-1 if s.label is None else int(s.label))
        if len(xs) == batch_size:
            yield Batch(jnp.stack(xs), np.asarray(labels), [], np.arange(i + 1 - batch_size, i + 1), i + 1)
            xs, labels = [], []
    if xs:
        yield Batch(jnp.stack(xs), np.asarray(labels), [], np.arange(len(source) - len(xs), len(source)), len(source))
