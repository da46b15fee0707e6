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
from chipjax.models.base import Model, tap_names

slow = pytest.mark.slow

#: (zoo name, input side, marks): every new architecture; the fast subset runs by default.
ARCHS = [
    ("resnext50_32x4d", 64, ()),
    ("wide_resnet50_2", 64, (slow,)),
    ("mobilenet_v2", 64, ()),
    ("mobilenet_v3_large", 64, ()),
    ("mobilenet_v3_small", 64, (slow,)),
    ("densenet121", 64, (slow,)),
    ("densenet169", 64, (slow,)),
    ("efficientnet_b0", 64, ()),
    ("efficientnet_b3", 64, (slow,)),
    ("regnet_y_400mf", 64, ()),
    ("regnet_x_400mf", 64, (slow,)),
    ("convnext_tiny", 64, (slow,)),
    ("googlenet", 64, ()),
    ("inception_v3", 75, (slow,)),
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


def run_with_taps(model: Model, layers: list[str], x: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tap values at ``layers`` and the logits, from one compiled run of the unit chain split at those taps."""
    units = model.spec.units
    cuts = sorted({units.index(model.spec.aliases.get(layer, layer)) + 1 for layer in layers})

    @jax.jit
    def run(variables, x):
        outs, start = [], 0
        for stop in cuts + [None]:
            x = model.module.apply(variables, x, start=start, stop=stop)
            outs.append(x)
            start = stop
        return outs

    outs = [np.asarray(o) for o in run(model.variables, jnp.asarray(x))]
    by_cut = dict(zip(cuts, outs))
    return {layer: by_cut[units.index(model.spec.aliases.get(layer, layer)) + 1] for layer in layers}, outs[-1]


@pytest.mark.parametrize("name, size", [pytest.param(n, s, marks=m, id=n) for n, s, m in ARCHS])
def test_logits_and_taps_match_torchvision(name, size):
    tmodel, model = zoo_pair(name)
    x = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)
    ref = torch_logits(tmodel, x)
    modules = dict(tmodel.named_modules())
    layers = [layer for layer in dict.fromkeys((model.default_layer, *model.spec.stage_layers)) if layer in modules]
    ref_taps = torch_unit_outputs(tmodel, layers, x)
    t0 = time.perf_counter()
    taps, out = run_with_taps(model, layers, x)
    seconds = time.perf_counter() - t0
    err = float(np.abs(out - ref).max())
    rel = err / float(np.abs(ref).max())
    print(f"PARITY {name} {size}px max-abs {err:.3e} rel {rel:.3e} max|logit| {np.abs(ref).max():.3f} "
          f"taps {layers} compile+run {seconds:.1f}s")
    assert out.shape == ref.shape == (2, 1000)
    assert np.isfinite(out).all()
    assert rel <= REL_TOL
    for layer in layers:
        assert taps[layer].shape == ref_taps[layer].shape, layer
        tap_err = np.abs(taps[layer] - ref_taps[layer]).max() / np.abs(ref_taps[layer]).max()
        assert tap_err <= REL_TOL, (layer, tap_err)


def test_every_family_names_its_default_and_stage_taps():
    for name, _, _ in ARCHS:
        spec = get_spec(name)
        layers = tap_names(spec.units, spec.aliases)
        assert spec.default_layer in layers, name
        assert set(spec.stage_layers) <= set(layers), name
        assert spec.units[-1] not in layers  # the logits are not a tap
    densenet = tap_names(get_spec("densenet121").units, get_spec("densenet121").aliases)
    assert "features.denseblock4" in densenet and densenet[-2:] == ["relu", "avgpool"]
    mobilenet = tap_names(get_spec("mobilenet_v2").units, get_spec("mobilenet_v2").aliases)
    assert {"features.18", "features.17.conv.0", "features.17.conv.1", "features.17", "features.16"} <= set(mobilenet)
    assert "features.16.conv.0" not in mobilenet  # inside a residual block: the skip would bypass the tap
    assert "layer3" in tap_names(get_spec("resnext50_32x4d").units, get_spec("resnext50_32x4d").aliases)


@pytest.fixture(scope="module")
def mobilenet_state():
    return numpy_state_dict(torch_model("mobilenet_v2"))


def test_missing_key_is_named(mobilenet_state):
    state = dict(mobilenet_state)
    del state["features.17.conv.1.1.running_var"]
    with pytest.raises(WeightsError, match=r"features\.17\.conv\.1\.1\.running_var"):
        get_spec("mobilenet_v2").convert(state)


def test_extra_key_is_named(mobilenet_state):
    state = dict(mobilenet_state, **{"features.19.0.weight": np.zeros((1, 1, 1, 1), np.float32)})
    with pytest.raises(WeightsError, match=r"features\.19\.0\.weight"):
        get_spec("mobilenet_v2").convert(state)


def test_misshaped_key_is_named(mobilenet_state):
    state = dict(mobilenet_state, **{"classifier.1.weight": np.zeros((10, 1280), np.float32)})
    with pytest.raises(WeightsError, match=r"'classifier\.1\.weight' has shape \(10, 1280\).*\(1000, 1280\)"):
        get_spec("mobilenet_v2").convert(state)


def test_another_family_checkpoint_is_refused(mobilenet_state):
    with pytest.raises(WeightsError, match="another architecture"):
        get_spec("mobilenet_v3_large").convert(mobilenet_state)


def test_aux_heads_are_ignored_but_other_extras_named():
    state = numpy_state_dict(torch_model("googlenet"))
    assert any(k.startswith("aux1.") for k in state)
    variables = get_spec("googlenet").convert(state)  # aux1/aux2 keys dropped
    assert "aux1" not in str(jax.tree_util.tree_structure(variables))
    with pytest.raises(WeightsError, match=r"aux3\.fc\.weight"):
        get_spec("googlenet").convert(dict(state, **{"aux3.fc.weight": np.zeros((2, 2), np.float32)}))


def test_load_model_and_cli_convert_read_a_torch_checkpoint(tmp_path):
    from chipjax.cli import main

    tmodel = torch_model("regnet_x_400mf")
    src = tmp_path / "regnet.pth"
    torch.save(tmodel.state_dict(), src)
    want = get_spec("regnet_x_400mf").convert(numpy_state_dict(tmodel))
    from_pth = load_model("regnet_x_400mf", weights=str(src))
    assert main(["convert", "--arch", "regnet_x_400mf", str(src), str(tmp_path / "out"), "--quiet"]) == 0
    from_dir = load_model("regnet_x_400mf", weights=str(tmp_path / "out"))
    for got in (from_pth.variables, from_dir.variables):
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want)
    with pytest.raises(WeightsError, match="regnet_x_400mf"):
        load_model("regnet_y_400mf", weights=str(tmp_path / "out"))


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


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=m, id=n) for n, _, m in ARCHS] + [pytest.param(n, marks=slow) for n in KEY_ONLY]
)
def test_key_table_matches_torchvision_state_dict(name):
    tmodel = meta_torch_model(name)
    spec = get_spec(name)
    ignored = getattr(spec.convert, "keywords", {}).get("ignored_prefixes", ())
    want = {
        k: tuple(v.shape)
        for k, v in tmodel.state_dict().items()
        if not k.endswith("num_batches_tracked") and not k.startswith(ignored)
    }
    got = {k: e.torch_shape for k, e in spec.key_table().items()}
    assert got == want
