"""Multi-device and multi-host helpers.

**One host, several devices.** Nothing to do: :func:`chipjax.perturb.perturbation_stats` shards
the masks over a 1-D :class:`jax.sharding.Mesh` of every local device (:func:`local_mesh`) and
pools the per-device statistics with one psum per field. Every chipjax explanation uses it.

**Several hosts** (class-level CHIP over a data set): every process runs the same script, reads
its own share of the images (:func:`host_shard`), streams their statistics locally (using all
of its local devices), and the statistics are merged across processes
(:func:`merge_class_statistics`, one all-gather). Every process ends with the same CHIP model;
let process 0 save it. On CPU the cross-process collectives run over gloo (jax's default);
on GPU over NCCL. Launch example, two hosts (or two processes on one machine, coordinator on
127.0.0.1)::

    # fit_multihost.py
    import sys
    import chipjax as cj
    from chipjax import distributed as dist
    from chipjax.fit import preprocessed_batches
    from chipjax.data import folder_source

    dist.initialize("10.0.0.1:12355", num_processes=2, process_id=int(sys.argv[1]))
    model = cj.load_model("resnet50", weights="resnet50.pth")
    samples = dist.host_shard(folder_source("/data/imagenet-val"))      # this host's images
    chip = dist.fit_chip(model, "layer4", preprocessed_batches(model, samples, batch_size=8),
                         num_masks=2048)
    if dist.is_coordinator():
        chip.save("chip-resnet50-layer4")

    # on host 10.0.0.1:   python fit_multihost.py 0
    # on the other host:  python fit_multihost.py 1

The merged statistics equal those of one process streaming every image (to float32 rounding;
``tests/test_distributed.py`` checks W with two processes on loopback).
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator, Sequence, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from . import stats as st
from .errors import InputError

T = TypeVar("T")


def initialize(coordinator_address: str, num_processes: int, process_id: int, *,
               local_device_ids: Sequence[int] | None = None, timeout_s: int = 300) -> None:
    """Join a multi-process job: :func:`jax.distributed.initialize` with checked arguments.

    Call it first thing, before any JAX computation, in every process.

    Args:
      coordinator_address: ``"host:port"`` of process 0 (it listens there).
      num_processes: processes in the job.
      process_id: this process's number, ``0 … num_processes − 1``.
      local_device_ids: the local devices this process uses (default: all).
      timeout_s: how long to wait for every process to join.
    """
    if not isinstance(coordinator_address, str) or ":" not in coordinator_address:
        raise InputError(f"coordinator_address must be 'host:port', got {coordinator_address!r}")
    if int(num_processes) < 1 or not 0 <= int(process_id) < int(num_processes):
        raise InputError(f"process_id must lie in 0 … num_processes − 1; got process_id={process_id}, "
                         f"num_processes={num_processes}")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=int(num_processes),
                               process_id=int(process_id), local_device_ids=local_device_ids,
                               initialization_timeout=int(timeout_s))


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_coordinator() -> bool:
    """True in process 0 (the one that should write results)."""
    return jax.process_index() == 0


def host_shard(items: Iterable[T], index: int | None = None, count: int | None = None) -> Iterator[T]:
    """This process's share of ``items``: every ``count``-th item starting at ``index`` (round robin).

    Streams (never materialises ``items``). Defaults: this process's index and the process count.
    """
    index = jax.process_index() if index is None else int(index)
    count = jax.process_count() if count is None else int(count)
    if count < 1 or not 0 <= index < count:
        raise InputError(f"host_shard needs 0 ≤ index < count; got index={index}, count={count}")
    return itertools.islice(items, index, None, count)


def local_mesh(axis_name: str = "masks") -> jax.sharding.Mesh:
    """A 1-D mesh over every local device (what :mod:`chipjax.perturb` shards the masks over)."""
    return jax.sharding.Mesh(np.asarray(jax.local_devices()), (axis_name,))


def allgather(tree: Any) -> Any:
    """Every process's ``tree`` (same structure and shapes everywhere), stacked on a new leading axis.

    Host numpy arrays; with one process, each leaf gets a leading axis of 1.
    """
    if jax.process_count() == 1:
        return jax.tree.map(lambda a: np.asarray(a)[None], tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(jax.tree.map(np.asarray, tree)))


def merge_stats(stats: st.Stats) -> st.Stats:
    """Pool :class:`~chipjax.stats.Stats` held by every process (same shapes) into one, on every process.

    :func:`chipjax.stats.merge_many` of the all-gathered stats (exact up to rounding).
    """
    return st.merge_many(st.Stats(*(jnp.asarray(f) for f in allgather(stats))))


def merge_class_statistics(accumulator) -> Any:
    """Merge a :class:`chipjax.chip.ClassStatsAccumulator` across processes, in place; returns it.

    Sums the per-image cross moments, the per-class sums and counts and the image counts; the
    mask statistics are the same in every process (same seed, same masks) and are taken from
    the first process that saw images. A process with no images contributes zeros. Every
    process ends with the same totals.
    """
    if jax.process_count() == 1:
        return accumulator
    has = accumulator.num_images > 0
    K, C = accumulator.cross_sum.shape if has else (0, 0)
    info = allgather(np.array([accumulator.num_images, K, C], np.int64))  # (P, 3)
    K, C = int(info[:, 1].max()), int(info[:, 2].max())
    if K == 0:
        raise InputError("no process had any images to fit on; check each host's share of the data")
    zeros = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    mask_fields = (accumulator.mask_stats if has else
                   st.Stats(zeros(), zeros(K), zeros(1), zeros(K, K), zeros(K, 1), zeros(1)))
    local = {
        "cross_sum": np.asarray(accumulator.cross_sum) if has else zeros(K, C),
        "class_cross_sum": np.asarray(accumulator.class_cross_sum) if has else zeros(K, C),
        "class_counts": np.asarray(accumulator.class_counts) if has else zeros(C),
        "mask_stats": {name: np.asarray(f) for name, f in zip(st.Stats._fields, mask_fields)
                       if name in ("count", "mask_mean", "mask_comoment")},
    }
    gathered = allgather(local)
    total = lambda a: jnp.asarray(a.astype(np.float64).sum(axis=0).astype(np.float32))  # noqa: E731
    first = int(np.flatnonzero(info[:, 0] > 0)[0])
    accumulator.cross_sum = total(gathered["cross_sum"])
    accumulator.class_cross_sum = total(gathered["class_cross_sum"])
    accumulator.class_counts = total(gathered["class_counts"])
    accumulator.mask_stats = st.Stats(*mask_fields)._replace(
        **{name: jnp.asarray(values[first]) for name, values in gathered["mask_stats"].items()})
    accumulator.num_images = int(info[:, 0].sum())
    return accumulator


def class_statistics(tap, batches: Iterable, *, num_masks: int = 2048, keep_prob: float = 0.5, score: str = "prob",
                     seed: int = 0, chunk_size: int = 256):
    """Stream this process's ``batches`` into class-level CHIP statistics, then merge across processes.

    Args:
      tap: a :class:`~chipjax.tap.Tap`.
      batches: this process's ``x (B, S, S, 3)`` or ``(x, labels (B,))`` batches (see :func:`host_shard`).
      num_masks, keep_prob, score, seed, chunk_size: as :meth:`chipjax.chip.CHIP.fit`; must be the same
        in every process (same seed -> same masks).
    Returns:
      The merged :class:`chipjax.chip.ClassStatsAccumulator` (``.to_model(arch, config)`` solves).
    """
    from .chip import ClassStatsAccumulator

    accumulator = ClassStatsAccumulator(tap, num_masks=num_masks, keep_prob=keep_prob, score=score, seed=seed,
                                        chunk_size=chunk_size)
    for batch in batches:
        x, labels = batch if isinstance(batch, tuple) else (batch, None)
        accumulator.add(x, labels)
    return merge_class_statistics(accumulator)


def fit_chip(model, layer: str | None, batches: Iterable, *, num_masks: int = 2048, keep_prob: float = 0.5,
             lam_ratio: float = 0.05, score: str = "prob", nonneg: bool = False, seed: int = 0,
             chunk_size: int = 256):
    """Class-level CHIP over a data set spread across processes; every process returns the same model.

    Like :meth:`chipjax.chip.CHIP.fit` (same options), with ``batches`` this process's share.
    """
    from .chip import check_lam_ratio

    check_lam_ratio(lam_ratio)
    tap = model.tap(layer)
    accumulator = class_statistics(tap, batches, num_masks=num_masks, keep_prob=keep_prob, score=score, seed=seed,
                                   chunk_size=chunk_size)
    config = dict(num_masks=num_masks, keep_prob=keep_prob, lam_ratio=lam_ratio, score=score, nonneg=nonneg,
                  seed=seed)
    return accumulator.to_model(model.name, config)
