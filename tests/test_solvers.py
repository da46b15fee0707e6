"""chipjax.solvers: FISTA lasso on (G, R) against scikit-learn's coordinate descent on the raw data."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_
from sklearn.linear_model import Lasso

from chipjax import solvers, stats
from chipjax.errors import InputError


def _data(seed, n, k, c, kind="bernoulli"):
    """Masks (Bernoulli 0/1) or Gaussian design X (n, k), scores Y (n, c) from a sparse signed model."""
    rng = np.random.default_rng(seed)
    X = (rng.random((n, k)) < 0.5).astype(np.float32) if kind == "bernoulli" else rng.normal(size=(n, k)).astype(np.float32)
    B = rng.normal(size=(k, c)) * (rng.random((k, c)) < 0.3)
    Y = (X @ B + 0.5 * rng.normal(size=(n, c))).astype(np.float32)
    return X, Y


def _objective(X, y, w, lam):
    """sklearn's objective with the intercept profiled out, float64: 1/(2N)‖yc − Xc w‖² + λ‖w‖₁."""
    X, y, w = (np.asarray(a, np.float64) for a in (X, y, w))
    Xc, yc = X - X.mean(0), y - y.mean()
    return 0.5 * np.mean((yc - Xc @ w) ** 2) + lam * np.abs(w).sum()


def _sklearn(X, y, lam, nonneg):
    model = Lasso(alpha=float(lam), tol=1e-10, max_iter=200_000, positive=nonneg)
    return model.fit(np.asarray(X, np.float64), np.asarray(y, np.float64)).coef_


def _problem(X, Y):
    s = stats.from_batch(X, Y)
    return stats.gram(s), stats.cross(s), stats.score_var(s)


@pytest.mark.parametrize(
    "n, k, c, kind, nonneg, use_var",
    [
        (200, 30, 3, "bernoulli", False, False),
        (200, 30, 3, "gaussian", False, True),
        (100, 60, 2, "bernoulli", False, True),
        (200, 30, 3, "bernoulli", True, True),
        (300, 40, 3, "gaussian", True, False),
    ],
)
def test_matches_sklearn(n, k, c, kind, nonneg, use_var):
    X, Y = _data(n + k, n, k, c, kind)
    G, R, y_var = _problem(X, Y)
    lam = 0.1 * np.asarray(solvers.lambda_max(R, nonneg))
    W, info = solvers.lasso_with_info(G, R, lam, nonneg=nonneg, y_var=y_var if use_var else None)
    assert W.dtype == jnp.float32 and W.shape == (k, c)
    assert np.all(info.converged | info.stalled) and int(info.iterations) < 1000
    if nonneg:
        assert np.all(np.asarray(W) >= 0)
    for j in range(c):
        ref = _sklearn(X, Y[:, j], lam[j], nonneg)
        ours, theirs = _objective(X, Y[:, j], W[:, j], lam[j]), _objective(X, Y[:, j], ref, lam[j])
        assert abs(ours - theirs) <= 1e-6 * theirs
        np.testing.assert_allclose(W[:, j], ref, atol=2e-5 * np.abs(ref).max())


def test_scalar_lam_matches_sklearn_multi_output():
    X, Y = _data(1, 150, 25, 4, "gaussian")
    G, R, _ = _problem(X, Y)
    alpha = 0.05
    W = solvers.lasso(G, R, alpha)
    ref = Lasso(alpha=alpha, tol=1e-10, max_iter=200_000).fit(X.astype(np.float64), Y.astype(np.float64)).coef_.T
    np.testing.assert_allclose(W, ref, atol=2e-5 * np.abs(ref).max())


# Most tests below share one shape (K, C) = (16, 3), so they share one compiled solver.
K, C = 16, 3


def test_per_class_lam_matches_separate_fits():
    X, Y = _data(2, 200, K, C)
    G, R, _ = _problem(X, Y)
    lam = np.array([0.02, 0.1, 0.3]) * np.asarray(solvers.lambda_max(R))
    W = solvers.lasso(G, R, lam)
    for j in range(3):
        ref = _sklearn(X, Y[:, j], lam[j], False)
        np.testing.assert_allclose(W[:, j], ref, atol=2e-5 * max(np.abs(ref).max(), 1e-3))
    assert np.count_nonzero(W[:, 2]) < np.count_nonzero(W[:, 0])


