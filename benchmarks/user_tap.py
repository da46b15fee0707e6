"""Perturbation-sweep rate of a user-module tap (``cj.tap_module``) against the zoo tap at the same layer.

The user tap is built from the zoo model's own Flax module and variables, at the submodule of the
same unit (``units_<i>``), so both split the same network at the same place; they differ only in the
mechanism: the zoo tail runs ``units[i+1:]`` on the features, the user tail runs the whole module on
the bound images with the unit's output replaced (the head is dead code that XLA removes). Both run
:func:`chipjax.perturb.perturbation_stats` with the same masks and chunks, timed alternately
(:func:`benchmarks.common.interleaved`); ``ratio = zoo time / user time`` (≥ 0.8 is the target).

    python -m benchmarks.user_tap --quick
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks import common

#: (model, zoo layer)
CASES = (("resnet18", "layer3"), ("resnet18", "layer4"), ("vgg11", "features.14"))


def run_case(name: str, layer: str, *, size: int, batch: int, num_masks: int, chunk: int, reps: int) -> list:
    import chipjax as cj
    from chipjax import perturb

    model = cj.load_model(name, weights=None)
    zoo = model.tap(layer)
    unit = model.spec.aliases.get(layer, layer)
    path = f"units_{model.spec.units.index(unit)}"
    x = jax.random.normal(jax.random.key(0), (batch, size, size, 3), jnp.float32)
    user = cj.tap_module(model.module, path, x, model.variables)
    A = jax.block_until_ready(zoo.head(x))
    assert bool(jnp.allclose(user.head(x), A, atol=1e-4)), "user and zoo taps disagree"
    key = jax.random.key(1)

    def sweep(tap):
        return lambda: perturb.perturbation_stats(tap.tail_fn, tap.variables, A, key, num_masks=num_masks,
                                                  chunk=chunk)

    times = common.interleaved({"zoo": sweep(zoo), "user": sweep(user)}, reps=reps)
    z, u = common.median(times["zoo"]), common.median(times["user"])
    return [f"{name}:{layer} ({path})", f"{size}px ×{batch}", num_masks, f"{z * 1e3:.0f}", f"{u * 1e3:.0f}",
            f"{common.median_ratio(times['zoo'], times['user']):.2f}", str(user.tail_reads_images)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.standard_args(parser)
    args = parser.parse_args(argv)
    size, masks, chunk, reps = (112, 256, 64, 5) if args.quick else (224, 1024, 128, 7)
    reps = args.reps or reps
    rows = [run_case(n, l, size=size, batch=1, num_masks=masks, chunk=chunk, reps=reps) for n, l in CASES]
    body = ("User-module tap vs zoo tap, same network and layer, random-init weights; median ms per "
            "`perturbation_stats` sweep, alternating runs; ratio = zoo time / user time (median of pairs).\n\n"
            + common.table(["tap", "input", "masks", "zoo ms", "user ms", "ratio", "tail reads images"], rows))
    print(common.append_section("User taps: perturbation sweep rate", body, write=not args.no_write))


if __name__ == "__main__":
    main()
