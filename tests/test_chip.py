"""CHIP: planted truth, class-level fits, refinement, numerical safety."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chipjax as cj
from chipjax import chip
from chipjax.errors import InputError
from chipjax.tap import Tap

K, C, H = 12, 4, 6


def linear_tap(V):
    """Features are the input itself; tail = spatial mean then a linear layer ``V (K, C)``."""

    def head_fn(variables, x):
        return x

    def tail_fn(variables, a):
        return a.mean(axis=(1, 2)) @ variables["V"]

    return Tap(layer="features", head_fn=head_fn, tail_fn=tail_fn, variables={"V": jnp.asarray(V)})


def planted_problem(seed=0):
    rng = np.random.default_rng(seed)
    V = np.zeros((K, C), np.float32)
    support = [1, 4, 7]
    V[support, 2] = [3.0, -2.0, 1.0]
    V[[0, 9], 0] = [1.0, 1.0]
    A = rng.uniform(0.5, 1.5, (1, H, H, K)).astype(np.float32)
    return V, A, support


def test_planted_support_sign_and_order_recovered():
    V, A, support = planted_problem()
    tap = linear_tap(V)
    targets = jnp.array([2])
    W = chip.chip_weights(tap.tail_fn, tap.variables, jnp.asarray(A), targets, jax.random.PRNGKey(0),
                          num_masks=512, chunk=64, keep_prob=0.5, balanced=False, score="logit", lam_ratio=0.01,
                          nonneg=False)
    w = np.asarray(W[0])
    truth = A[0].mean(axis=(0, 1)) * V[:, 2]  # the exact linear effect of each channel on the target logit
    found = np.flatnonzero(np.abs(w) > 1e-3 * np.abs(w).max())
    assert sorted(found.tolist()) == support
    assert np.all(np.sign(w[support]) == np.sign(truth[support]))
    assert np.argsort(-np.abs(w[support])).tolist() == np.argsort(-np.abs(truth[support])).tolist()
    # with λ → 0 the fit is the exact linear effect (noise-free data), shrunk by λ only
    np.testing.assert_allclose(w[support], truth[support], rtol=0.05)


def test_image_level_maps_batch_with_own_targets_equals_one_by_one():
    V, A, _ = planted_problem()
    rng = np.random.default_rng(1)
    A2 = np.concatenate([A, rng.uniform(0.5, 1.5, A.shape).astype(np.float32)])
    tap = linear_tap(V)
    kw = dict(num_masks=128, chunk_size=64, score="logit", lam_ratio=0.01)
    both = chip.chip_maps(tap, jnp.asarray(A2[..., :3]) * 0 + 1, jnp.array([2, 0]), features=jnp.asarray(A2), **kw)
    first = chip.chip_maps(tap, jnp.ones((1, H, H, 3)), jnp.array([2]), features=jnp.asarray(A2[:1]), **kw)
    second = chip.chip_maps(tap, jnp.ones((1, H, H, 3)), jnp.array([0]), features=jnp.asarray(A2[1:]), **kw)
    np.testing.assert_allclose(np.asarray(both[0]), np.asarray(first[0]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(both[1]), np.asarray(second[0]), atol=1e-5)


def test_no_nan_for_constant_features_zero_scores_and_large_lambda():
    tap = linear_tap(np.zeros((K, C), np.float32))  # every score identical: all-zero signal
    A = jnp.ones((1, H, H, K))
    maps = chip.chip_maps(tap, jnp.ones((1, H, H, 3)), jnp.array([0]), features=A, num_masks=64, score="logit")
    assert np.isfinite(np.asarray(maps)).all() and float(jnp.abs(maps).max()) == 0.0
    V, A2, _ = planted_problem()
    maps = chip.chip_maps(linear_tap(V), jnp.ones((1, H, H, 3)), jnp.array([2]), features=jnp.asarray(A2),
                          num_masks=64, score="prob", lam_ratio=0.999)
    assert np.isfinite(np.asarray(maps)).all()


@pytest.mark.parametrize("bad", [dict(keep_prob=0.0), dict(keep_prob=1.0), dict(num_masks=0), dict(lam_ratio=-0.1),
                                 dict(score="nope")])
def test_bad_options_raise_input_error(bad):
    V, A, _ = planted_problem()
    with pytest.raises(InputError):
        chip.chip_maps(linear_tap(V), jnp.ones((1, H, H, 3)), jnp.array([2]), features=jnp.asarray(A), **bad)


def test_fuse_maps_geometric_mean_and_range():
    a = jnp.array([[[0.0, 0.5], [1.0, 1.0]]])
    b = jnp.array([[[1.0, 0.5], [0.25, 1.0]]])
    fused = chip.fuse_maps([a, b])
    assert fused.shape == (1, 2, 2)
    assert float(fused.min()) == 0.0 and float(fused.max()) == 1.0
    # by hand: a -> [0, .5, 1, 1], b -> [1, 1/3, 0, 1] after min-max; geometric mean, clipped at 1e-6; min-max again
    an = np.clip(np.array([0.0, 0.5, 1.0, 1.0]), 1e-6, 1)
    bn = np.clip(np.array([1.0, 1 / 3, 0.0, 1.0]), 1e-6, 1)
    g = np.sqrt(an * bn)
    expected = (g - g.min()) / (g.max() - g.min())
    np.testing.assert_allclose(np.asarray(fused).ravel(), expected, atol=1e-5)
    mean = chip.fuse_maps([a, b], fusion="mean")
    m = (np.array([0.0, 0.5, 1.0, 1.0]) + np.array([1.0, 1 / 3, 0.0, 1.0])) / 2
    np.testing.assert_allclose(np.asarray(mean).ravel(), (m - m.min()) / (m.max() - m.min()), atol=1e-5)
    with pytest.raises(InputError):
        chip.fuse_maps([a, b], fusion="bogus")


def test_class_level_fit_recovers_each_class_and_round_trips(tmp_path):
    V, A, support = planted_problem()

    class Toy:
        name = "toy"
        layers = ["features"]

        def tap(self, layer=None):
            return linear_tap(V)

    rng = np.random.default_rng(3)
    feats = [jnp.asarray(rng.uniform(0.5, 1.5, (2, H, H, K)).astype(np.float32)) for _ in range(3)]
    batches = [(f, np.array([2, 0])) for f in feats]
    model = chip.CHIP.fit(Toy(), None, batches, num_masks=256, chunk_size=128, score="logit", lam_ratio=0.01)
    W = np.asarray(model.weights)
    assert W.shape == (K, C)
    assert sorted(np.flatnonzero(np.abs(W[:, 2]) > 1e-3 * np.abs(W[:, 2]).max()).tolist()) == support
    assert sorted(np.flatnonzero(np.abs(W[:, 0]) > 1e-3 * np.abs(W[:, 0]).max()).tolist()) == [0, 9]
    model.save(tmp_path / "cm")
    back = chip.CHIP.load(tmp_path / "cm")
    np.testing.assert_array_equal(np.asarray(back.weights), W)
    assert back.layer == "features" and back.arch == "toy"


def test_user_flax_module_explained_by_layer_name():
    import flax.linen as nn

    class SmallCNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x))
            x = nn.relu(nn.Conv(16, (3, 3), strides=2, name="conv2")(x))
            return nn.Dense(5, name="fc")(x.mean(axis=(1, 2)))

    module = SmallCNN()
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
    variables = module.init(jax.random.PRNGKey(1), x)
    tap = cj.tap_module(module, "conv2", x, variables)
    np.testing.assert_allclose(np.asarray(tap.tail(tap.head(x))), np.asarray(module.apply(variables, x)), atol=1e-5)
    maps = cj.explain(tap, x, method="chip", num_masks=64)
    assert maps.shape == (2, 16, 16)
    assert np.isfinite(np.asarray(maps)).all() and float(maps.min()) >= 0 and float(maps.max()) <= 1
    with pytest.raises(cj.errors.LayerError, match="conv1"):
        cj.tap_module(module, "conv9", x, variables)