def test_float64_with_x64_reaches_sklearn_precision():
    with jax.enable_x64(True):
        X, Y = _data(3, 120, 15, 2, "gaussian")
        s = stats.from_batch(X.astype(np.float64), Y.astype(np.float64))
        G, R = stats.gram(s), stats.cross(s)
        lam = 0.1 * np.asarray(solvers.lambda_max(R))
        W = solvers.lasso(G, R, lam, tol=1e-12, y_var=stats.score_var(s))
        assert W.dtype == jnp.float64
        for j in range(2):
            ref = _sklearn(X, Y[:, j], lam[j], False)
            np.testing.assert_allclose(W[:, j], ref, atol=1e-8 * np.abs(ref).max())


@settings(max_examples=20, deadline=None)
@given(seed=st_.integers(0, 10_000), ratio=st_.floats(0.01, 0.95), nonneg=st_.booleans())
def test_kkt_conditions_hold(seed, ratio, nonneg):
    # A relative gap <= tol certifies the objective to tol; the KKT residuals are O(sqrt(tol)):
    # the stopping rule keeps the dual infeasibility max|g|/λ - 1 <= sqrt(tol).
    tol = 1e-7
    X, Y = _data(seed, 80, K, C)
    G, R, _ = _problem(X, Y)
    lmax = np.asarray(solvers.lambda_max(R, nonneg))
    lam = ratio * lmax
    W, info = solvers.lasso_with_info(G, R, lam, nonneg=nonneg, tol=tol)
    W, G64, R64 = (np.asarray(a, np.float64) for a in (W, G, R))
    g = R64 - G64 @ W  # minus the gradient of the smooth part
    zero = W == 0
    rounding = 1e-6 * lmax
    if nonneg:
        assert np.all(W >= 0)
    g_zero = np.where(zero, g if nonneg else np.abs(g), -np.inf)
    assert np.all(g_zero <= lam * (1 + 2 * np.sqrt(tol)) + rounding)
    assert np.all(np.where(zero, 0, np.abs(g - lam * np.sign(W))) <= 10 * np.sqrt(tol) * lmax)
    objective = 0.5 * np.einsum("kc,kl,lc->c", W, G64, W) - np.einsum("kc,kc->c", R64, W) + lam * np.abs(W).sum(0)
    assert np.all(objective <= 1e-7 * lmax * np.abs(W).sum(0))  # never above the zero solution's 0
    assert np.all(np.asarray(info.converged | info.stalled))


@pytest.mark.parametrize("nonneg", [False, True])
def test_lam_at_or_above_lambda_max_gives_exact_zeros(nonneg):
    X, Y = _data(4, 100, K, C)
    G, R, _ = _problem(X, Y)
    lmax = solvers.lambda_max(R, nonneg)
    for lam in (lmax, 2 * lmax):
        W, info = solvers.lasso_with_info(G, R, lam, nonneg=nonneg, W0=jnp.ones_like(R))
        assert np.all(np.asarray(W) == 0) and int(info.iterations) == 0
    W = solvers.lasso(G, R, 0.999 * lmax, nonneg=nonneg)
    assert np.any(np.asarray(W) != 0)


def test_degenerate_inputs_never_nan():
    rng = np.random.default_rng(5)
    constant = stats.from_batch(np.ones((50, K)), rng.normal(size=(50, C)))  # G = 0, R = 0
    zero_scores = stats.from_batch(rng.random((50, K)) < 0.5, np.zeros((50, C)))  # R = 0, Var(y) = 0
    for s in (constant, zero_scores, stats.empty(K, C)):
        for y_var in (None, stats.score_var(s)):
            W = solvers.lasso(stats.gram(s), stats.cross(s), 0.0, y_var=y_var)
            assert np.all(np.asarray(W) == 0)
        assert np.all(np.asarray(solvers.chip_weights(s, 0.1)) == 0)


def test_constant_channel_gets_zero_weight_and_leaves_the_rest():
    X, Y = _data(6, 150, K - 1, C)
    X_const = np.concatenate([X, np.ones((150, 1), np.float32)], axis=1)
    G, R, _ = _problem(X, Y)
    Gc, Rc, _ = _problem(X_const, Y)
    lam = 0.1 * solvers.lambda_max(R)
    W, Wc = solvers.lasso(G, R, lam), solvers.lasso(Gc, Rc, lam)
    assert np.all(np.asarray(Wc[-1]) == 0)
    np.testing.assert_allclose(Wc[:-1], W, atol=1e-5 * float(jnp.abs(W).max()))


def test_step_safeguard_recovers_from_a_too_small_lipschitz_constant():
    X, Y = _data(7, 200, K, C, "gaussian")
    G, R, _ = _problem(X, Y)
    lam = 0.05 * solvers.lambda_max(R)
    L_true = np.linalg.eigvalsh(np.asarray(G, np.float64))[-1]
    W_ref = solvers.lasso(G, R, lam)
    W, info = solvers._fista(G, R, lam, jnp.zeros_like(R), None, jnp.float32(0.05 * L_true), 1e-7, 5000, False)
    assert float(info.lipschitz) > 0.5 * L_true  # raised from 0.05 L into ISTA's stable range
    np.testing.assert_allclose(W, W_ref, atol=1e-5 * float(jnp.abs(W_ref).max()))


