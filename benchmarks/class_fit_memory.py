"""Peak memory of the class-level fit against the number of images and of masks (issue 11: "memory flat").

Each setting runs in a fresh subprocess: EfficientNet-Lite0 (random init) at ``head``, batches of 8
images' feature maps fed to :class:`chipjax.chip.ClassStatsAccumulator` (the fit's on-device
statistics: one K × K mask co-moment shared by all images, per-class K-vectors). One batch is added
first (compilation, the per-stream mask Gram); then RSS is sampled every millisecond while the
remaining batches are added. Reported: the peak RSS during those adds minus the RSS before them.
With statistics only, it must not grow with the number of images or masks.

    python -m benchmarks.class_fit_memory
"""
from __future__ import annotations

import argparse

from benchmarks import common

CHILD = r"""
import json, sys
import jax, numpy as np
import chipjax as cj
from chipjax.chip import ClassStatsAccumulator
from chipjax.tap import Tap
from benchmarks.common import peak_rss_growth

images, masks, batch = int(sys.argv[1]), int(sys.argv[2]), 8
model = cj.load_model("efficientnet_lite0", weights=None, seed=0)
tap = model.tap("head")
A = jax.block_until_ready(tap.head(jax.random.normal(jax.random.PRNGKey(0), (batch, 224, 224, 3))))
on_features = Tap(layer=tap.layer, head_fn=lambda v, a: a, tail_fn=tap.tail_fn, variables=tap.variables)
acc = ClassStatsAccumulator(on_features, num_masks=masks, keep_prob=0.5, score="prob", seed=0, chunk_size=256)
labels = lambda i: (np.arange(batch) + batch * i) % 50          # 50 classes seen
acc.add(A, labels(0)); acc.block_until_ready()


def add_the_rest():
    for i in range(1, images // batch):
        acc.add(A * (1.0 + 0.01 * i), labels(i))
    acc.block_until_ready()


growth, before, seconds = peak_rss_growth(add_the_rest)
print(json.dumps(dict(growth=growth, before=before, seconds=seconds)))
"""


def measure(images: int, masks: int) -> dict:
    return common.run_child(CHILD, images, masks)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.standard_args(p)
    p.add_argument("--images", default="16,64,256", help="image counts at 1024 masks")
    p.add_argument("--masks", default="256,1024,4096", help="mask counts at 64 images")
    args = p.parse_args(argv)
    settings = [(int(n), 1024) for n in args.images.split(",")]
    settings += [(64, int(m)) for m in args.masks.split(",") if (64, int(m)) not in settings]
    mib, rows = 2 ** 20, []
    for images, masks in settings:
        r = measure(images, masks)
        rows.append([images, masks, images * masks, r["growth"] / mib, r["before"] / mib, r["seconds"]])
        print(f"images={images} masks={masks}: growth {r['growth'] / mib:.1f} MiB (RSS before {r['before'] / mib:.0f} MiB), "
              f"{r['seconds']:.1f}s", flush=True)
    body = common.table(["images", "masks", "perturbed nets", "peak RSS growth MiB", "RSS before MiB", "seconds"], rows)
    notes = ("EfficientNet-Lite0 (random init) `head`, K = 1280, batches of 8 images, chunk 256 evaluations, 50 classes; "
             "growth = peak RSS while adding every batch after the first (sampled every 1 ms) − RSS before them.")
    common.report("class_fit_memory", body, notes, write=not args.no_write)


if __name__ == "__main__":
    main()
