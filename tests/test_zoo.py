"""The torchvision families of the zoo (ResNeXt, Wide ResNet, MobileNet, DenseNet, EfficientNet,
RegNet, ConvNeXt, GoogLeNet, Inception) against torchvision on CPU: one parametrised parity test.

Each torch reference is torchvision's builder with seeded random init and randomised
normalisation statistics (BN running stats and affine parameters, LayerNorm affine parameters,
ConvNeXt layer scales), in eval mode; its state dict is converted by the model's own
``spec.convert`` and the logits compared at float32 with "highest" matmul precision.
Full-size compiles of the large networks are ``slow``.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from test_layers import numpy_state_dict, randomize_batchnorm, torch_unit_outputs

from chipjax.errors import WeightsError
from chipjax.models import get_spec, load_model
from chipjax.models.base import Model

slow = pytest.mark.slow

#: (zoo name, input side, marks): every new architecture; the fast subset runs by default.
ARCHS = [
    ("resnext50_32x4d", 64, ()),
    ("wide_resnet50_2", 64, (slow,)),
    ("mobilenet_v2", 64, ()),
    ("mobilenet_v3_large", 64, ()),
    ("mobilenet_v3_small", 64, (slow,)),
    ("densenet121", 64, ()),
    ("densenet169", 64, (slow,)),
    ("efficientnet_b0", 64, ()),
    ("efficientnet_b3", 64, (slow,)),
]
#: builder arguments of torchvision models whose defaults differ from the zoo's reading.
TORCH_KWARGS = {}
REL_TOL = 1e-4


def randomize_norms(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """BN statistics (:func:`randomize_batchnorm`), LayerNorm affine parameters and layer scales made random."""
    randomize_batchnorm(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if hasattr(m, "layer_scale") and isinstance(m.layer_scale, torch.nn.Parameter):
                m.layer_scale.copy_(torch.rand(m.layer_scale.shape, generator=g) * 0.5 + 0.25)
    return model


def torch_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_norms(getattr(torchvision.models, name)(**TORCH_KWARGS.get(name, {})), seed=1).eval()


@functools.lru_cache(maxsize=2)
def zoo_pair(name: str) -> tuple[torch.nn.Module, Model]:
    tmodel = torch_model(name)
    spec = get_spec(name)
    return tmodel, Model(spec, spec.convert(numpy_state_dict(tmodel)), "torchvision-random")


def torch_logits(tmodel: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return tmodel(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


@pytest.mark.parametrize("name, size", [pytest.param(n, s, marks=m, id=n) for n, s, m in ARCHS])
def test_logits_match_torchvision(name, size):
    tmodel, model = zoo_pair(name)
    x = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)
    ref = torch_logits(tmodel, x)
    t0 = time.perf_counter()
    out = np.asarray(model(jnp.asarray(x)))
    seconds = time.perf_counter() - t0
    err = float(np.abs(out - ref).max())
    rel = err / float(np.abs(ref).max())
    print(f"PARITY {name} {size}px max-abs {err:.3e} rel {rel:.3e} max|logit| {np.abs(ref).max():.3f} compile+run {seconds:.1f}s")
    assert out.shape == ref.shape == (2, 1000)
    assert np.isfinite(out).all()
    assert rel <= REL_TOL


@pytest.mark.parametrize("name", [n for n, _, _ in ARCHS])
def test_key_table_matches_torchvision_state_dict(name):
    from chipjax.models.chain import chain_key_table

    with torch.device("meta"):  # shapes only
        tmodel = getattr(torchvision.models, name)(**TORCH_KWARGS.get(name, {}))
    spec = get_spec(name)
    ignored = getattr(spec.convert, "keywords", {}).get("ignored_prefixes", ())
    want = {
        k: tuple(v.shape)
        for k, v in tmodel.state_dict().items()
        if not k.endswith("num_batches_tracked") and not k.startswith(ignored)
    }
    got = {k: e.torch_shape for k, e in chain_key_table(spec.name).items()}
    assert got == want
