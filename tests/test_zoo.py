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
    ("regnet_y_400mf", 64, ()),
    ("regnet_x_400mf", 64, ()),
    ("convnext_tiny", 64, ()),
    ("googlenet", 64, ()),
    ("inception_v3", 75, ()),
]
#: builder arguments of torchvision models whose defaults differ from the zoo's reading.
TORCH_KWARGS = {
    "googlenet": dict(init_weights=True, aux_logits=True, transform_input=False),
    "inception_v3": dict(init_weights=True, aux_logits=True, transform_input=False),
}
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


def meta_torch_model(name: str) -> torch.nn.Module:
    """torchvision's ``name`` on the meta device: parameter shapes without memory."""
    if name.startswith("regnet_"):  # its widths are computed with tensors, which meta cannot read back
        from torchvision.models import regnet

        depth, w_0, w_a, w_m, group_width, se_ratio = REGNET_INIT_PARAMS[name]
        params = regnet.BlockParams.from_init_params(depth, w_0, w_a, w_m, group_width, se_ratio=se_ratio)
        with torch.device("meta"):
            return regnet.RegNet(params)
    with torch.device("meta"):
        return getattr(torchvision.models, name)(**TORCH_KWARGS.get(name, {}))


#: torchvision's ``BlockParams.from_init_params`` arguments, copied from its builders (the test's reference).
REGNET_INIT_PARAMS = {
    "regnet_y_400mf": (16, 48, 27.89, 2.09, 8, 0.25), "regnet_y_800mf": (14, 56, 38.84, 2.4, 16, 0.25),
    "regnet_y_1_6gf": (27, 48, 20.71, 2.65, 24, 0.25), "regnet_y_3_2gf": (21, 80, 42.63, 2.66, 24, 0.25),
    "regnet_y_8gf": (17, 192, 76.82, 2.19, 56, 0.25), "regnet_y_16gf": (18, 200, 106.23, 2.48, 112, 0.25),
    "regnet_y_32gf": (20, 232, 115.89, 2.53, 232, 0.25), "regnet_y_128gf": (27, 456, 160.83, 2.52, 264, 0.25),
    "regnet_x_400mf": (22, 24, 24.48, 2.54, 16, None), "regnet_x_800mf": (16, 56, 35.73, 2.28, 16, None),
    "regnet_x_1_6gf": (18, 80, 34.01, 2.25, 24, None), "regnet_x_3_2gf": (25, 88, 26.31, 2.25, 48, None),
    "regnet_x_8gf": (23, 80, 49.56, 2.88, 120, None), "regnet_x_16gf": (22, 216, 55.59, 2.1, 128, None),
    "regnet_x_32gf": (23, 320, 69.86, 2.0, 168, None),
}
#: architectures whose key tables (not logits) are checked: the other sizes of each family.
KEY_ONLY = [
    "resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2", "densenet161", "densenet201",
    *[f"efficientnet_b{i}" for i in (1, 2, 4, 5, 6, 7)],
    "convnext_small", "convnext_base", "convnext_large",
    *[n for n in REGNET_INIT_PARAMS if n not in ("regnet_y_400mf", "regnet_x_400mf")],
]


@pytest.mark.parametrize("name", [n for n, _, _ in ARCHS] + [pytest.param(n, marks=slow) for n in KEY_ONLY])
def test_key_table_matches_torchvision_state_dict(name):
    from chipjax.models.chain import chain_key_table

    tmodel = meta_torch_model(name)
    spec = get_spec(name)
    ignored = getattr(spec.convert, "keywords", {}).get("ignored_prefixes", ())
    want = {
        k: tuple(v.shape)
        for k, v in tmodel.state_dict().items()
        if not k.endswith("num_batches_tracked") and not k.startswith(ignored)
    }
    got = {k: e.torch_shape for k, e in chain_key_table(spec.name).items()}
    assert got == want
