"""Torch-exact building blocks (chipjax.models.layers) against torch.nn on CPU.

Also home of the torch reference helpers the ResNet/VGG tests import
(:func:`randomize_batchnorm`, :func:`torch_unit_outputs`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chipjax.models import layers

ATOL = 1e-5


# --- torch reference helpers (imported by test_resnet.py and test_vgg.py) ---------------
def randomize_batchnorm(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every BatchNorm2d of ``model`` random affine parameters and running stats, so BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.25)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.25)
    return model


def numpy_state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """``model.state_dict()`` with tensors as numpy arrays."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def torch_unit_outputs(model: torch.nn.Module, names, x_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of the named submodules of ``model`` on ``x`` (NHWC in), as NHWC or ``(B, C*H*W)`` arrays.

    A 4-D ``(B, C, 1, 1)`` or ``(B, C, H, W)`` output of an ``AdaptiveAvgPool2d`` is flattened like
    torch's forward does; other 4-D outputs are transposed to NHWC.
    """
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        modules[name].register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o.detach().clone()))
        for name in names
    ]
    try:
        with torch.no_grad():
            model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    finally:
        for h in hooks:
            h.remove()
    result = {}
    for name, out in outputs.items():
        if isinstance(modules[name], torch.nn.AdaptiveAvgPool2d):
            out = torch.flatten(out, 1)
        out = out.numpy()
        result[name] = out.transpose(0, 2, 3, 1) if out.ndim == 4 else out
    return result


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


# --- conv -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size, kernel, stride, padding, bias",
    [(8, 3, 2, 1, False), (9, 3, 2, 1, False), (8, 7, 2, 3, False), (8, 1, 2, 0, False), (7, 3, 1, 1, True),
     (10, 3, 1, 1, True)],  # 10×11 outputs: above the CPU im2col size, XLA's convolution
)
def test_conv2d_matches_torch(rng, size, kernel, stride, padding, bias):
    tconv = torch.nn.Conv2d(3, 5, kernel, stride, padding, bias=bias)
    x = rng.standard_normal((2, size, size + 1, 3)).astype(np.float32)
    params = {"kernel": tconv.weight.detach().numpy().transpose(2, 3, 1, 0)}
    if bias:
        params["bias"] = tconv.bias.detach().numpy()
    ours = layers.conv2d(5, kernel, stride, padding, use_bias=bias).apply({"params": params}, jnp.asarray(x))
    ref = _nhwc(tconv(_nchw(x)))
    assert ours.shape == ref.shape
    np.testing.assert_allclose(np.asarray(ours), ref, atol=ATOL)


# --- batch norm -------------------------------------------------------------------------
def test_batchnorm_eval_matches_torch(rng):
    tbn = randomize_batchnorm(torch.nn.BatchNorm2d(6), seed=3).eval()
    x = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    variables = {
        "params": {"scale": tbn.weight.detach().numpy(), "bias": tbn.bias.detach().numpy()},
        "batch_stats": {"mean": tbn.running_mean.numpy(), "var": tbn.running_var.numpy()},
    }
    ours = layers.BatchNorm().apply(variables, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(ours), _nhwc(tbn(_nchw(x))), atol=ATOL)


def test_batchnorm_init_is_identity(rng):
    x = jnp.asarray(rng.standard_normal((1, 3, 3, 4)).astype(np.float32))
    bn = layers.BatchNorm()
    variables = bn.init(jax.random.PRNGKey(0), x)
    assert set(variables) == {"params", "batch_stats"}
    np.testing.assert_allclose(np.asarray(bn.apply(variables, x)), np.asarray(x), atol=1e-4)


# --- max pool ---------------------------------------------------------------------------
@pytest.mark.parametrize("size, kernel, stride, padding", [(8, 3, 2, 1), (9, 3, 2, 1), (9, 2, 2, 0), (6, 2, 2, 0)])
def test_max_pool_matches_torch(rng, size, kernel, stride, padding):
    # all-negative input: zero padding would win at the borders, -inf padding never does
    x = -np.abs(rng.standard_normal((2, size, size + 1, 3))).astype(np.float32) - 1.0
    ours = layers.MaxPool2d(kernel, stride, padding).apply({}, jnp.asarray(x))
    ref = _nhwc(torch.nn.MaxPool2d(kernel, stride, padding)(_nchw(x)))
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(np.asarray(ours), ref)


# --- adaptive average pool --------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(
    h=st.integers(1, 16),
    w=st.integers(1, 16),
    oh=st.integers(1, 8),
    ow=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_adaptive_avg_pool_matches_torch(h, w, oh, ow, seed):
    x = np.random.default_rng(seed).standard_normal((2, h, w, 3)).astype(np.float32)
    ours = layers.adaptive_avg_pool2d(jnp.asarray(x), (oh, ow))
    ref = _nhwc(torch.nn.functional.adaptive_avg_pool2d(_nchw(x), (oh, ow)))
    assert ours.shape == ref.shape
    np.testing.assert_allclose(np.asarray(ours), ref, atol=ATOL)


@pytest.mark.parametrize("in_size, out_size", [(7, 7), (14, 7), (2, 7), (13, 7), (1, 3)])
def test_adaptive_pool_matrix_rows_are_averages(in_size, out_size):
    p = layers.adaptive_pool_matrix(in_size, out_size)
    assert p.shape == (out_size, in_size)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    assert (p[:, 0] > 0)[0] and (p[:, -1] > 0)[-1]  # first bin starts at 0, last ends at in_size


@pytest.mark.parametrize("shape, output_size", [((2, 2, 3, 5), (7, 7)), ((2, 7, 7, 5), (7, 7)), ((2, 4, 5, 6), (1, 1))])
def test_avg_pool_flatten_is_torch_pool_then_flatten(rng, shape, output_size):
    x = rng.standard_normal(shape).astype(np.float32)
    ours = layers.AvgPoolFlatten(output_size).apply({}, jnp.asarray(x))
    ref = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(_nchw(x), output_size), 1).numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(np.asarray(ours), ref, atol=ATOL)


def test_relu():
    x = jnp.asarray([[-1.0, 0.0, 2.0]])
    np.testing.assert_array_equal(np.asarray(layers.ReLU().apply({}, x)), [[0.0, 0.0, 2.0]])


@pytest.mark.parametrize("size, stride, pad", [(2, 1, 1), (1, 1, 1), (3, 2, 1), (7, 1, 1)])
def test_conv_im2col_equals_lax_convolution(size, stride, pad):
    from jax import lax

    from chipjax.models.layers import conv_im2col

    x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, 8))
    k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 8, 5))
    want = lax.conv_general_dilated(x, k, (stride, stride), ((pad, pad), (pad, pad)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    got = conv_im2col(x, k, (stride, stride), (pad, pad))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_im2col_rule_small_outputs_on_cpu_only_dense_kernels():
    from chipjax.models.layers import IM2COL_MAX_OUTPUT_PIXELS_CPU, use_im2col

    assert use_im2col((2, 2), (3, 3))  # output smaller than the kernel: on every platform
    assert not use_im2col((7, 7), (1, 1))  # 1×1 kernels are matmuls already
    small = use_im2col((7, 7), (3, 3))
    assert small == (jax.default_backend() == "cpu")
    assert 49 <= IM2COL_MAX_OUTPUT_PIXELS_CPU < 14 * 14
    assert not use_im2col((14, 14), (3, 3))


@pytest.mark.parametrize("shape, pad", [((2, 7, 7, 8), 1), ((1, 1, 1, 4), 1), ((3, 6, 9, 5), 0), ((2, 5, 4, 3), 2),
                                        ((1, 3, 4, 4), 0), ((2, 14, 13, 16), 1)])
def test_conv_winograd_matches_torch(rng, shape, pad):
    # odd and even outputs (a padded last tile), outputs smaller than a tile, no and wide padding
    x = rng.standard_normal(shape).astype(np.float32)
    tconv = torch.nn.Conv2d(shape[-1], 6, 3, 1, pad, bias=False)
    k = tconv.weight.detach().numpy().transpose(2, 3, 1, 0)
    got = layers.conv_winograd(jnp.asarray(x), jnp.asarray(k), (pad, pad))
    ref = _nhwc(tconv(_nchw(x)))
    assert got.shape == ref.shape
    np.testing.assert_allclose(np.asarray(got), ref, atol=ATOL, rtol=1e-5)


def test_conv2d_takes_winograd_for_wide_stride1_3x3_on_cpu(rng):
    # 256 channels in at 7×7: the Winograd path on CPU (its own rounding); torch decides
    tconv = torch.nn.Conv2d(256, 8, 3, 1, 1, bias=True)
    x = rng.standard_normal((2, 7, 7, 256)).astype(np.float32)
    params = {"kernel": tconv.weight.detach().numpy().transpose(2, 3, 1, 0), "bias": tconv.bias.detach().numpy()}
    assert layers.use_winograd(x.dtype, params["kernel"].shape, (1, 1), (7, 7)) == (jax.default_backend() == "cpu")
    ours = layers.conv2d(8, 3, 1, 1).apply({"params": params}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(ours), _nhwc(tconv(_nchw(x))), atol=1e-4, rtol=1e-5)


def test_winograd_rule_needs_float32_stride1_3x3_and_wide_inputs():
    cpu = jax.default_backend() == "cpu"
    wide, thin = layers.WINOGRAD_MIN_CHANNELS_CPU, layers.WINOGRAD_MIN_CHANNELS_SMALL_CPU
    assert layers.use_winograd(jnp.float32, (3, 3, wide, 8), (1, 1), (112, 112)) == cpu
    assert layers.use_winograd(jnp.float32, (3, 3, thin, 8), (1, 1), (28, 28)) == cpu
    assert not layers.use_winograd(jnp.float32, (3, 3, thin, 8), (1, 1), (56, 56))  # large and thin: XLA's kernel
    assert not layers.use_winograd(jnp.float32, (3, 3, thin // 2, 8), (1, 1), (7, 7))
    assert not layers.use_winograd(jnp.bfloat16, (3, 3, wide, 8), (1, 1), (7, 7))
    assert not layers.use_winograd(jnp.float32, (3, 3, wide, 8), (2, 2), (7, 7))
    assert not layers.use_winograd(jnp.float32, (1, 1, wide, 8), (1, 1), (7, 7))
    assert not layers.use_winograd(jnp.float32, (5, 5, wide, 8), (1, 1), (7, 7))
    assert not layers.use_winograd(jnp.float32, (3, 3, 1, wide), (1, 1), (7, 7), groups=wide)


def test_matmul_last_accumulates_bfloat16_in_float32():
    from chipjax.models.layers import accumulation_dtype, matmul_last

    assert accumulation_dtype(jnp.bfloat16) == jnp.float32 and accumulation_dtype(jnp.float32) is None
    # 256 ones plus 512 × 2⁻⁸ = 258 (a bf16 number): a bf16 accumulator stalls at 256, where a
    # step of 2⁻⁸ rounds away; float32 gets 258 exactly
    x = jnp.concatenate([jnp.ones((1, 256)), jnp.full((1, 512), 2.0 ** -8)], axis=1).astype(jnp.bfloat16)
    w = jnp.ones((768, 3), jnp.bfloat16)
    y = matmul_last(x, w)
    assert y.dtype == jnp.bfloat16 and y.shape == (1, 3)
    np.testing.assert_array_equal(np.asarray(y, np.float32), 258.0)
    # XLA:CPU happens to accumulate a plain bf16 product in float32 too, but slowly: the product
    # must ask for the float32 accumulator itself (that is what runs at the bf16 rate)
    (dot,) = [e for e in jax.make_jaxpr(matmul_last)(x, w).eqns if e.primitive.name == "dot_general"]
    assert dot.params["preferred_element_type"] == jnp.float32


@pytest.mark.parametrize("size, kernel, stride, groups", [(7, 3, 1, 1), (14, 3, 2, 1), (9, 1, 1, 1), (9, 3, 1, 32)])
def test_conv2d_in_bfloat16_is_close_to_float32(rng, size, kernel, stride, groups):
    # dense (im2col, XLA's convolution, 1×1 matmul) and depthwise (shifted slices summed in float32)
    conv = layers.conv2d(32 if groups > 1 else 16, kernel, stride, kernel // 2, groups=groups)
    x = jnp.asarray(rng.standard_normal((2, size, size, 32)).astype(np.float32))
    params = conv.init(jax.random.PRNGKey(0), x)
    want = conv.apply(params, x)
    got = conv.apply(jax.tree.map(lambda v: v.astype(jnp.bfloat16), params), x.astype(jnp.bfloat16))
    assert got.dtype == jnp.bfloat16 and got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), atol=0.05 * float(jnp.abs(want).max()))


# --- grouped and depthwise conv, ceil-mode max-pool (the torchvision families of test_zoo.py) ----
@pytest.mark.parametrize(
    "size, cin, cout, kernel, stride, padding, groups",
    [(9, 8, 8, 3, 2, 1, 8), (8, 6, 6, 5, 1, 2, 6), (8, 8, 12, 3, 1, 1, 4), (2, 8, 8, 3, 1, 1, 2), (1, 4, 4, 3, 1, 1, 4)],
)
def test_grouped_conv_matches_torch(rng, size, cin, cout, kernel, stride, padding, groups):
    # (depthwise: shifted slices; grouped: XLA feature groups; tiny outputs: grouped im2col)
    tconv = torch.nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=True)
    x = rng.standard_normal((2, size, size, cin)).astype(np.float32)
    with torch.no_grad():
        want = _nhwc(tconv(_nchw(x)))
    conv = layers.conv2d(cout, kernel, stride, padding, use_bias=True, groups=groups)
    params = {"params": {"kernel": jnp.asarray(tconv.weight.detach().numpy().transpose(2, 3, 1, 0)),
                         "bias": jnp.asarray(tconv.bias.detach().numpy())}}
    got = np.asarray(conv.apply(params, jnp.asarray(x)))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=ATOL)


@pytest.mark.parametrize("size, kernel, stride, padding", [(7, 3, 2, 0), (8, 3, 2, 0), (9, 3, 2, 1), (5, 2, 2, 0), (6, 3, 1, 1)])
def test_ceil_mode_max_pool_matches_torch(rng, size, kernel, stride, padding):
    x = rng.standard_normal((1, size, size, 3)).astype(np.float32)
    want = _nhwc(torch.nn.functional.max_pool2d(_nchw(x), kernel, stride, padding, ceil_mode=True))
    got = np.asarray(layers.max_pool2d(jnp.asarray(x), kernel, stride, padding, ceil_mode=True))
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
