"""Torch-exact building blocks shared by the zoo architectures (NHWC, inference only).

Each block reproduces its ``torch.nn`` counterpart in eval mode, so weights converted
from a torchvision state dict give torch's numbers:

* :func:`conv2d`: ``nn.Conv2d`` with explicit symmetric padding (never ``"SAME"``,
  which pads asymmetrically at stride 2 on even inputs).
* :class:`BatchNorm`: ``nn.BatchNorm2d.eval()``, normalising with the running statistics.
* :func:`max_pool2d` / :class:`MaxPool2d`: ``nn.MaxPool2d`` (``-inf`` padding, floor mode).
* :func:`adaptive_avg_pool2d`: ``nn.AdaptiveAvgPool2d``, the same (overlapping) bins as torch.
* :func:`flatten_chw`: ``torch.flatten(x, 1)`` of the NCHW tensor, from an NHWC one.

Parameterless steps are small modules too (:class:`ReLU`, :class:`MaxPool2d`,
:class:`AvgPoolFlatten`) so that every torch layer can be one *unit* of a zoo model.
Initialisers follow torchvision, so random-init models behave like torchvision's.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

#: torchvision's conv init: ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``.
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
#: torch's default ``nn.Linear`` weight init: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
TORCH_LINEAR_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if np.ndim(v) == 0 else (int(v[0]), int(v[1]))


def conv2d(
    features: int,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    use_bias: bool = True,
    name: str | None = None,
    groups: int = 1,
) -> "Conv2d":
    """``torch.nn.Conv2d(in, features, kernel_size, stride, padding, bias=use_bias)`` as a Flax module.

    Maps ``(B, H, W, C_in)`` to ``(B, H', W', features)`` with
    ``H' = floor((H + 2 * padding - kernel) / stride) + 1``. The kernel is HWIO
    (torch's OIHW weight transposed ``(2, 3, 1, 0)``); variables are named as ``nn.Conv``'s.
    ``groups`` is torch's (``C_in`` and ``features`` divisible by it).
    """
    return Conv2d(
        features=features,
        kernel_size=_pair(kernel_size),
        strides=_pair(stride),
        padding=_pair(padding),
        use_bias=use_bias,
        groups=groups,
        name=name,
    )


#: Output sizes (``H' · W'``) at or below which a dense k×k convolution on CPU runs as
#: :func:`conv_im2col`: XLA:CPU's convolution kernel is slow there (ResNet-50 ``layer4``'s 3×3
#: convolutions at 7×7, 16 images: 11.5–15.8 ms against 9.9–10.2 ms as one matmul; in bfloat16,
#: 13.0 against 6.1 ms), while at 14×14 and above the gathered patches cost more than they save.
IM2COL_MAX_OUTPUT_PIXELS_CPU = 64


def accumulation_dtype(dtype) -> jnp.dtype | None:
    """The accumulator of a product of ``dtype`` operands: float32 for bfloat16/float16, else None (as is).

    XLA:CPU runs a bfloat16 product *with* float32 accumulation at the bf16 matmul rate (on
    AVX512-BF16 hardware about twice the float32 rate) but a plain bfloat16 one slower than
    float32; on GPU/TPU float32 accumulation is what the hardware does anyway.
    """
    return jnp.float32 if jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) else None


def matmul_last(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x (..., I) @ w (I, O) -> (..., O)`` in ``x``'s dtype, accumulated as :func:`accumulation_dtype` says."""
    y = lax.dot_general(x, w.astype(x.dtype), (((x.ndim - 1,), (0,)), ((), ())),
                        preferred_element_type=accumulation_dtype(x.dtype))
    return y.astype(x.dtype)


def use_im2col(out_hw: tuple[int, int], kernel_hw: tuple[int, int]) -> bool:
    """Whether a dense k×k convolution with output ``(H', W')`` should run as :func:`conv_im2col`.

    Always when the output is smaller than the kernel (XLA's CPU convolution is 100× slow
    there); on CPU also at outputs of at most :data:`IM2COL_MAX_OUTPUT_PIXELS_CPU` pixels.
    GPU/TPU keep their convolution kernels otherwise.
    """
    (ho, wo), (kh, kw) = out_hw, kernel_hw
    if kh == 1 and kw == 1:
        return False
    if ho < kh or wo < kw:
        return True
    return ho * wo <= IM2COL_MAX_OUTPUT_PIXELS_CPU and jax.default_backend() == "cpu"


def conv_im2col(
    x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: tuple[int, int], groups: int = 1
) -> jax.Array:
    """Convolution as one matrix product over gathered patches: ``(B, H, W, I), (kh, kw, I / groups, O) -> (B, H', W', O)``.

    XLA's CPU convolution is pathologically slow (100× and more) when the output is
    smaller than the kernel — ResNet's layer4 on small inputs — and slow at small outputs
    generally (:func:`use_im2col`), so those shapes use this form: ``kh·kw`` shifted strided
    slices, concatenated, times the reshaped kernel (one product per group when ``groups > 1``),
    accumulated in float32 for bfloat16 operands (:func:`matmul_last`).
    """
    kh, kw, ci, co = kernel.shape
    (sh, sw), (ph, pw) = strides, padding
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    ho = (xp.shape[1] - kh) // sh + 1
    wo = (xp.shape[2] - kw) // sw + 1
    cols = [xp[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :] for i in range(kh) for j in range(kw)]
    if groups == 1:
        return matmul_last(jnp.concatenate(cols, axis=-1), kernel.reshape(kh * kw * ci, co))
    b = x.shape[0]
    patches = jnp.stack(cols, axis=3).reshape(b, ho, wo, kh * kw, groups, ci)
    w = kernel.reshape(kh * kw, ci, groups, co // groups).astype(x.dtype)
    y = jnp.einsum("bhwtgi,tigo->bhwgo", patches, w, preferred_element_type=accumulation_dtype(x.dtype))
    return y.astype(x.dtype).reshape(b, ho, wo, co)


#: When a stride-1 3×3 float32 convolution on CPU runs as :func:`conv_winograd`: from this many input
#: channels at any size, and from :data:`WINOGRAD_MIN_CHANNELS_SMALL_CPU` at outputs of at most
#: :data:`WINOGRAD_SMALL_OUTPUT_PIXELS_CPU` pixels. Measured on the 2-core AVX-512 CPU (2026-12-07; ms
#: per call, Winograd against XLA's convolution or :func:`conv_im2col`, whichever the shape got before):
#: 7×7 512→512 ×8 images 3.5 vs 5.7, ×16 6.4 vs 9.7; 14×14 256→256 ×16 6.4 vs 8.5; 14×14 512→512 ×8
#: 10.4 vs 17.6; 28×28 128→128 ×8 2.9 vs 4.1; 28×28 256→256 ×8 12.7 vs 16.7; 56×56 256→256 ×4 24.9
#: vs 33.1; but 56×56 128→128 ×8 17.4 vs 17.5, 112×112 128→128 ×4 40 vs 33, 56×56 64→64 ×8 6.0 vs 4.3
#: (the transforms' traffic outgrows the saved products). One image at 7×7 512→512 loses (1.0 vs
#: 0.7 ms: 16 rows per product), but under ``vmap`` (the engine's masks) a layer sees one image while
#: its products run over the whole chunk, so there is no rule on the batch.
WINOGRAD_MIN_CHANNELS_CPU = 256
WINOGRAD_MIN_CHANNELS_SMALL_CPU = 128
WINOGRAD_SMALL_OUTPUT_PIXELS_CPU = 28 * 28

# Winograd F(2×2, 3×3) (Lavin & Gray 2016): Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A for each 4×4 input tile d
# and 3×3 kernel g, giving a 2×2 output tile with 16 products in place of 36.
_WINOGRAD_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_WINOGRAD_G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
_WINOGRAD_AT = ((1, 1, 1, 0), (0, 1, -1, -1))


def use_winograd(x_dtype, kernel_shape: Sequence[int], strides: tuple[int, int], out_hw: tuple[int, int],
                 groups: int = 1) -> bool:
    """Whether a dense convolution by ``kernel (kh, kw, I, O)`` with output ``(H', W')`` should run as :func:`conv_winograd`.

    Float32, 3×3, stride 1, ungrouped, on CPU, with enough input channels for the output size
    (:data:`WINOGRAD_MIN_CHANNELS_CPU`). GPU/TPU keep their kernels (cuDNN picks Winograd
    itself); bfloat16 keeps its path (the transforms would round in bfloat16).
    """
    if tuple(kernel_shape[:2]) != (3, 3) or tuple(strides) != (1, 1) or groups != 1:
        return False
    if jnp.dtype(x_dtype) != jnp.dtype(jnp.float32) or jax.default_backend() != "cpu":
        return False
    small = out_hw[0] * out_hw[1] <= WINOGRAD_SMALL_OUTPUT_PIXELS_CPU
    return kernel_shape[2] >= (WINOGRAD_MIN_CHANNELS_SMALL_CPU if small else WINOGRAD_MIN_CHANNELS_CPU)


def _combine(coeffs: Sequence[Sequence[float]], terms: Sequence[jax.Array]) -> list[jax.Array]:
    """``[Σ_j coeffs[i][j] · terms[j] for each row i]``: zero terms skipped, ±1 as adds (the Winograd transforms)."""
    rows = []
    for row in coeffs:
        acc = None
        for c, t in zip(row, terms):
            if c == 0:
                continue
            t = t if c == 1 else (-t if c == -1 else t * np.asarray(c, t.dtype))
            acc = t if acc is None else acc + t
        rows.append(acc)
    return rows


def winograd_kernel(kernel: jax.Array) -> jax.Array:
    """``(3, 3, I, O) -> (16, I, O)``: the transformed kernel ``G g Gᵀ`` of :func:`conv_winograd`, row-major over the 4×4 tile."""
    rows = _combine(_WINOGRAD_G, [kernel[i] for i in range(3)])
    return jnp.stack([u for r in rows for u in _combine(_WINOGRAD_G, [r[j] for j in range(3)])])


def conv_winograd(x: jax.Array, kernel: jax.Array, padding: tuple[int, int]) -> jax.Array:
    """A stride-1 3×3 convolution by Winograd's F(2×2, 3×3): ``(B, H, W, I), (3, 3, I, O) -> (B, H', W', O)``.

    The output is cut into 2×2 tiles (``H' = H + 2·ph − 2``, padded up to even), each read from a 4×4
    input tile; the channel mixing becomes 16 independent ``(B·tiles, I) @ (I, O)`` products, 16
    multiplies per output tile and channel pair in place of 36 (at 7×7, tiles over 8×8: 2.25 ×
    49 / 64 = 1.7× fewer). The tile transforms are additions (and halvings of the kernel), so the
    result differs from the direct sum by rounding only (about 1e-6 relative in float32).
    ``padding``: ``(ph, pw)`` zeros on each side, as torch's.
    """
    (ph, pw) = padding
    b, h, w, ci = x.shape
    co = kernel.shape[-1]
    ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
    th, tw = -(-ho // 2), -(-wo // 2)
    xp = jnp.pad(x, ((0, 0), (ph, 2 * th + 2 - h - ph), (pw, 2 * tw + 2 - w - pw), (0, 0)))
    tiles = [[xp[:, i : i + 2 * th - 1 : 2, j : j + 2 * tw - 1 : 2] for j in range(4)] for i in range(4)]
    cols = [_combine(_WINOGRAD_BT, [tiles[i][j] for i in range(4)]) for j in range(4)]   # cols[j][u]
    v = [_combine(_WINOGRAD_BT, [cols[j][u] for j in range(4)]) for u in range(4)]        # v[u][v']
    u = winograd_kernel(kernel).astype(x.dtype)
    # 16 plain products, not one batched over the tile positions: under vmap (the engine's masks) a
    # batch dimension would come second and XLA would transpose both operands around each product
    m = [[matmul_last(v[p][q], u[4 * p + q]) for q in range(4)] for p in range(4)]             # (B, th, tw, O)
    half = [_combine(_WINOGRAD_AT, [m[p][q] for p in range(4)]) for q in range(4)]            # half[q][i]
    out = [_combine(_WINOGRAD_AT, [half[q][i] for q in range(4)]) for i in range(2)]           # out[i][j]
    y = jnp.stack([jnp.stack(row, axis=3) for row in out], axis=2)                        # (B, th, 2, tw, 2, O)
    return y.reshape(b, 2 * th, 2 * tw, co)[:, :ho, :wo]


def depthwise_conv(
    x: jax.Array, kernel: jax.Array, stride: int | Sequence[int], pads: Sequence[tuple[int, int]]
) -> jax.Array:
    """Depthwise convolution as ``k²`` shifted strided slices times per-channel weights.

    ``out[b, y, x, c] = Σ_{i,j} pad(x)[b, s·y + i, s·x + j, c] · kernel[i, j, c]`` — the same as
    ``lax.conv_general_dilated(..., feature_group_count=C)`` (cross-correlation, as torch), but
    XLA on CPU runs these fused multiply-adds 4–20× faster than its grouped convolution.
    bfloat16 inputs are summed in float32 (:func:`accumulation_dtype`) and rounded once.

    Args:
      x: ``(B, H, W, C)``.
      kernel: ``(kh, kw, C)``.
      stride: one int or ``(sh, sw)``.
      pads: ``((top, bottom), (left, right))`` zero padding.

    Returns:
      ``(B, H', W', C)`` with ``H' = (H + top + bottom - kh) // sh + 1`` (likewise ``W'``).
    """
    kh, kw = kernel.shape[0], kernel.shape[1]
    sh, sw = _pair(stride)
    (top, bottom), (left, right) = pads
    batch, height, width, channels = x.shape
    padded = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
    out_h = (height + top + bottom - kh) // sh + 1
    out_w = (width + left + right - kw) // sw + 1
    span_h, span_w = sh * (out_h - 1) + 1, sw * (out_w - 1) + 1
    acc = accumulation_dtype(x.dtype) or x.dtype
    kernel = kernel.astype(acc)
    out = None
    for i in range(kh):
        for j in range(kw):
            window = lax.slice(padded, (0, i, j, 0), (batch, i + span_h, j + span_w, channels), (1, sh, sw, 1))
            term = window.astype(acc) * kernel[i, j]
            out = term if out is None else out + term
    return out.astype(x.dtype)


def conv1x1(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: tuple[int, int]) -> jax.Array:
    """A 1×1 convolution as a matrix product: ``(B, H, W, I), (1, 1, I, O) -> (B, H', W', O)``.

    Padding (zeros) and stride become a pad and a strided slice, then one ``(B·H'·W', I) @ (I, O)``.
    XLA:CPU lowers a 1×1 ``conv_general_dilated`` to a convolution kernel about 3× slower
    than its matrix product (ResNet-50 ``layer4.0.conv1``, 64 images: 268 ms against 93 ms;
    ``benchmarks/RESULTS.md``); on GPU/TPU both become the same matmul. bfloat16 operands
    accumulate in float32 (:func:`matmul_last`).
    """
    (sh, sw), (ph, pw) = strides, padding
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    if sh > 1 or sw > 1:
        x = x[:, ::sh, ::sw, :]
    return matmul_last(x, kernel[0, 0])


class Conv2d(nn.Module):
    """``torch.nn.Conv2d`` on NHWC with explicit symmetric padding (see :func:`conv2d`).

    ``groups`` splits input and output channels as torch does; the kernel is
    ``(kh, kw, C_in / groups, features)`` (torch's ``(features, C_in / groups, kh, kw)`` transposed).
    A depthwise conv (``groups == C_in == features``) runs as :func:`depthwise_conv`, a 1×1 one as
    :func:`conv1x1`; on CPU a wide stride-1 3×3 one as :func:`conv_winograd` (:func:`use_winograd`)
    and a small-output one as :func:`conv_im2col` (:func:`use_im2col`).
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    use_bias: bool = True
    groups: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        cin = x.shape[-1]
        kernel = self.param("kernel", KAIMING_FAN_OUT, (kh, kw, cin // self.groups, self.features), jnp.float32)
        kernel = kernel.astype(x.dtype)
        (sh, sw), (ph, pw) = self.strides, self.padding
        ho = (x.shape[1] + 2 * ph - kh) // sh + 1
        wo = (x.shape[2] + 2 * pw - kw) // sw + 1
        if self.groups > 1 and self.groups == cin == self.features:
            y = depthwise_conv(x, kernel[:, :, 0, :], self.strides, ((ph, ph), (pw, pw)))
        elif kh == 1 and kw == 1 and self.groups == 1:
            y = conv1x1(x, kernel, self.strides, self.padding)
        elif use_winograd(x.dtype, kernel.shape, self.strides, (ho, wo), self.groups):
            y = conv_winograd(x, kernel, self.padding)
        elif use_im2col((ho, wo), (kh, kw)):
            y = conv_im2col(x, kernel, self.strides, self.padding, self.groups)
        else:
            y = lax.conv_general_dilated(
                x,
                kernel,
                self.strides,
                ((ph, ph), (pw, pw)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=self.groups,
            )
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(x.dtype)
        return y


def dense(features: int, kernel_init=TORCH_LINEAR_INIT, name: str | None = None) -> nn.Dense:
    """``torch.nn.Linear(in, features)`` as ``nn.Dense``: ``(B, in) -> (B, features)``; kernel ``(in, out)``."""
    return nn.Dense(features, kernel_init=kernel_init, bias_init=nn.initializers.zeros, name=name)


class BatchNorm(nn.Module):
    """``torch.nn.BatchNorm2d`` in eval mode: ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``.

    Works on the last axis of ``(..., C)``. Variables: ``params/scale`` (torch ``weight``),
    ``params/bias``, ``batch_stats/mean`` (``running_mean``), ``batch_stats/var``
    (``running_var``), all ``(C,)``. Computed as ``x * a + b`` with
    ``a = scale / sqrt(var + eps)``, ``b = bias - mean * a``, as torch does on CPU.
    """

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32)).value
        var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32)).value
        a = scale * lax.rsqrt(var + self.epsilon)
        return x * a + (bias - mean * a)


class ReLU(nn.Module):
    """``torch.nn.ReLU``: element-wise ``max(x, 0)``; any shape."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.relu(x)


def max_pool2d(
    x: jax.Array,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
) -> jax.Array:
    """``torch.nn.functional.max_pool2d`` on NHWC ``(B, H, W, C)``.

    Padding cells hold ``-inf``, so they never win, as in torch. Output
    ``H' = floor((H + 2 * padding - kernel) / stride) + 1``; with ``ceil_mode`` the division
    rounds up, except that a last window starting in the right padding is dropped (torch's rule).
    """
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    pads = [(0, 0), (ph, ph), (pw, pw), (0, 0)]
    if ceil_mode:
        for axis, (k, s, p) in ((1, (kh, sh, ph)), (2, (kw, sw, pw))):
            size = x.shape[axis]
            out = -(-(size + 2 * p - k) // s) + 1
            if (out - 1) * s >= size + p:
                out -= 1
            pads[axis] = (p, max((out - 1) * s + k - size - p, p))
    return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max, (1, kh, kw, 1), (1, sh, sw, 1), tuple(pads))


class MaxPool2d(nn.Module):
    """``torch.nn.MaxPool2d(kernel_size, stride, padding, ceil_mode=...)``: see :func:`max_pool2d`."""

    kernel_size: int
    stride: int
    padding: int = 0
    ceil_mode: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` averaging weights of torch's adaptive pooling along one axis.

    Row ``i`` averages inputs ``[floor(i * in / out), ceil((i + 1) * in / out))``; bins
    overlap when ``in`` is not a multiple of ``out`` and repeat inputs when ``in < out``.
    """
    p = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        p[i, start:end] = 1.0 / (end - start)
    return p


def _adaptive_avg_pool_axis(x: jax.Array, axis: int, out_size: int) -> jax.Array:
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    if in_size % out_size == 0:  # equal, disjoint bins: a reshape and a mean
        shape = x.shape[:axis] + (out_size, in_size // out_size) + x.shape[axis + 1 :]
        return x.reshape(shape).mean(axis=axis + 1)
    p = jnp.asarray(adaptive_pool_matrix(in_size, out_size), x.dtype)
    y = jnp.tensordot(x, p, axes=((axis,), (1,)), precision=lax.Precision.HIGHEST)
    return jnp.moveaxis(y, -1, axis)


def adaptive_avg_pool2d(x: jax.Array, output_size: int | Sequence[int]) -> jax.Array:
    """``torch.nn.functional.adaptive_avg_pool2d`` on NHWC: ``(B, H, W, C) -> (B, oh, ow, C)``.

    The averages are exact (``Precision.HIGHEST`` where a matrix product is needed),
    whatever the global matmul precision.
    """
    oh, ow = _pair(output_size)
    return _adaptive_avg_pool_axis(_adaptive_avg_pool_axis(x, 1, oh), 2, ow)


def flatten_chw(x: jax.Array) -> jax.Array:
    """``torch.flatten(x_nchw, 1)`` from NHWC: ``(B, H, W, C) -> (B, C * H * W)`` in C, H, W order."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class AvgPoolFlatten(nn.Module):
    """``nn.AdaptiveAvgPool2d(output_size)`` then ``torch.flatten(·, 1)``: ``(B, H, W, C) -> (B, C * oh * ow)``.

    With ``output_size=(1, 1)`` this is the global average pool of ResNet: ``(B, C)``.
    """

    output_size: tuple[int, int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if tuple(self.output_size) == (1, 1):
            return x.mean(axis=(1, 2))
        return flatten_chw(adaptive_avg_pool2d(x, self.output_size))


def plan_unit_class(factory: Callable[[], nn.Module]) -> type:
    """The module class a plan's unit factory builds (the class itself, or a ``functools.partial`` of it)."""
    return factory.func if isinstance(factory, functools.partial) else factory


def channelwise_units(plan: Sequence[tuple[str, Callable[[], nn.Module]]]) -> frozenset[str]:
    """Names of a plan's units that act on each channel alone and keep ``(B, ..., K)``: ``BatchNorm``,
    ``ReLU``, ``MaxPool2d`` and the global ``AvgPoolFlatten((1, 1))`` (``ArchSpec.channelwise_units``).
    ``AvgPoolFlatten`` to a larger grid flattens channels and pixels together (VGG), so it is not one."""

    def channelwise(factory) -> bool:
        cls = plan_unit_class(factory)
        if cls is AvgPoolFlatten:
            return tuple(factory.keywords.get("output_size", ())) == (1, 1)
        return cls in (BatchNorm, ReLU, MaxPool2d)

    return frozenset(name for name, factory in plan if channelwise(factory))
