"""User taps (chipjax.tap): exact across skip connections, for flax.linen, flax.nnx and Equinox.

The references are hand-written splits of the same networks: the user's own layers called in
order, with the skip input computed once from the real image (no tap machinery involved).
"""
from __future__ import annotations

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import chipjax as cj
from chipjax import cams, perturb
from chipjax.errors import InputError, LayerError
from chipjax.heatmaps import heatmap
from chipjax.tap import Tap

S, K, C = 16, 8, 5
X = jnp.asarray(np.random.default_rng(0).standard_normal((2, S, S, 3)), jnp.float32)
MASKS = perturb.sample_masks(jax.random.PRNGKey(3), jnp.arange(16), K)


# --- three residual networks: stem -> [conv1 -> relu -> conv2] + skip -> relu -> GAP -> fc -------------------


class LinenReLU(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(x)


class LinenRes(nn.Module):
    @nn.compact
    def __call__(self, x):
        s = nn.relu(nn.BatchNorm(use_running_average=True, name="bn")(nn.Conv(K, (3, 3), name="stem")(x)))
        h = nn.Conv(K, (3, 3), name="conv2")(nn.relu(nn.Conv(K, (3, 3), name="conv1")(s)))
        return nn.Dense(C, name="fc")(LinenReLU(name="relu")(s + h).mean(axis=(1, 2)))


class NnxReLU(nnx.Module):
    def __call__(self, x):
        return nnx.relu(x)


class NnxRes(nnx.Module):
    def __init__(self, rngs):
        self.stem = nnx.Conv(3, K, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(K, rngs=rngs)
        self.conv1 = nnx.Conv(K, K, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(K, K, (3, 3), rngs=rngs)
        self.relu = NnxReLU()
        self.fc = nnx.Linear(K, C, rngs=rngs)

    def __call__(self, x):
        s = nnx.relu(self.bn(self.stem(x)))
        h = self.conv2(nnx.relu(self.conv1(s)))
        return self.fc(self.relu(s + h).mean(axis=(1, 2)))


class EqxRes(eqx.Module):
    stem: eqx.nn.Conv2d
    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    relu: eqx.nn.Lambda
    fc: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 4)
        self.stem = eqx.nn.Conv2d(3, K, 3, padding=1, key=k[0])
        self.conv1 = eqx.nn.Conv2d(K, K, 3, padding=1, key=k[1])
        self.conv2 = eqx.nn.Conv2d(K, K, 3, padding=1, key=k[2])
        self.relu = eqx.nn.Lambda(jax.nn.relu)
        self.fc = eqx.nn.Linear(K, C, key=k[3])

    def __call__(self, x):  # one image (3, S, S) -> (C,)
        s = jax.nn.relu(self.stem(x))
        h = self.conv2(jax.nn.relu(self.conv1(s)))
        return self.fc(jnp.mean(self.relu(s + h), axis=(1, 2)))


def linen_net():
    module = LinenRes()
    variables = module.init(jax.random.PRNGKey(1), X)
    rng = np.random.default_rng(2)  # running statistics far from (0, 1), so eval mode matters
    variables = {"params": variables["params"],
                 "batch_stats": {"bn": {"mean": jnp.asarray(rng.normal(size=K), jnp.float32),
                                        "var": jnp.asarray(rng.uniform(0.5, 2, size=K), jnp.float32)}}}
    return module, variables


def nnx_net():
    net = NnxRes(nnx.Rngs(0))
    rng = np.random.default_rng(2)
    net.bn.mean.value = jnp.asarray(rng.normal(size=K), jnp.float32)
    net.bn.var.value = jnp.asarray(rng.uniform(0.5, 2, size=K), jnp.float32)
    return net


def hand_split(system):
    """``(net, variables, head (x -> A), tail (a -> logits, skip from the real X), full (x -> logits))``."""
    if system == "linen":
        module, variables = linen_net()
        p, bs = variables["params"], variables["batch_stats"]
        conv = lambda name, z: nn.Conv(K, (3, 3)).apply({"params": p[name]}, z)
        stem = lambda x: nn.relu(nn.BatchNorm(use_running_average=True).apply(
            {"params": p["bn"], "batch_stats": bs["bn"]}, conv("stem", x)))
        skip = stem(X)
        head = lambda x: conv("conv1", stem(x))
        tail = lambda a: nn.Dense(C).apply({"params": p["fc"]},
                                           nn.relu(skip[: a.shape[0]] + conv("conv2", nn.relu(a))).mean(axis=(1, 2)))
        return module, variables, head, tail, lambda x: module.apply(variables, x)
    if system == "nnx":
        net = nnx_net()
        ref = nnx.clone(net)
        ref.eval()
        stem = lambda x: nnx.relu(ref.bn(ref.stem(x)))
        skip = stem(X)
        head = lambda x: ref.conv1(stem(x))
        tail = lambda a: ref.fc(nnx.relu(skip[: a.shape[0]] + ref.conv2(nnx.relu(a))).mean(axis=(1, 2)))
        return net, None, head, tail, ref
    net = EqxRes(jax.random.PRNGKey(0))
    chw = lambda x: jnp.moveaxis(x, -1, 1)
    hwc = lambda a: jnp.moveaxis(a, 1, -1)
    stem = jax.vmap(lambda x: jax.nn.relu(net.stem(x)))
    skip = stem(chw(X))
    head = lambda x: hwc(jax.vmap(net.conv1)(stem(chw(x))))
    tail = lambda a: jax.vmap(lambda s, h: net.fc(jnp.mean(jax.nn.relu(s + net.conv2(jax.nn.relu(h))), axis=(1, 2))))(
        skip[: a.shape[0]], chw(a))
    return net, None, head, tail, lambda x: jax.vmap(net)(chw(x))


SYSTEMS = ("linen", "nnx", "equinox")


@pytest.fixture(scope="module", params=SYSTEMS)
def split(request):
    net, variables, head, tail, full = hand_split(request.param)
    tap = cj.tap_module(net, "conv1", X, variables)
    return request.param, net, variables, head, tail, full, tap


# --- exactness -------------------------------------------------------------------------------


def test_tap_inside_a_residual_block_matches_a_hand_written_split(split):
    system, _, _, head, tail, full, tap = split
    assert tap.system == system and tap.layer == "conv1" and tap.tail_reads_images
    A = tap.head(X)
    np.testing.assert_allclose(np.asarray(A), np.asarray(head(X)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(tap.tail(A)), np.asarray(full(X)), atol=1e-5)
    got = jax.jit(lambda a, m: perturb.perturbed_logits(tap.tail_fn, tap.variables, a, m))(A, MASKS)
    want = jax.vmap(lambda m: tail(A * m))(MASKS)
    assert got.shape == (16, 2, C)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    assert float(jnp.abs(want - want[:1]).max()) > 1e-3  # the masks do change the scores


def test_the_zero_image_tail_of_before_is_wrong_around_a_skip():
    """The mechanism this module replaced (the module re-run from a zero image) fails the same check."""
    module, variables, head, tail, _ = hand_split("linen")

    def zero_image_tail(a):
        def replace(next_fun, args, kwargs, context):
            if context.method_name == "__call__" and tuple(context.module.path) == ("conv1",):
                return a
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(replace):
            return module.apply(variables, jnp.zeros((a.shape[0], S, S, 3)))

    A = head(X)
    before = jax.vmap(lambda m: zero_image_tail(A * m))(MASKS)
    exact = jax.vmap(lambda m: tail(A * m))(MASKS)
    assert float(jnp.abs(before - exact).max()) > 1e-2


def _flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def test_no_head_recomputation_per_mask():
    """XLA's flop count of the perturbed sweep: the tap's tail costs the plain tail plus ONE head, not one per mask."""
    module, variables, head, tail, _ = hand_split("linen")
    tap = cj.tap_module(module, "conv1", X, variables)
    A = head(X)
    masks = perturb.sample_masks(jax.random.PRNGKey(0), jnp.arange(64), K)
    # the tap's variables (weights and bound images) are arguments, so XLA cannot fold the head into a constant
    ours = _flops(lambda v, a, m: perturb.perturbed_logits(tap.tail_fn, v, a, m), tap.variables, A, masks)
    plain = _flops(lambda a, m: jax.vmap(lambda mm: tail(a * mm))(m), A, masks)  # the skip input is given
    stem_once = _flops(lambda x: head(x), X)  # the head (stem + conv1) of the B images, once
    assert stem_once > 0
    assert 0 < ours - plain <= 1.05 * stem_once, (ours, plain, stem_once)
    assert ours < plain + 0.1 * 64 * stem_once  # a head per mask would add 64 of them


def test_chain_tap_explains_any_images_but_a_skip_tap_only_its_own():
    module, variables, *_ = hand_split("linen")
    chain = cj.tap_module(module, "relu", X[:1], variables)  # nothing runs around the last ReLU
    assert not chain.tail_reads_images
    np.testing.assert_allclose(np.asarray(chain.tail(chain.head(X))), np.asarray(module.apply(variables, X)), atol=1e-5)
    inside = cj.tap_module(module, "conv1", X[:1], variables)
    with pytest.raises(InputError, match="bind"):
        inside.head(X)
    with pytest.raises(InputError, match="bind"):
        inside.tail(jnp.zeros((2, S, S, K)))
    bound = inside.bind(X)
    np.testing.assert_allclose(np.asarray(bound.tail(bound.head(X))), np.asarray(module.apply(variables, X)),
                               atol=1e-5)
    with pytest.raises(InputError, match="shape"):
        inside.bind(jnp.zeros((1, 8, 8, 3)))


# --- layers, default layer, module systems ----------------------------------------------------


@pytest.mark.parametrize("system", SYSTEMS)
def test_layers_in_call_order_and_default_layer(system):
    net, variables, *_ = hand_split(system)
    layers = cj.module_layers(net, X, variables)
    expected = {"linen": ["stem", "bn", "conv1", "conv2", "relu", "fc"],
                "nnx": ["stem", "bn", "conv1", "conv2", "relu", "fc"],
                "equinox": ["stem", "conv1", "conv2", "relu", "fc"]}[system]
    assert layers == expected
    tap = cj.tap_module(net, None, X, variables)
    assert tap.layer == "relu" and tap.layers == tuple(expected)  # the last spatial feature map
    with pytest.raises(LayerError, match="conv1"):
        cj.tap_module(net, "conv9", X, variables)


def test_bad_networks_and_variables_are_refused_with_a_fix():
    module, variables = linen_net()
    with pytest.raises(InputError, match="variables"):
        cj.tap_module(module, "conv1", X)
    with pytest.raises(InputError, match="without variables"):
        cj.tap_module(nnx_net(), "conv1", X, variables)
    with pytest.raises(InputError, match="cannot tap"):
        cj.tap_module(lambda x: x, "conv1", X)
    with pytest.raises(InputError, match="B, S, S, 3"):
        cj.tap_module(module, "conv1", X[0], variables)


def test_explaining_mutates_no_state_and_uses_eval_mode_batch_norm():
    net = nnx_net()
    before = jax.tree.map(np.asarray, nnx.state(net))
    tap = cj.tap_module(net, "conv1", X)
    cj.explain(tap, X, method="chip", num_masks=16)
    after = jax.tree.map(np.asarray, nnx.state(net))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    assert net.bn.use_running_average is False  # the user's module stays in training mode
    ref = nnx.clone(net)
    ref.eval()
    np.testing.assert_allclose(np.asarray(tap.tail(tap.head(X))), np.asarray(ref(X)), atol=1e-5)
    assert float(jnp.abs(ref(X) - net(X)).max()) > 1e-3  # eval mode is not training mode here


def test_equinox_is_imported_only_for_equinox_modules():
    import subprocess
    import sys

    code = ("import jax.numpy as jnp, flax.linen as nn, jax, sys, chipjax as cj\n"
            "m = nn.Sequential([nn.Conv(4, (3, 3)), nn.relu]); x = jnp.zeros((1, 4, 4, 3))\n"
            "v = m.init(jax.random.PRNGKey(0), x)\n"
            "cj.tap_module(m, None, x, v)\n"
            "assert 'equinox' not in sys.modules, 'equinox imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- every method on a user tap of each module system -------------------------------------------

METHODS = ("chip", "cam", "gradcam", "gradcam++", "scorecam", "ablationcam", "rise")
FAST = {"chip": dict(num_masks=64), "rise": dict(num_masks=64)}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_on_a_user_tap(split, method):
    system, net, variables, *_ = split
    tap = cj.tap_module(net, "relu", X, variables) if method == "cam" else split[-1]
    maps = np.asarray(cj.explain(tap, X, method=method, **FAST.get(method, {})))
    assert maps.shape == (2, S, S)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert maps.max() > 0


def test_methods_on_a_skip_tap_equal_their_hand_split_references():
    """CHIP, Ablation-CAM and Grad-CAM from the hand split; Score-CAM and RISE from the whole network."""
    module, variables, head, tail, full = hand_split("linen")
    tap = cj.tap_module(module, "conv1", X, variables)
    hand = Tap(layer="conv1", head_fn=lambda v, x: head(x), tail_fn=lambda v, a: tail(a), variables={})
    whole = Tap(layer="input", head_fn=lambda v, x: x, tail_fn=lambda v, x: full(x), variables={})
    targets = jnp.array([1, 3])
    for method, options in (("chip", dict(num_masks=64)), ("ablationcam", {}), ("gradcam", {})):
        got = cj.methods.method_fn(method)(tap, X, targets, **options)
        want = cj.methods.method_fn(method)(hand, X, targets, **options)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, err_msg=method)
    A = head(X)
    W = cams.scorecam_weights(whole.head_fn, whole.tail_fn, {}, X, A, targets, chunk=4)
    np.testing.assert_allclose(np.asarray(cams.scorecam_maps(tap, X, targets)), np.asarray(heatmap(A, W, (S, S))),
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(cams.rise_maps(tap, X, targets, num_masks=32)),
                               np.asarray(cams.rise_maps(whole, X, targets, num_masks=32)), atol=1e-5)


def test_channel_mask_site_moves_binary_masks_past_a_channelwise_prefix(rng):
    """``rest(P0 + m ⊙ (P1 − P0)) == rest(prefix(A ⊙ m))`` for binary m, with a per-channel affine
    + ReLU6 prefix whose value at 0 is not 0 (a batch-norm bias); a tap without a prefix is returned as is."""
    from chipjax.tap import Tap, channel_mask_site

    K = 6
    scale, shift = rng.normal(size=K).astype(np.float32), rng.uniform(0.5, 1.0, K).astype(np.float32)
    V = rng.normal(size=(K, 3)).astype(np.float32)
    prefix = lambda v, a: jnp.clip(a * v["s"] + v["b"], 0, 6)[:, ::2, ::2]  # noqa: E731 channel-wise, strided
    rest = lambda v, p: p.mean(axis=(1, 2)) @ v["V"]  # noqa: E731
    variables = {"s": scale, "b": shift, "V": V}
    tap = Tap("t", lambda v, x: x, lambda v, a: rest(v, prefix(v, a)), variables, prefix_fn=prefix, rest_fn=rest)
    a = jnp.asarray(rng.uniform(-1, 2, (2, 8, 8, K)), jnp.float32)
    tail_fn, site_vars, site = channel_mask_site(tap, a)
    assert site.shape == (2, 4, 4, K)
    for m in (rng.uniform(size=(5, K)) < 0.5).astype(np.float32):
        np.testing.assert_allclose(tail_fn(site_vars, site * m), tap.tail_fn(variables, a * m), rtol=1e-5, atol=1e-6)
    plain = Tap("t", tap.head_fn, tap.tail_fn, variables)
    assert channel_mask_site(plain, a) == (plain.tail_fn, variables, a)
