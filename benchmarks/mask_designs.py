"""Mask designs and ``num_masks="auto"``: seed stability against the mask count, and what auto costs.

On the first ``--images`` bundled composites (EfficientNet-Lite0, shipped weights, the top-1
class of each image), for every design (``iid``: the paper's reading;
``balanced``) and mask count N: the Spearman rank correlation between the CHIP maps of mask
seeds 0 and 1 (mean and minimum over images: the seed stability of ``benchmarks/RESULTS.md``),
the pointing game and box accuracy (CAM protocol, threshold 0.2, IoU 0.5) of the seed-0 maps,
and the seconds per image. Then ``num_masks="auto"`` (rounds of 256, target 0.99): the masks it
used per image, its own predicted stability, the *measured* stability between seeds 0 and 1 of
the auto maps, and the same localisation figures.

    python -m benchmarks.mask_designs --quick
    python -m benchmarks.mask_designs --layers head,blocks.15.expand --images 16
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import common

os.environ.setdefault("TQDM_DISABLE", "1")


def localisation(maps: np.ndarray, samples) -> tuple[float, float]:
    """(pointing game, box accuracy at threshold 0.2 / IoU 0.5) of ``maps (B, S, S)`` on the samples' boxes."""
    from chipjax import metrics

    boxes = [np.asarray(s.boxes, np.float32) for s in samples]
    pointing = float(np.mean(metrics.pointing_game(maps, boxes)))
    box = float(np.mean([metrics.localization_correct(m, b) for m, b in zip(maps, boxes)]))
    return pointing, box


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.standard_args(p)
    p.add_argument("--layers", default=None, help="comma list of Lite0 taps (default head,blocks.15.expand)")
    p.add_argument("--images", type=int, default=None, help="composites (default 16; 4 with --quick)")
    p.add_argument("--masks", default=None, help="comma list of mask counts (default 512,1024,2048,4096)")
    p.add_argument("--designs", default="iid,balanced")
    args = p.parse_args(argv)
    import jax
    import jax.numpy as jnp

    import chipjax as cj
    from chipjax import chip, evalsets, metrics
    from chipjax.heatmaps import heatmap

    layers = (args.layers or ("head" if args.quick else "head,blocks.15.expand")).split(",")
    n_images = args.images or (4 if args.quick else 16)
    counts = [int(c) for c in (args.masks or ("256,512" if args.quick else "512,1024,2048,4096")).split(",")]
    designs = args.designs.split(",")
    model = cj.load_model("efficientnet_lite0")
    samples = evalsets.composite_set(n_images, seed=0)
    x = jnp.concatenate([model.preprocess(s.image) for s in samples])
    targets = jnp.argmax(model(x), axis=-1)
    rows, auto_rows = [], []
    for layer in layers:
        tap = model.tap(layer)
        A = tap.head(x)
        for design in designs:
            for n in counts:
                maps, secs = {}, []
                for seed in (0, 1):
                    start = time.perf_counter()
                    maps[seed] = np.asarray(cj.explain(model, x, method="chip", layer=layer, target=targets,
                                                       num_masks=n, design=design, seed=seed))
                    secs.append((time.perf_counter() - start) / n_images)
                r = metrics.rank_correlations(maps[0], maps[1])
                pointing, box = localisation(maps[0], samples)
                rows.append([layer, design, n, float(r.mean()), float(r.min()), pointing, box, min(secs)])
                print(rows[-1], flush=True)
            # auto: one image at a time (each stops on its own), seeds 0 and 1
            used, predicted, auto_maps, secs = [], [], {0: [], 1: []}, []
            for i in range(n_images):
                for seed in (0, 1):
                    start = time.perf_counter()
                    fit = chip.auto_weights(tap, A[i:i + 1], targets[i:i + 1], jax.random.PRNGKey(seed),
                                            x.shape[1:3], design=design)
                    auto_maps[seed].append(np.asarray(heatmap(A[i:i + 1], fit.weights, x.shape[1:3]))[0])
                    secs.append(time.perf_counter() - start)
                    if seed == 0:
                        used.append(fit.num_masks)
                        predicted.append(float(fit.stability.min()))
            r = metrics.rank_correlations(np.stack(auto_maps[0]), np.stack(auto_maps[1]))
            pointing, box = localisation(np.stack(auto_maps[0]), samples)
            auto_rows.append([layer, design, float(np.mean(used)), int(np.min(used)), int(np.max(used)),
                              float(np.mean(predicted)), float(r.mean()), float(r.min()), pointing, box,
                              float(np.median(secs))])
            print(auto_rows[-1], flush=True)
    body = common.table(["layer", "design", "masks", "seed r mean", "seed r min", "pointing", "box acc",
                         "s / image"], rows)
    body += "\n\n" + common.table(["layer", "design", "auto masks mean", "min", "max", "predicted r",
                                   "measured seed r mean", "measured seed r min", "pointing", "box acc",
                                   "s / image"], auto_rows)
    notes = (f"First {n_images} bundled composites (seed 0), EfficientNet-Lite0 shipped weights, top-1 class; seed "
             "r = Spearman r between the maps of mask seeds 0 and 1; pointing (15 px tolerance) and box accuracy "
             "(threshold 0.2, IoU 0.5) of the seed-0 maps; s / image = the faster of the two seeds' batched runs "
             f"({n_images} images per call). Auto: rounds of 256 masks, alternately into two halves, stop at predicted "
             "stability 0.99 (Spearman-Brown of the split-half map correlation) or 8192 masks; one image per call.")
    common.report("mask_designs", body, notes, write=not args.no_write)


if __name__ == "__main__":
    main()