def test_top_eigenvalue_matches_numpy():
    X, _ = _data(8, 300, 40, 1)
    G = stats.gram(stats.from_batch(X, np.zeros((300, 1))))
    want = np.linalg.eigvalsh(np.asarray(G, np.float64))[-1]
    got = float(solvers.top_eigenvalue(G))
    assert 0.98 * want <= got <= want * (1 + 1e-5)


def test_lasso_path_matches_separate_solves():
    X, Y = _data(9, 200, K, C)
    G, R, y_var = _problem(X, Y)
    ratios = np.array([1.0, 0.5, 0.2, 0.05])
    path = solvers.lasso_path(G, R, ratios, y_var=y_var)
    assert path.shape == (4, K, C)
    assert np.all(np.asarray(path[0]) == 0)
    lmax = solvers.lambda_max(R)
    for p, ratio in enumerate(ratios):
        W = solvers.lasso(G, R, ratio * lmax, y_var=y_var)
        np.testing.assert_allclose(path[p], W, atol=1e-5 * max(float(jnp.abs(W).max()), 1e-3))
    nnz = [np.count_nonzero(path[p]) for p in range(4)]
    assert nnz == sorted(nnz)


def test_warm_start_at_the_solution_stops_at_once():
    X, Y = _data(10, 200, K, C)
    G, R, _ = _problem(X, Y)
    lam = 0.1 * solvers.lambda_max(R)
    W = solvers.lasso(G, R, lam)
    W2, info = solvers.lasso_with_info(G, R, lam, W0=W, tol=1e-5)
    assert int(info.iterations) <= 1
    np.testing.assert_allclose(W2, W, atol=1e-6)


def test_chip_weights_uses_ratio_of_lambda_max_per_image():
    rng = np.random.default_rng(11)
    masks = rng.random((2, 120, K)) < 0.5
    scores = (masks[..., :4] @ rng.normal(size=(4, C)) + 0.3 * rng.normal(size=(2, 120, C))).astype(np.float32)
    batched = stats.from_batch(masks, scores)
    W = solvers.chip_weights(batched, 0.1)
    assert W.shape == (2, K, C)
    for b in range(2):
        one = stats.from_batch(masks[b], scores[b])
        G, R = stats.gram(one), stats.cross(one)
        want = solvers.lasso(G, R, 0.1 * solvers.lambda_max(R), y_var=stats.score_var(one))
        np.testing.assert_allclose(W[b], want, atol=1e-5 * float(jnp.abs(want).max()))
        np.testing.assert_allclose(solvers.chip_weights(one, 0.1), want, atol=1e-6)


def test_lasso_under_jit_and_vmap():
    X, Y = _data(12, 100, K, C)
    G, R, _ = _problem(X, Y)
    want = solvers.lasso(G, R, 0.05)
    np.testing.assert_allclose(jax.jit(lambda G, R, lam: solvers.lasso(G, R, lam))(G, R, 0.05), want, atol=1e-6)
    both = jax.vmap(lambda lam: solvers.lasso(G, R, lam))(jnp.array([0.05, 0.1]))
    np.testing.assert_allclose(both[0], want, atol=1e-6)


def test_bad_arguments_raise_input_error():
    G, R = jnp.eye(4), jnp.ones((4, 2))
    with pytest.raises(InputError, match=">= 0"):
        solvers.lasso(G, R, -0.1)
    with pytest.raises(InputError, match=">= 0"):
        solvers.lasso(G, R, np.array([0.1, -1.0]))
    with pytest.raises(InputError, match=r"shape \(2,\)"):
        solvers.lasso(G, R, np.array([0.1, 0.1, 0.1]))
    with pytest.raises(InputError, match="square"):
        solvers.lasso(jnp.ones((4, 3)), R, 0.1)
    with pytest.raises(InputError, match="R must have shape"):
        solvers.lasso(G, jnp.ones((3, 2)), 0.1)
    with pytest.raises(InputError, match="W0"):
        solvers.lasso(G, R, 0.1, W0=jnp.ones((4, 3)))
    with pytest.raises(InputError, match="y_var"):
        solvers.lasso(G, R, 0.1, y_var=jnp.ones(3))
    with pytest.raises(InputError, match="ratios"):
        solvers.lasso_path(G, R, [-0.5])
    with pytest.raises(InputError, match="ratios"):
        solvers.chip_weights(stats.empty(4, 2), np.ones(3))
