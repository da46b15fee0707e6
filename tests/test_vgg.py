"""VGG (chipjax.models.vgg) and its torchvision key map against torchvision on CPU."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from test_layers import numpy_state_dict, randomize_batchnorm, torch_unit_outputs

from chipjax.errors import ModelError, WeightsError
from chipjax.models.vgg import convert_vgg, vgg_key_table
from chipjax.models import variable_shapes
from chipjax.models.base import Model, tap_names
from chipjax.models.vgg import vgg_spec

VARIANTS = [(d, bn) for d in (11, 13, 16, 19) for bn in (False, True)]


def torchvision_name(depth: int, batch_norm: bool) -> str:
    return f"vgg{depth}_bn" if batch_norm else f"vgg{depth}"


def torch_vgg(depth: int, batch_norm: bool) -> torch.nn.Module:
    """torchvision VGG, seeded random init, random BN statistics, eval mode (dropout off)."""
    torch.manual_seed(0)
    return randomize_batchnorm(getattr(torchvision.models, torchvision_name(depth, batch_norm))(), seed=1).eval()


@pytest.fixture(scope="module")
def vgg11_pair():
    tmodel = torch_vgg(11, False)
    return tmodel, Model(vgg_spec(11), convert_vgg(numpy_state_dict(tmodel), 11), "torchvision-random")


@pytest.mark.parametrize("depth, batch_norm", VARIANTS)
def test_key_table_matches_torchvision_state_dict(depth, batch_norm):
    with torch.device("meta"):  # shapes only, no memory
        tmodel = getattr(torchvision.models, torchvision_name(depth, batch_norm))()
    want = {k: tuple(v.shape) for k, v in tmodel.state_dict().items() if not k.endswith("num_batches_tracked")}
    got = {k: entry.torch_shape for k, entry in vgg_key_table(depth, batch_norm).items()}
    assert got == want


@pytest.mark.parametrize("depth, batch_norm", VARIANTS)
def test_units_are_torchvision_modules_and_stages_precede_pools(depth, batch_norm):
    spec = vgg_spec(depth, batch_norm)
    with torch.device("meta"):
        features = getattr(torchvision.models, torchvision_name(depth, batch_norm))().features
    assert spec.units == tuple(f"features.{i}" for i in range(len(features))) + ("avgpool", "classifier")
    pools = [i for i, m in enumerate(features) if isinstance(m, torch.nn.MaxPool2d)]
    assert all(isinstance(features[i - 1], torch.nn.ReLU) for i in pools)
    assert spec.stage_layers == tuple(f"features.{i - 1}" for i in pools[-3:])
    assert spec.default_layer == spec.stage_layers[-1]
    assert spec.aliases == {"features": f"features.{len(features) - 1}"}
    assert spec.name == torchvision_name(depth, batch_norm)


def test_layer_names_and_order():
    spec = vgg_spec(16)
    layers = tap_names(spec.units, spec.aliases)  # what Model.layers lists
    assert layers[:2] == ["features.0", "features.1"]
    assert layers[-3:] == ["features.30", "features", "avgpool"]
    assert layers.index("features.28") < layers.index("features.29") == layers.index("features.28") + 1
    assert spec.default_layer == "features.29"
    assert spec.stage_layers == ("features.15", "features.22", "features.29")


@pytest.mark.parametrize("depth, batch_norm", [(11, False), (16, True)])
def test_logits_match_torchvision(rng, vgg11_pair, depth, batch_norm):
    if (depth, batch_norm) == (11, False):
        tmodel, model = vgg11_pair
    else:
        tmodel = torch_vgg(depth, batch_norm)
        model = Model(vgg_spec(depth, batch_norm), convert_vgg(numpy_state_dict(tmodel), depth, batch_norm), "torchvision-random")
    # 64 px: features end at 2x2, so avgpool repeats cells into 7x7 (torch's overlapping bins)
    x = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    out = np.asarray(model(jnp.asarray(x)))
    err = np.abs(out - ref).max()
    print(f"{model.name} max-abs logit error {err:.2e} (max |logit| {np.abs(ref).max():.2f})")
    assert out.shape == (2, 1000)
    assert err <= 1e-4
    assert err <= 2e-5 * np.abs(ref).max()


def test_every_unit_tap_matches_torch_module_output(rng, vgg11_pair):
    tmodel, model = vgg11_pair
    units = model.spec.units[:-1]
    x = rng.standard_normal((1, 32, 32, 3)).astype(np.float32)
    ref = torch_unit_outputs(tmodel, units, x)
    for unit in units:
        a = np.asarray(model.tap(unit).head_fn(model.variables, jnp.asarray(x)))  # eager: no compile per tap
        assert a.shape == ref[unit].shape, unit
        np.testing.assert_allclose(a, ref[unit], atol=1e-4, err_msg=unit)


def test_tail_of_head_is_the_model_at_every_tap(rng, vgg11_pair):
    _, model = vgg11_pair
    x = jnp.asarray(rng.standard_normal((1, 32, 32, 3)).astype(np.float32))  # one image: the classifier dominates
    logits = np.asarray(model(x))
    for layer in model.layers:
        tap = model.tap(layer)
        out = tap.tail_fn(model.variables, tap.head_fn(model.variables, x))
        np.testing.assert_allclose(np.asarray(out), logits, rtol=1e-5, atol=1e-5 * np.abs(logits).max(), err_msg=layer)


def test_module_inits_at_64_px_with_the_converted_structure():
    spec = vgg_spec(11, batch_norm=True)
    shapes = variable_shapes(spec)  # traces module.init on (1, 64, 64, 3), as the registry does
    assert set(shapes) == {"params", "batch_stats"}
    assert shapes["params"]["units_0"]["kernel"].shape == (3, 3, 3, 64)
    assert shapes["params"][f"units_{len(spec.units) - 1}"]["0"]["kernel"].shape == (512 * 7 * 7, 4096)
    assert set(variable_shapes(vgg_spec(11))) == {"params"}


def test_unknown_depth_is_a_model_error():
    with pytest.raises(ModelError, match="11, 13, 16, 19"):
        vgg_spec(12)


def test_conversion_errors_name_the_key(vgg11_pair):
    state = numpy_state_dict(vgg11_pair[0])
    with pytest.raises(WeightsError, match=r"'classifier\.6\.weight' has shape \(10, 4096\).*\(1000, 4096\)"):
        convert_vgg(dict(state, **{"classifier.6.weight": np.zeros((10, 4096), np.float32)}), 11)
    with pytest.raises(WeightsError, match=r"features\.1\.running_mean"):  # plain weights for a _bn model
        convert_vgg(state, 11, batch_norm=True)
    with pytest.raises(WeightsError, match=r"features\.3\.bias"):
        convert_vgg({k: v for k, v in state.items() if k != "features.3.bias"}, 11)
