"""chipjax's lasso (:func:`chipjax.solvers.lasso`, FISTA on all classes at once from ``G``, ``R``) against
scikit-learn's coordinate descent, at equal objective.

Problems: ``N`` Bernoulli(0.5) masks ``M (N, K)`` and scores ``Y = M V + noise`` with a sparse
planted ``V`` (5 % of the channels per class, noise giving R² ≈ 0.5), for K = 512, 1 280, 2 048 and
C classes (1 000 by default). ``--real`` adds K = 1 280 statistics of EfficientNet-Lite0's ``head``
(pretrained) perturbed on a real photo, all 1 000 class probabilities. λ per class is CHIP's rule,
``lam_ratio · λ_max,c``.

* **ours**: one call for all C classes, ``tol`` = CHIP's solver tolerance (relative duality gap
  1e-6), timed after compilation.
* **sklearn Lasso**: one fit per class on the centred masks with the precomputed Gram matrix
  (its fastest path for N ≫ K), ``tol`` as given; timed on ``--sk-classes`` classes and
  extrapolated linearly to C (stated in the table).
* **sklearn Lasso, multi-output**: one fit of all classes with one α (sklearn's multi-target
  Lasso needs a single α), against ours with the same scalar λ. ``MultiTaskLasso`` minimises a
  different, row-sparse (ℓ2,1) objective, so it has no equal-objective counterpart here.

Objectives are computed for both in float64 from G, R and the score variances:
``½ wᵀGw − Rᵀw + λ‖w‖₁ + ½ Var(y)`` (= ``1/(2N) ‖y − Mw‖² + λ‖w‖₁`` on centred data, sklearn's
objective). "excess" = (sklearn − ours) / Var(y), per class, mean and max: ≥ 0 means ours is at
least as good.

    python -m benchmarks.solver --quick
    python -m benchmarks.solver --real
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks import common


def planted_problem(num_channels: int, num_classes: int, num_masks: int, seed: int = 0):
    """Centred masks and scores ``(Mc (N, K) f64, Yc (N, C) f64)`` with a sparse planted linear truth."""
    rng = np.random.default_rng(seed)
    M = (rng.random((num_masks, num_channels)) < 0.5).astype(np.float64)
    V = np.zeros((num_channels, num_classes))
    support = max(1, int(0.05 * num_channels))
    for c in range(num_classes):
        idx = rng.choice(num_channels, support, replace=False)
        V[idx, c] = rng.normal(size=support)
    Y = M @ V
    Y += rng.normal(size=Y.shape) * Y.std(axis=0, keepdims=True).clip(1e-3)
    return M - M.mean(0), Y - Y.mean(0)


def real_problem(num_masks: int):
    """Centred masks/scores of EfficientNet-Lite0 ``head`` perturbed on scikit-image's chelsea (K = 1280)."""
    import jax
    import jax.numpy as jnp
    import skimage.data

    import chipjax as cj
    from chipjax import perturb

    model = cj.load_model("efficientnet_lite0")
    tap = model.tap("head")
    A = tap.head(model.preprocess(skimage.data.chelsea()))
    key = jax.random.key(0)
    masks = perturb.sample_masks(key, jnp.arange(num_masks), A.shape[-1])
    Y = jnp.concatenate([perturb.scores_from_logits(perturb.perturbed_logits(tap.tail_fn, tap.variables, A, m)[:, 0],
                                                    "prob") for m in jnp.split(masks, num_masks // 256)])
    M, Y = np.asarray(masks, np.float64), np.asarray(Y, np.float64)
    return M - M.mean(0), Y - Y.mean(0)


def objective(G, R, y_var, W, lam):
    """``(C,)`` ½ wᵀGw − Rᵀw + λ‖w‖₁ + ½ Var(y) per column, float64."""
    W = np.asarray(W, np.float64)
    return 0.5 * np.einsum("kc,kc->c", W, G @ W) - np.einsum("kc,kc->c", R, W) + lam * np.abs(W).sum(0) + 0.5 * y_var


def run_problem(label: str, Mc, Yc, *, lam_ratio: float, sk_classes: int, sk_tol: float, reps: int,
                multi_output: bool):
    import jax
    import jax.numpy as jnp
    from sklearn.linear_model import Lasso

    from chipjax import solvers
    from chipjax.chip import SOLVER_TOL

    N, K = Mc.shape
    C = Yc.shape[1]
    G = Mc.T @ Mc / N
    R = Mc.T @ Yc / N
    y_var = (Yc ** 2).mean(0)
    lam = lam_ratio * np.abs(R).max(0)  # CHIP's per-class rule
    G32, R32 = jnp.asarray(G, jnp.float32), jnp.asarray(R, jnp.float32)
    lam32, var32 = jnp.asarray(lam, jnp.float32), jnp.asarray(y_var, jnp.float32)

    def ours(lam_):
        return solvers.lasso_with_info(G32, R32, lam_, tol=SOLVER_TOL, y_var=var32)

    times = common.interleaved({"ours": lambda: ours(lam32)}, reps=reps, warmup=1)["ours"]
    W, info = ours(lam32)
    t_ours = common.median(times)
    f_ours = objective(G, R, y_var, W, lam)

    gram = Mc.T @ Mc
    classes = np.linspace(0, C - 1, min(sk_classes, C)).astype(int)
    start = time.perf_counter()
    f_sk = []
    for c in classes:
        est = Lasso(alpha=float(lam[c]), fit_intercept=False, precompute=gram, tol=sk_tol, max_iter=100_000)
        est.fit(Mc, Yc[:, c])
        f_sk.append(objective(G, R[:, [c]], y_var[[c]], est.coef_[:, None], lam[c])[0])
    t_sk = (time.perf_counter() - start) * C / len(classes)
    excess = (np.asarray(f_sk) - f_ours[classes]) / y_var[classes]
    rows = [dict(problem=label, K=K, C=C, N=N, method="chipjax lasso (all classes, one call)", seconds=t_ours,
                 extrapolated="", iters=int(info.iterations), excess_mean=float("nan"), excess_max=float("nan"),
                 ratio=1.0),
            dict(problem=label, K=K, C=C, N=N, method=f"sklearn Lasso per class (Gram, tol {sk_tol:g})", seconds=t_sk,
                 extrapolated=f"from {len(classes)} classes", iters="", excess_mean=float(excess.mean()),
                 excess_max=float(excess.max()), ratio=t_sk / t_ours)]
    if multi_output:
        alpha = float(np.median(lam))
        sub = classes
        lam_c = jnp.full((C,), alpha, jnp.float32)
        t_ours_c = common.median(common.interleaved({"o": lambda: ours(lam_c)}, reps=reps, warmup=1)["o"])
        W_c, _ = ours(lam_c)
        start = time.perf_counter()
        est = Lasso(alpha=alpha, fit_intercept=False, precompute=gram, tol=sk_tol, max_iter=100_000)
        est.fit(Mc, Yc[:, sub])
        t_multi = (time.perf_counter() - start) * C / len(sub)
        f_multi = objective(G, R[:, sub], y_var[sub], est.coef_.T, alpha)
        f_ours_c = objective(G, R, y_var, W_c, alpha)[sub]
        ex = (f_multi - f_ours_c) / y_var[sub]
        rows.append(dict(problem=label, K=K, C=C, N=N, method="chipjax lasso, one λ for all", seconds=t_ours_c,
                         extrapolated="", iters="", excess_mean=float("nan"), excess_max=float("nan"), ratio=1.0))
        rows.append(dict(problem=label, K=K, C=C, N=N, method=f"sklearn Lasso multi-output (one α, tol {sk_tol:g})",
                         seconds=t_multi, extrapolated=f"from {len(sub)} classes", iters="",
                         excess_mean=float(ex.mean()), excess_max=float(ex.max()), ratio=t_multi / t_ours_c))
    jax.clear_caches()
    for r in rows:
        print(f"{label} K={K}: {r['method']}: {r['seconds']:.2f}s (×{r['ratio']:.1f})", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.standard_args(p)
    p.add_argument("--channels", default=None, help="comma list of K (default 512,1280,2048; quick 512,1280)")
    p.add_argument("--classes", type=int, default=None, help="C (default 1000; quick 250)")
    p.add_argument("--masks", type=int, default=4096, help="N perturbations behind G and R")
    p.add_argument("--lam-ratio", type=float, default=0.05)
    p.add_argument("--sk-classes", type=int, default=None, help="classes sklearn fits (default 20; quick 8)")
    p.add_argument("--sk-tol", type=float, default=1e-6, help="sklearn's tol")
    p.add_argument("--real", action="store_true", help="also EfficientNet-Lite0 head statistics (K = 1280)")
    p.add_argument("--multi-output", action="store_true", help="also sklearn's multi-output Lasso (one α)")
    args = p.parse_args(argv)
    channels = [int(k) for k in (args.channels or ("512,1280" if args.quick else "512,1280,2048")).split(",")]
    C = args.classes or (250 if args.quick else 1000)
    sk_classes = args.sk_classes or (8 if args.quick else 20)
    reps = args.reps or (2 if args.quick else 3)
    rows = []
    for K in channels:
        Mc, Yc = planted_problem(K, C, args.masks)
        rows += run_problem("planted", Mc, Yc, lam_ratio=args.lam_ratio, sk_classes=sk_classes, sk_tol=args.sk_tol,
                            reps=reps, multi_output=args.multi_output)
    if args.real:
        Mc, Yc = real_problem(args.masks)
        rows += run_problem("EfficientNet-Lite0 head", Mc, Yc, lam_ratio=args.lam_ratio, sk_classes=sk_classes,
                            sk_tol=args.sk_tol, reps=reps, multi_output=args.multi_output)
    headers = ["problem", "K", "C", "N", "method", "seconds", "timed on", "FISTA iters", "excess obj. mean",
               "excess obj. max", "time / ours"]
    keys = ["problem", "K", "C", "N", "method", "seconds", "extrapolated", "iters", "excess_mean", "excess_max",
            "ratio"]
    body = common.table(headers, [[r[k] for k in keys] for r in rows])
    notes = (f"λ_c = {args.lam_ratio} · λ_max,c. Ours: float32, relative duality gap ≤ 1e-6 (CHIP's setting), "
             "median of interleaved repetitions after compilation. sklearn: float64 coordinate descent with the "
             "precomputed Gram, timed on a subset of classes and scaled linearly to C. 'excess obj.' = "
             "(sklearn objective − ours) / Var(y) per class: ≥ 0 means ours reached an objective at least as low.")
    common.report("solver", body, notes, write=not args.no_write)
    return rows


if __name__ == "__main__":
    main()
