"""Peak memory of a perturbation sweep against the mask count and the chunk size.

Each setting runs in a fresh subprocess: it loads the model, computes the feature maps,
compiles the sweep ahead of time, then runs it once while a thread samples the process's
resident memory every millisecond. Reported:

* **sweep peak**: peak RSS during the run minus the RSS just before it (the sweep's own working
  memory: tail activations of one chunk, masks, statistics);
* **process peak**: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the whole subprocess
  (includes imports, weights and compilation);
* **estimate**: what :func:`chipjax.perturb.tail_memory` predicts for that chunk
  (``fixed + chunk · (B · per_eval + per_mask)``), the figure ``memory_budget`` plans with.

At a fixed chunk the sweep peak must stay flat as the mask count grows (the statistics are
streamed; no per-mask array is kept).

    python -m benchmarks.memory --quick
"""
from __future__ import annotations

import argparse

from benchmarks import common

CHILD = r"""
import json, resource, sys
import jax, jax.numpy as jnp
import chipjax as cj
from chipjax import perturb
from benchmarks.common import peak_rss_growth

name, layer, batch, num_masks, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
model = cj.load_model(name, weights=None)
tap = model.tap(layer)
A = jax.block_until_ready(tap.head(jnp.ones((batch, model.input_size, model.input_size, 3), jnp.float32)))
key = jax.random.key(0)
classes = jnp.zeros((batch, 1), jnp.int32)
devices = tuple(jax.local_devices())
# the whole sweep in one program, mask Gram accumulated in the loop (gram=None): its full working memory
sweep = perturb._shared_stats_jit.lower(tap.tail_fn, tap.variables, A, key, classes, None, jnp.int32(0), num_masks=num_masks,
                                        chunk=chunk, keep_prob=0.5, design="iid", score="prob", compute_dtype=None,
                                        devices=devices, gram_mode=perturb.mask_gram_mode(devices[0].platform),
                                        K=A.shape[-1]).compile()
need = perturb.tail_memory(tap.tail_fn, tap.variables, A, num_classes=1)
growth, _, seconds = peak_rss_growth(lambda: jax.block_until_ready(sweep(tap.variables, A, key, classes, None, jnp.int32(0))))
estimate = need.fixed + chunk * (batch * need.per_eval + need.per_mask)
print(json.dumps(dict(sweep=growth, process=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      estimate=estimate, seconds=seconds)))
"""


def measure(name: str, layer: str, batch: int, num_masks: int, chunk: int) -> dict:
    return common.run_child(CHILD, name, layer, batch, num_masks, chunk)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.standard_args(p)
    p.add_argument("--case", default="efficientnet_lite0:blocks.15.expand", help="model:tap")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--masks", default=None, help="comma list of mask counts at the fixed chunk "
                                                 "(default 1024,4096,16384; quick 1024,4096,16384 on a light tap)")
    p.add_argument("--chunk", type=int, default=64, help="the fixed chunk for the mask-count sweep")
    p.add_argument("--chunks", default="16,64,256", help="comma list of chunks at the smallest mask count")
    args = p.parse_args(argv)
    name, layer = args.case.split(":", 1)
    if args.quick and args.case == p.get_default("case"):
        name, layer = "efficientnet_lite0", "head"
    masks = [int(n) for n in (args.masks or "1024,4096,16384").split(",")]
    rows = []
    settings = [(n, args.chunk) for n in masks] + [(masks[0], c) for c in map(int, args.chunks.split(","))
                                                   if c != args.chunk]
    mib = 2 ** 20
    for num_masks, chunk in settings:
        r = measure(name, layer, args.batch, num_masks, chunk)
        rows.append([name, layer, args.batch, num_masks, chunk, r["sweep"] / mib, r["estimate"] / mib,
                     r["process"] / mib, r["seconds"]])
        print(f"N={num_masks} chunk={chunk}: sweep {r['sweep'] / mib:.1f} MiB, estimate {r['estimate'] / mib:.1f} MiB, "
              f"process {r['process'] / mib:.0f} MiB, {r['seconds']:.1f}s", flush=True)
    headers = ["model", "tap", "B", "masks N", "chunk", "sweep peak MiB", "estimate MiB", "process peak MiB",
               "seconds"]
    body = common.table(headers, rows)
    notes = ("sweep peak = peak RSS during the (precompiled) sweep − RSS before it, sampled every 1 ms; process "
             "peak = ru_maxrss of the subprocess (imports, weights, compilation included); estimate = "
             "chipjax.perturb.tail_memory's fixed + chunk · (B · per_eval + per_mask), what memory_budget plans with.")
    common.report("memory", body, notes, write=not args.no_write)
    return rows


if __name__ == "__main__":
    main()
