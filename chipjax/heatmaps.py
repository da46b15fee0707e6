"""Turning channel weights into heat maps: the part every method shares.

Every method in chipjax (CHIP and the CAM family) ends the same way: a weighted
sum of the tapped feature maps, a ReLU, bilinear upsampling to the input size and
a per-image normalisation to [0, 1].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .shapes import ChannelWeights, FeaturesIn, LayerMaps, LayerMapsIn, Maps, MapsIn


def weighted_channel_sum(features: FeaturesIn, weights: ChannelWeights | FeaturesIn) -> LayerMaps:
    """``Σ_k weights[b, k] · features[b, ..., k]``.

    Args:
      features: ``(B, H, W, K)`` feature maps.
      weights: ``(B, K)`` channel weights (or ``(B, H, W, K)`` for pixel-wise weights).
    Returns:
      ``(B, H, W)``.
    """
    if weights.ndim == 2:
        return jnp.einsum("bhwk,bk->bhw", features, weights)
    return jnp.sum(features * weights, axis=-1)


def upsample(maps: LayerMapsIn, size: tuple[int, int]) -> Maps:
    """Bilinear upsampling (half-pixel centres, like ``align_corners=False``) of ``(B, h, w)`` to ``(B, *size)``."""
    b = maps.shape[0]
    return jax.image.resize(maps, (b,) + tuple(size), method="bilinear", antialias=False)


def normalize01(maps: MapsIn) -> Maps:
    """Per-map min-max scaling of ``(B, H, W)`` to [0, 1]; a constant map becomes zeros (never NaN)."""
    maps = jnp.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    lo = maps.min(axis=(1, 2), keepdims=True)
    hi = maps.max(axis=(1, 2), keepdims=True)
    span = hi - lo
    safe = jnp.where(span > 0, span, 1.0)
    return jnp.where(span > 0, (maps - lo) / safe, 0.0)


def power_of_two_scale(x: jax.Array) -> jax.Array:
    """Per-image ``x · 2^-e`` with ``2^e`` the power of two just above ``max |x[b]|``: ``(B, ...) -> (B, ...)``.

    Multiplying by a power of two is exact in floating point, so a map built from the scaled
    arrays is the map of the originals scaled by a positive constant (which :func:`normalize01`
    removes), without the overflow (huge values) or underflow (tiny values) of the originals.
    An all-zero or non-finite image is left as is.
    """
    top = jnp.max(jnp.abs(x), axis=tuple(range(1, x.ndim)), keepdims=True)
    _, exponent = jnp.frexp(jnp.where(jnp.isfinite(top) & (top > 0), top, 1.0))
    return jnp.ldexp(x, -exponent)


def heatmap(features: FeaturesIn, weights: ChannelWeights | FeaturesIn, size: tuple[int, int]) -> Maps:
    """``normalize01(upsample(ReLU(Σ_k w_k A_k)))``: ``(B, H, W, K), (B, K) -> (B, *size)`` in [0, 1].

    Features and weights are first scaled per image by powers of two (:func:`power_of_two_scale`),
    which leaves the normalised map unchanged but keeps the sum finite for any finite inputs. The
    map is also normalised before upsampling (bilinear interpolation commutes with affine maps, so
    the result is the same up to rounding): a constant map is detected exactly, at feature
    resolution, and becomes zeros instead of interpolation round-off stretched to [0, 1].
    """
    raw = jax.nn.relu(weighted_channel_sum(power_of_two_scale(features), power_of_two_scale(weights)))
    return normalize01(upsample(normalize01(raw), size))
