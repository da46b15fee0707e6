"""Class-level CHIP at data-set scale: loader throughput, fit throughput, end-to-end fit, cost per 10^6 perturbed networks.

1. Loader: JPEGs (ImageNet-sized, 500×375, real photo content) decoded and resized to the model's 224 view, as
   images/s of: the one-image-at-a-time loop chipjax used before (``fit.preprocessed_batches``: PIL + ``preprocess``
   per image, main thread), and ``chipjax.pipeline.batches`` with 1 and 2 grain worker threads.
2. Fit: perturbed evaluations/s of ``ClassStatsAccumulator.add`` (the class-level fit's step: head once, every
   image × mask through the tail, shared mask Gram, on-device sums) against the plain batched tail forward at the
   same tap, batch and chunk (the same masked copies through the tail, no statistics), per case.
3. End to end: ``fit_source`` reading the JPEG folder through the loader vs the same fit on batches already in memory.

    python -m benchmarks.class_fit                 # CPU, short (a few minutes on 2 cores)
    python -m benchmarks.class_fit --quick --no-write
    python -m benchmarks.class_fit --cases resnet50:layer4,resnet50:layer3 --dtype both --masks 2048   # gpu.sh
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from benchmarks import common


def write_jpegs(folder: str, n: int, classes: int = 4) -> None:
    """``n`` 500×375 JPEGs in ``classes`` class folders, cut from scikit-image's real photos."""
    from PIL import Image
    from skimage import data as skd

    photos = [skd.chelsea(), skd.coffee(), skd.astronaut(), skd.rocket()]
    rng = np.random.default_rng(0)
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        y, x = rng.integers(0, max(1, h // 4)), rng.integers(0, max(1, w // 4))
        crop = Image.fromarray(photo[y:, x:]).resize((500, 375), Image.BILINEAR)
        d = os.path.join(folder, str(i % classes))
        os.makedirs(d, exist_ok=True)
        crop.save(os.path.join(d, f"{i:05d}.JPEG"), quality=90)


def loader_rates(model, source, batch_size: int, reps: int) -> dict[str, float]:
    from chipjax import pipeline
    from chipjax.fit import preprocessed_batches

    def drain(it):
        last = None
        for b in it:
            last = b
        return (last[0] if isinstance(last, tuple) else last.x) if last is not None else None

    cases = {
        "loop (before: one image at a time, main thread)": lambda: drain(preprocessed_batches(model, source, batch_size)),
        "grain, 1 worker": lambda: drain(pipeline.batches(source, model, batch_size=batch_size, num_workers=1,
                                                           process_index=0, process_count=1)),
        "grain, 2 workers": lambda: drain(pipeline.batches(source, model, batch_size=batch_size, num_workers=2,
                                                            process_index=0, process_count=1)),
    }
    times = common.interleaved(cases, reps=reps, warmup=1)
    return {k: len(source) / common.median(v) for k, v in times.items()}


def fit_rates(name: str, layer: str, batch: int, masks: int, chunk_evals: int, reps: int, dtype: str | None):
    import jax
    import jax.numpy as jnp
    from jax import lax

    import chipjax as cj
    from chipjax import perturb
    from chipjax.chip import ClassStatsAccumulator

    from chipjax.tap import Tap

    model = cj.load_model(name, weights=None, seed=0)
    tap = model.tap(layer)
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, model.input_size, model.input_size, 3))
    labels = np.arange(batch) % 1000
    A = tap.head(x)
    # the fit's perturbation part on the features (identity head), timed apart from the head itself
    on_features = Tap(layer=tap.layer, head_fn=lambda v, a: a, tail_fn=tap.tail_fn, variables=tap.variables)
    acc = ClassStatsAccumulator(on_features, num_masks=masks, keep_prob=0.5, score="prob", seed=0,
                                chunk_size=chunk_evals, compute_dtype=dtype)
    K = A.shape[-1]
    chunk = max(1, chunk_evals // batch)
    steps = -(-masks // chunk)
    all_masks = perturb.sample_masks(jax.random.PRNGKey(0), jnp.arange(steps * chunk), K, 0.5)
    variables = perturb.cast_floating(tap.variables, None if dtype is None else jnp.dtype(dtype))

    @jax.jit
    def plain(A, all_masks):
        a = A if dtype is None else A.astype(dtype)

        def body(i, total):
            m = lax.dynamic_slice_in_dim(all_masks, i * chunk, chunk).astype(a.dtype)
            am = (a[:, None] * m[None, :, None, None, :]).reshape(-1, *a.shape[1:])
            return total + jax.nn.softmax(tap.tail_fn(variables, am).astype(jnp.float32)).sum()

        return lax.fori_loop(0, steps, body, jnp.float32(0))

    def ours():
        acc.add(A, labels)
        acc.block_until_ready()
        return acc.sums["class_counts"]

    times = common.interleaved({"ours": ours, "plain": lambda: plain(A, all_masks), "head": lambda: tap.head(x)},
                               reps=reps, warmup=1)
    evals = batch * masks
    ours_s, head_s = common.median(times["ours"]), common.median(times["head"])
    return dict(case=f"{name} {layer}", K=K, dtype=dtype or "float32", batch=batch, masks=masks,
                ours=evals / ours_s, plain=evals / common.median(times["plain"]),
                ratio=common.median_ratio(times["plain"], times["ours"]), with_head=evals / (ours_s + head_s),
                head_share=head_s / (ours_s + head_s))


def end_to_end(model, layer: str, source, batch_size: int, masks: int, reps: int) -> dict[str, float]:
    """images/s of ``fit_source`` reading JPEGs through the loader, and of the same fit on batches already in memory
    (interleaved repetitions after a warm-up that compiles every shape and the solve)."""
    import jax.numpy as jnp

    from chipjax.chip import CHIP
    from chipjax.fit import fit_source

    opts = dict(layer=layer, num_masks=masks, progress=False)
    groups = [range(i, min(i + batch_size, len(source))) for i in range(0, len(source), batch_size)]
    in_memory = [(jnp.asarray(np.concatenate([np.asarray(model.preprocess(source[j].image)) for j in g])),
                  np.asarray([source[j].label for j in g])) for g in groups]
    times = common.interleaved({
        "loader": lambda: fit_source(model, source, batch_size=batch_size, num_workers=2, **opts).weights,
        "in_memory": lambda: CHIP.fit(model, layer, in_memory, num_masks=masks).weights,
    }, reps=reps, warmup=1)
    return {k: len(source) / common.median(v) for k, v in times.items()} | {
        "ratio": common.median_ratio(times["in_memory"], times["loader"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.standard_args(p)
    p.add_argument("--cases", default="resnet50:layer4,efficientnet_lite0:head")
    p.add_argument("--masks", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--chunk", type=int, default=256, help="perturbed evaluations per step")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | both")
    p.add_argument("--images", type=int, default=48, help="JPEGs for the loader and end-to-end runs")
    p.add_argument("--skip-loader", action="store_true")
    p.add_argument("--skip-fit", action="store_true", help="only the loader and end-to-end parts")
    p.add_argument("--label", default="class_fit")
    args = p.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    if args.quick:
        args.masks, args.images, args.batch = 64, 8, 2
    import chipjax as cj
    from chipjax.data import folder_source

    body = []
    if not args.skip_loader:
        eff = cj.load_model("efficientnet_lite0")
        with tempfile.TemporaryDirectory() as tmp:
            write_jpegs(tmp, args.images)
            source = folder_source(tmp)
            rates = loader_rates(eff, source, args.batch, reps)
            body += [f"**Loader** ({args.images} JPEGs 500×375 → 224 view of EfficientNet-Lite0, batch {args.batch}; "
                     f"median of {reps} interleaved passes):", "",
                     common.table(["loader", "images/s", "× loop"],
                                  [[k, f"{v:.1f}", f"{v / rates[next(iter(rates))]:.2f}"] for k, v in rates.items()]), ""]
            e2e = end_to_end(eff, "head", source, args.batch, args.masks, reps)
            body += [f"**End to end** (`fit_source`, EfficientNet-Lite0 head, {args.masks} masks, {args.images} JPEGs, "
                     f"2 loader workers) vs the same fit on batches already in memory: "
                     f"{e2e['loader']:.2f} vs {e2e['in_memory']:.2f} images/s (medians of {reps} interleaved runs); "
                     f"ratio **{e2e['ratio']:.2f}**.", ""]
    dtypes = ["float32", "bfloat16"] if args.dtype == "both" else [args.dtype]
    rows = []
    for case in ([] if args.skip_fit else args.cases.split(",")):
        name, layer = case.split(":")
        for dt in dtypes:
            r = fit_rates(name, layer, args.batch, args.masks, args.chunk, reps, None if dt == "float32" else dt)
            per_million = 1e6 / r["with_head"]
            rows.append([r["case"], r["K"], r["dtype"], r["batch"], r["masks"], f"{r['plain']:,.0f}", f"{r['ours']:,.0f}",
                         f"{r['ratio']:.2f}", f"{r['with_head']:,.0f} ({r['head_share']:.0%})", f"{per_million:,.0f} s",
                         f"{per_million * 1e2 / 3600:,.1f} h"])
    body += [] if not rows else [f"**Class-level fit** (`ClassStatsAccumulator.add` on the tap's features: {args.masks} masks × "
             f"{args.batch} images, chunk {args.chunk} evaluations, shared mask Gram, own-class scores, on-device sums; "
             f"random-init weights, 224 px) against the plain batched tail forward (the same masked copies through the "
             f"tail and a softmax, no statistics). 'with head' adds the head's forward pass of the batch (its share of "
             f"the time in brackets); the cost columns use it (one process, this machine):", "",
             common.table(["case", "K", "dtype", "B", "masks", "plain evals/s", "fit evals/s", "fit/plain",
                           "fit evals/s with head", "per 10^6 perturbed nets", "10^8 (paper)"], rows)]
    text = "\n".join(body)
    print(common.append_section(args.label, text, write=not args.no_write))


if __name__ == "__main__":
    main()
