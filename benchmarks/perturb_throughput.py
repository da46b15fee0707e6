"""Perturbed-tail throughput of CHIP against the plain batched tail forward (the practical ceiling).

For each (model, tap) the same number of tail evaluations, in the same chunks, is run these ways,
alternately (see :mod:`benchmarks.common`):

* **ours**: :func:`chipjax.perturb.perturbation_stats` — sample ``N`` masks, run the tail on
  ``A ⊙ m`` for every image and mask, stream the CHIP statistics (image-level CHIP: each image's
  top class, C' = 1; ``--classes all`` streams all 1 000 classes as a class-level fit does) —
  called with a concrete key, so the mask Gram comes from the per-stream cache;
* **in-jit**: the same inside ``jax.jit`` with a traced key (as a user's jitted call does):
  the mask Gram is accumulated in the loop on every call;
* **CHIP**: :func:`chipjax.chip.image_weights` — the statistics *and* the batched lasso, as
  ``cj.explain`` runs them (Gram and Lipschitz constant from the per-stream cache);
* **Ablation-CAM**: :func:`chipjax.cams.ablation_weights` on the engine (K ablated channels per
  image, one evaluation each), compared with the plain tail at the same evaluation count;
* **plain**: the jitted tail on ``chunk · B`` ready-made inputs, called ``N / chunk`` times.

``ratio = plain time / ours time`` (1.0 = the perturbation costs nothing on top of the tail).
The arithmetic ceiling is XLA's FLOP count of one tail evaluation
(``jit(tail).lower(...).compile().cost_analysis()``) against this machine's measured matmul rate
at XLA's default precision (as the tail runs), float32 or bf16. ``--baseline REV`` also times
``chipjax/perturb.py`` as it was at git revision ``REV`` (e.g. the engine before a change) on the same
cases, imported beside the current package (its relative imports resolve to the current modules, so
``REV`` must share today's ``stats`` API).

    python -m benchmarks.perturb_throughput --quick
    python -m benchmarks.perturb_throughput --batch 1,8 --dtype both
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import pathlib
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp

from benchmarks import common

#: (model, tap, masks quick, masks full, chunk quick, chunk full)
CASES = {
    "resnet50:layer3": (64, 512, 32, 64),
    "resnet50:layer4": (512, 4096, 128, 256),
    "efficientnet_lite0:head": (512, 4096, 128, 256),
    "efficientnet_lite0:blocks.15.expand": (256, 2048, 64, 128),
    "vgg16:features.29": (128, 1024, 32, 64),
}
DEFAULT_CASES = "resnet50:layer3,resnet50:layer4,efficientnet_lite0:head,efficientnet_lite0:blocks.15.expand"


def load_baseline(rev: str):
    """Import ``chipjax/perturb.py`` of git revision ``rev`` as a module of the chipjax package."""
    root = pathlib.Path(__file__).resolve().parent.parent
    try:
        source = subprocess.run(["git", "show", f"{rev}:chipjax/perturb.py"], cwd=root, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"--baseline {rev}: cannot read chipjax/perturb.py at that git revision ({e})")
    path = pathlib.Path(tempfile.mkdtemp()) / "perturb_baseline.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("chipjax._perturb_baseline", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "chipjax"
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_case(name: str, layer: str, *, batch: int, num_masks: int, chunk: int, dtype: str, classes: str,
             reps: int, rates: dict, baseline=None, in_jit: bool = True, ablation: bool = True) -> dict:
    """Time ours / plain (/ baseline) on one tap; returns one result row as a dict."""
    import chipjax as cj
    from chipjax import perturb

    model = cj.load_model(name, weights=None)
    tap = model.tap(layer)
    x = jax.random.normal(jax.random.key(0), (batch, model.input_size, model.input_size, 3), jnp.float32)
    A = jax.block_until_ready(tap.head(x))
    key = jax.random.key(1)
    compute = None if dtype == "float32" else jnp.dtype(dtype)
    top = jnp.argmax(tap.tail(A), axis=-1)[:, None].astype(jnp.int32) if classes == "one" else None

    def ours():
        return perturb.perturbation_stats(tap.tail_fn, tap.variables, A, key, num_masks=num_masks, chunk=chunk,
                                          classes=top, compute_dtype=compute)

    @jax.jit
    def ours_in_jit(variables, A, key, top):  # as chip.chip_weights calls it: traced key, Gram in the loop
        return perturb.perturbation_stats(tap.tail_fn, variables, A, key, num_masks=num_masks, chunk=chunk,
                                          classes=top, compute_dtype=compute)

    variables = perturb.cast_floating(tap.variables, compute)
    inputs = jax.random.normal(jax.random.key(2), (chunk * batch,) + A.shape[1:], jnp.float32).astype(
        compute or jnp.float32)
    tail = jax.jit(tap.tail_fn)
    calls = math.ceil(num_masks / chunk)

    def plain():
        return [tail(variables, inputs) for _ in range(calls)]

    from chipjax import cams, chip

    targets = jnp.argmax(tap.tail(A), axis=-1).astype(jnp.int32)
    K = A.shape[-1]

    def chip_full():
        return chip.image_weights(tap, A, targets, key, num_masks=num_masks, chunk=chunk)[0]

    def ablation_cam():
        return cams.ablation_weights(tap.tail_fn, tap.variables, A, targets, chunk=chunk)

    cases = {"ours": ours, "plain": plain}
    if dtype == "float32":
        cases.update(chip=chip_full, **({"ablation": ablation_cam} if ablation else {}))
    if in_jit:
        cases["ours_in_jit"] = lambda: ours_in_jit(tap.variables, A, key, top)
    if baseline is not None and dtype == "float32":
        cases["before"] = lambda: baseline.perturbation_stats(
            tap.tail_fn, tap.variables, A, key, num_masks=num_masks, chunk=chunk, keep_prob=0.5, design="iid",
            score="prob", classes=top)
    times = common.interleaved(cases, reps=reps, warmup=1)
    flops_per_eval = common.cost_flops(tap.tail_fn, variables, inputs) / (chunk * batch)
    evals = num_masks * batch
    t_ours, t_plain = common.median(times["ours"]), common.median(times["plain"]) * num_masks / (calls * chunk)
    row = dict(model=name, layer=layer, dtype=dtype, B=batch, N=num_masks, chunk=chunk,
               ours=evals / t_ours, plain=evals / t_plain, images=batch / t_ours,
               ratio=common.median_ratio(times["plain"], times["ours"]) * num_masks / (calls * chunk),
               gflop=flops_per_eval / 1e9, achieved=flops_per_eval * evals / t_ours / 1e9,
               arith=rates[dtype] / flops_per_eval)
    row["of_arith"] = row["ours"] / row["arith"]
    if in_jit:
        row["in_jit"] = evals / common.median(times["ours_in_jit"])
        row["in_jit_ratio"] = common.median_ratio(times["plain"], times["ours_in_jit"]) * num_masks / (calls * chunk)
    if "chip" in times:
        row["chip_ratio"] = common.median_ratio(times["plain"], times["chip"]) * num_masks / (calls * chunk)
    if "ablation" in times:
        row["ablation_ratio"] = common.median_ratio(times["plain"], times["ablation"]) * K / (calls * chunk)
    if "before" in times:
        row["before"] = evals / common.median(times["before"])
        row["speedup"] = common.median_ratio(times["before"], times["ours"])
    return row


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.standard_args(p)
    p.add_argument("--cases", default=DEFAULT_CASES, help=f"model:tap list (known: {', '.join(CASES)})")
    p.add_argument("--batch", default="1", help="images per call, a comma list (e.g. 1,8)")
    p.add_argument("--masks", type=int, default=None, help="masks per image (default: per case, see CASES)")
    p.add_argument("--chunk", type=int, default=None, help="masks per step (default: per case)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "both"], default="float32")
    p.add_argument("--classes", choices=["one", "all"], default="one",
                   help="scores streamed per image: its top class (image-level CHIP) or all (class-level)")
    p.add_argument("--baseline", default=None, help="a git revision whose chipjax/perturb.py is timed as 'before'")
    p.add_argument("--matmul-size", type=int, default=None, help="n of the n×n matmul measuring the peak rate")
    p.add_argument("--skip-in-jit", action="store_true", help="do not time the in-jit (traced key) variant")
    p.add_argument("--skip-ablation", action="store_true",
                   help="do not time Ablation-CAM (K evaluations per image: long at large B)")
    p.add_argument("--tflops", action="store_true", help="report FLOP rates in TFLOP/s (accelerators)")
    p.add_argument("--label", default="", help="appended to the RESULTS.md section title (e.g. the machine)")
    args = p.parse_args(argv)
    reps = args.reps or (3 if args.quick else 5)
    dtypes = ["float32", "bfloat16"] if args.dtype == "both" else [args.dtype]
    baseline = load_baseline(args.baseline) if args.baseline else None
    size = args.matmul_size or (2048 if args.quick else 4096)
    rates = {dt: common.matmul_rate(dt, n=size) for dt in dtypes}
    rows = []
    for case in args.cases.split(","):
        name, layer = case.split(":", 1)
        nq, nf, cq, cf = CASES.get(case, (256, 2048, 64, 128))
        for batch in (int(b) for b in args.batch.split(",")):
            num_masks = args.masks or (nq if args.quick else nf)
            chunk = args.chunk or max(1, (cq if args.quick else cf) // batch)
            for dt in dtypes:
                row = run_case(name, layer, batch=batch, num_masks=num_masks, chunk=min(chunk, num_masks), dtype=dt,
                               classes=args.classes, reps=reps, rates=rates, baseline=baseline,
                               in_jit=not args.skip_in_jit, ablation=not args.skip_ablation)
                rows.append(row)
                print(f"{case} B={batch} {dt}: ours {row['ours']:.0f} evals/s, plain {row['plain']:.0f}, "
                      f"ratio {row['ratio']:.2f}, in jit {row.get('in_jit_ratio', float('nan')):.2f}" + (f", before {row['before']:.0f} (×{row['speedup']:.2f})"
                                                     if "before" in row else ""), flush=True)
    unit = "TFLOP/s" if args.tflops else "GFLOP/s"
    if args.tflops:
        for r in rows:
            r["achieved"] /= 1e3
    headers = ["model", "tap", "dtype", "B", "N", "chunk", "ours evals/s", "plain evals/s", "ours/plain",
               "in-jit evals/s", "in-jit/plain", "CHIP (stats + lasso)/plain", "Ablation-CAM/plain", "images/s", "GFLOP/eval", f"ours {unit}", "arith. ceiling evals/s",
               "ours/arith."]
    keys = ["model", "layer", "dtype", "B", "N", "chunk", "ours", "plain", "ratio", "in_jit", "in_jit_ratio",
            "chip_ratio", "ablation_ratio", "images",
            "gflop", "achieved", "arith", "of_arith"]
    if baseline is not None:
        headers += ["before evals/s", "ours/before"]
        keys += ["before", "speedup"]
    body = common.table(headers, [[r.get(k, float("nan")) for k in keys] for r in rows])
    scale, unit = (1e12, "TFLOP/s") if args.tflops else (1e9, "GFLOP/s")
    rate_text = ", ".join(f"{dt} {r / scale:.3g} {unit}" for dt, r in rates.items())
    notes = (f"Measured matmul peak ({size}×{size}, XLA default precision, as the tail runs): {rate_text}; "
             "ours/arith. = achieved FLOP rate / that peak. images/s = images explained per second "
             "(N masks each). 'ours' calls perturbation_stats with a concrete key (the mask Gram comes from its "
             "per-stream cache, as in a sweep over many images with one seed); 'in-jit' calls it inside jit with a "
             "traced key, as a user's own jit does (Gram accumulated in the loop, every call). 'CHIP (stats + lasso)/plain': "
             "chip.image_weights (sweep, statistics and the one multi-output lasso of the B images) against the plain "
             "tail at the same evaluation count; 'Ablation-CAM/plain': cams.ablation_weights (K evaluations per image) "
             "against the plain tail at K evaluations. Scores streamed per image: "
             f"{'the top class (image-level CHIP)' if args.classes == 'one' else 'all 1000 classes'}. "
             f"Medians of {reps} interleaved repetitions after one warm-up; ours/plain is the median of "
             "per-repetition ratios.")
    common.report(" ".join(["perturb_throughput", args.label]).strip(), body, notes, write=not args.no_write)
    return rows


if __name__ == "__main__":
    main()
