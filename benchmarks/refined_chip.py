"""Refined CHIP on EfficientNet-Lite0 at its default layers: seconds per image, seed stability, localisation.

For each ``layer_masks`` rule (``equal``: ``num_masks`` at every layer; ``per-channel``: ``num_masks``
at the widest layer and the same masks per channel at the narrower, shallower ones,
:func:`chipjax.chip.layer_mask_counts`): the seconds per image on the bundled chelsea photo
(one image per call, the rules interleaved, medians), and on the first ``--images`` bundled
composites (seed 0; top-1 class) the Spearman r between the fused maps of mask seeds 0 and 1
(mean and minimum), the pointing game and box accuracy (threshold 0.2, IoU 0.5) of the seed-0 maps.

    python -m benchmarks.refined_chip --quick
    python -m benchmarks.refined_chip --images 16 --reps 3
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from benchmarks import common
from benchmarks.mask_designs import localisation

os.environ.setdefault("TQDM_DISABLE", "1")

RULES = ("equal", "per-channel")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.standard_args(p)
    p.add_argument("--images", type=int, default=None, help="composites (default 16; 4 with --quick)")
    p.add_argument("--masks", type=int, default=None, help="num_masks (default 2048; 256 with --quick)")
    args = p.parse_args(argv)
    reps = args.reps or 3
    import jax
    import jax.numpy as jnp
    import skimage.data
    from PIL import Image

    import chipjax as cj
    from chipjax import chip, evalsets, metrics

    n_images = args.images or (4 if args.quick else 16)
    num_masks = args.masks or (256 if args.quick else 2048)
    model = cj.load_model("efficientnet_lite0")
    layers = list(model.spec.stage_layers)
    channels = [int(model.tap(l).head(jnp.zeros((1, 224, 224, 3))).shape[-1]) for l in layers]
    photo = model.preprocess(Image.fromarray(skimage.data.chelsea()))
    target = int(jnp.argmax(model(photo), axis=-1)[0])

    def refined(x, targets, rule, seed=0):
        return cj.explain(model, x, method="refined-chip", target=targets, num_masks=num_masks, layer_masks=rule,
                          seed=seed)

    times = common.interleaved({rule: (lambda rule=rule: refined(photo, target, rule)) for rule in RULES},
                               reps=reps, warmup=1)
    samples = evalsets.composite_set(n_images, seed=0)
    x = jnp.concatenate([model.preprocess(s.image) for s in samples])
    targets = jnp.argmax(model(x), axis=-1)
    rows = []
    for rule in RULES:
        maps = [np.asarray(refined(x, targets, rule, seed)) for seed in (0, 1)]
        r = metrics.rank_correlations(maps[0], maps[1])
        pointing, box = localisation(maps[0], samples)
        counts = chip.layer_mask_counts(num_masks, channels, rule)
        rows.append([rule, " / ".join(map(str, counts)), common.median(times[rule]), float(r.mean()), float(r.min()),
                     pointing, box])
        print(rows[-1], flush=True)
    jax.clear_caches()
    body = common.table(["layer_masks", "masks per layer", "s / image (chelsea)", "seed r mean", "seed r min",
                         "pointing", "box acc"], rows)
    notes = (f"EfficientNet-Lite0 shipped weights, layers {' / '.join(layers)} ({' / '.join(map(str, channels))} "
             f"channels), num_masks {num_masks}, geometric fusion. s / image: chelsea, one image per call, "
             f"{reps} interleaved repetitions, median. Seed r: Spearman r between the fused maps of mask seeds "
             f"0 and 1 on the first {n_images} bundled composites (seed 0, top-1 class); pointing (15 px tolerance) "
             "and box accuracy (threshold 0.2, IoU 0.5) of the seed-0 maps.")
    common.report("refined_chip", body, notes, write=not args.no_write)


if __name__ == "__main__":
    main()
