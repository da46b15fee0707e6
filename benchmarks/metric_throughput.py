"""Metric throughput (images/s per metric) of :mod:`chipjax.metrics` on EfficientNet-Lite0.

Deletion/insertion is timed two ways on the same images, maps and steps, alternately (see
:mod:`benchmarks.common`):

* **loop** (today's :func:`chipjax.metrics.deletion_insertion`): masked copies built in numpy and
  scored by the jitted softmax in chunks of ``--score-batch`` images, one Python iteration per chunk;
* **batched** (:func:`chipjax.metrics.deletion_insertion_batched`): B images × T steps × 2 modes as
  one jitted call (``lax.map`` over the steps inside the compiled program).

The other metrics (MaxBoxAcc, MaxBoxAccV2, PxAP, confidence change, ROAD) are timed once each on the
same inputs. Maps are random (throughput does not depend on what a map shows); boxes are the
composites' pasted rectangles.

    python -m benchmarks.metric_throughput --quick      # 64 px, seconds
    python -m benchmarks.metric_throughput --images 4 --steps 21
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks import common


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--steps", type=int, default=21)
    p.add_argument("--size", type=int, default=224, help="input size (the model's view is resized to it)")
    p.add_argument("--score-batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--road-images", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="64 px, 2 images, 5 steps, 1 repetition")
    p.add_argument("--no-write", action="store_true", help="print, do not append to RESULTS.md")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.images, args.steps, args.reps = 64, 2, 5, 1

    import dataclasses

    import jax

    from chipjax import evalsets
    from chipjax import metrics as M
    from chipjax.eval import softmax_scorer
    from chipjax.models.preprocess import boxes_in_view
    from chipjax.models import load_model
    from chipjax.models import preprocess as pp
    from chipjax.models.base import Model

    base = load_model("efficientnet_lite0")
    spec = dataclasses.replace(base.spec, input_size=args.size, view=pp.stretch_view(args.size))
    model = Model(spec, base.variables, f"pretrained@{args.size}px")
    samples = evalsets.composite_set(args.images, seed=0)
    views = [model.view(s.image) for s in samples]
    x = np.concatenate([model.spec.normalize(v)[None] for v in views]).astype(np.float32)
    targets = np.array([int(s.label) for s in samples])
    rng = np.random.default_rng(0)
    maps = rng.random((args.images, args.size, args.size))
    boxes = [boxes_in_view(s.boxes, s.image.shape[:2], model.spec.view) for s in samples]
    masks = np.stack([M.boxes_to_mask(b, (args.size, args.size)) for b in boxes])

    scorer = softmax_scorer(model)
    module, variables = model.module, model.variables

    def prob_fn(images):
        return jax.nn.softmax(module.apply(variables, images), axis=-1)

    loop = lambda: M.deletion_insertion(scorer, x, maps, targets, steps=args.steps, protocol="rise",  # noqa: E731
                                        batch=args.score_batch)
    batched = lambda: M.deletion_insertion_batched(prob_fn, x, maps, targets, steps=args.steps,  # noqa: E731
                                                   protocol="rise")
    a, b = loop(), batched()
    parity = max(float(np.abs(a["curves"][k] - b["curves"][k]).max()) for k in ("deletion", "insertion"))
    times = common.interleaved({"loop": loop, "batched": batched}, reps=args.reps, warmup=1)
    forwards = 2 * len(a["curves"]["fractions"]) * args.images
    rows = []
    for name, label in (("loop", "deletion+insertion, loop (today)"),
                        ("batched", "deletion+insertion, one jitted call")):
        t = common.median(times[name])
        rows.append([label, args.images, forwards, t, args.images / t, common.median_ratio(times["loop"], times[name])])

    def once(fn, n):
        start = time.perf_counter()
        common.block(fn())
        return time.perf_counter() - start

    scorer(x[:1])
    others = [
        ("MaxBoxAcc (v1)", args.images, lambda: M.max_box_acc(maps, boxes)),
        ("MaxBoxAccV2", args.images, lambda: M.max_box_acc_v2(maps, boxes)),
        ("PxAP", args.images, lambda: M.pxap(maps, masks)),
        ("confidence drop/increase", args.images,
         lambda: M.confidence_change(scorer, x, maps, targets, batch=args.images)),
        ("ROAD (9 percentiles x MoRF/LeRF)", args.road_images,
         lambda: M.road(scorer, x[:args.road_images], maps[:args.road_images], targets[:args.road_images],
                        batch=18 * args.road_images)),
    ]
    for label, n, fn in others:
        fn()  # warm (compiles the scorer at this batch)
        t = once(fn, n)
        rows.append([label, n, "", t, n / t, ""])
    body = common.table(["metric", "images", "forward passes", "s", "images / s", "speed-up vs loop"], rows)
    body += (f"\n\nEfficientNet-Lite0 (shipped weights) at {args.size} px; RISE protocol, {args.steps} steps, "
             f"loop chunks of {args.score_batch} images; random maps; composites' boxes. Deletion/insertion: "
             f"median of {args.reps} interleaved repetitions after a warm-up (compilation excluded); batched vs loop "
             f"curves agree to {parity:.1e}. Other rows: one timed call after a warm-up.")
    text = common.append_section("metric_throughput", body, write=not args.no_write)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
