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
    from chipjax.data import folder_source
    from chipjax.fit import fit_source

    dist.initialize("10.0.0.1:12355", num_processes=2, process_id=int(sys.argv[1]))
    model = cj.load_model("resnet50", weights="resnet50.pth")
    # the input pipeline reads this host's share (jax.process_index()) with decode + resize workers;
    # the statistics are merged across the hosts at the end
    chip = fit_source(model, folder_source("/data/ILSVRC/train"), layer="layer4", num_masks=2048,
                      batch_size=32, num_workers=8)
    if dist.is_coordinator():
        chip.save("chip-resnet50-layer4")

    # on host 10.0.0.1:   python fit_multihost.py 0
    # on the other host:  python fit_multihost.py 1

The merged statistics equal those of one process streaming every image (to float32 rounding;
``tests/test_distributed.py`` checks W with two processes on loopback, for :func:`class_statistics` and
for :func:`chipjax.fit.fit_source`). :func:`fit_chip` is the same for batches you shard yourself
(:func:`host_shard`).
"""
from __future__ import annotations

import itertools
import json
from typing import Any, Iterable, Iterator, Sequence, TypeVar

import jax
import numpy as np

from .errors import InputError
from .options import FitOptions

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


def merge_class_statistics(accumulator) -> Any:
    """Merge a :class:`chipjax.chip.ClassStatsAccumulator` across processes, in place; returns it.

    Works on the accumulator's :meth:`state` tree: every running sum (cross moments, variances,
    class counts, image counts) is summed over the processes (in float64, then back to its
    dtype); the mask statistics are the same in every process (same seed, same masks) and are
    taken from the first process that saw images. A process with no images contributes zeros
    (it learns the shapes from that first process). Every process ends with the same totals.
    """
    if jax.process_count() == 1:
        return accumulator
    flat = _flatten(accumulator.state())
    flat.pop("num_images", None)
    counts = allgather(np.array([accumulator.num_images], np.int32))[:, 0]  # (P,)
    if not np.any(counts > 0):
        raise InputError("no process had any images to fit on; check each host's share of the data")
    first = int(np.flatnonzero(counts > 0)[0])
    spec = json.dumps({k: [list(v.shape), str(v.dtype)] for k, v in flat.items()}).encode()
    if len(spec) > _SPEC_BYTES:
        raise InputError("the accumulator state has too many fields to merge across processes")
    specs = allgather(np.frombuffer(spec.ljust(_SPEC_BYTES, b" "), np.uint8))  # (P, _SPEC_BYTES)
    template = json.loads(bytes(specs[first]).decode())
    local = {k: flat[k] if flat else np.zeros(shape, dtype) for k, (shape, dtype) in template.items()}
    gathered = allgather({k: v.astype(np.float32) for k, v in local.items()})
    merged = {k: (v[first] if k.startswith("mask_stats/") else v.astype(np.float64).sum(axis=0))
              .astype(template[k][1]) for k, v in gathered.items()}
    merged["num_images"] = np.asarray(int(counts.sum()))
    accumulator.restore(_unflatten(merged))
    return accumulator


_SPEC_BYTES = 1 << 14


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """``{"a": {"b": x}}`` -> ``{"a/b": np.asarray(x)}``."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def class_statistics(tap, batches: Iterable, *, num_masks: int = FitOptions.num_masks,
                     keep_prob: float = FitOptions.keep_prob, score: str = FitOptions.score, seed: int = FitOptions.seed,
                     chunk_size: int = FitOptions.chunk_size):
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


def fit_chip(model, layer: str | None, batches: Iterable, *, num_masks: int = FitOptions.num_masks,
             keep_prob: float = FitOptions.keep_prob, lam_ratio: float = FitOptions.lam_ratio,
             score: str = FitOptions.score, nonneg: bool = FitOptions.nonneg, seed: int = FitOptions.seed,
             chunk_size: int = FitOptions.chunk_size):
    """Class-level CHIP over a data set spread across processes; every process returns the same model.

    Like :meth:`chipjax.chip.CHIP.fit` (same options), with ``batches`` this process's share.
    """
    FitOptions(num_masks=num_masks, keep_prob=keep_prob, lam_ratio=lam_ratio, score=score, nonneg=nonneg, seed=seed,
               chunk_size=chunk_size).check()
    tap = model.tap(layer)
    accumulator = class_statistics(tap, batches, num_masks=num_masks, keep_prob=keep_prob, score=score, seed=seed,
                                   chunk_size=chunk_size)
    config = dict(num_masks=num_masks, keep_prob=keep_prob, lam_ratio=lam_ratio, score=score, nonneg=nonneg,
                  seed=seed)
    return accumulator.to_model(model.name, config)
