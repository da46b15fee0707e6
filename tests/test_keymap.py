"""chipjax.models.keymap: the one key-table scheme, read (torch -> Flax) and written (Flax -> torch).

The exporter is checked against independent references: torchvision's own modules (``load_state_dict``
in strict mode takes what we write, and then computes our logits) and the shipped EfficientNet-Lite0 file.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import torchvision
from flax.traverse_util import flatten_dict

import chipjax as cj
from chipjax.errors import WeightsError
from chipjax.io import read_state_dict
from chipjax.models import efficientnet
from chipjax.models.base import Model
from chipjax.models.keymap import KeyEntry, convert_state_dict, export_state_dict

jax.config.update("jax_default_matmul_precision", "highest")


def _without_counters(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vgg11_bn"])
def test_exported_random_init_loads_strictly_into_torchvision_and_gives_our_logits(name):
    model = cj.load_model(name, weights=None, seed=3)
    state = model.torch_state_dict()
    net = getattr(torchvision.models, name)(weights=None).eval()
    want = _without_counters(net.state_dict())
    assert {k: v.shape for k, v in state.items()} == {k: tuple(v.shape) for k, v in want.items()}
    missing, unexpected = net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    ours = np.asarray(model(x))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_export_of_the_shipped_lite0_is_the_shipped_file():
    model = cj.load_model("efficientnet_lite0")
    shipped = _without_counters(read_state_dict(efficientnet.pretrained_path(0)))
    exported = model.torch_state_dict()
    assert set(exported) == set(shipped)
    for key, value in shipped.items():
        np.testing.assert_array_equal(exported[key], np.asarray(value, np.float32), err_msg=key)


def test_read_after_write_is_the_identity_for_every_layout():
    table = {
        "conv.weight": KeyEntry(("params", "conv", "kernel"), "conv", (4, 3, 2, 2)),
        "dw.weight": KeyEntry(("params", "dw", "kernel"), "dw", (3, 1, 5, 5)),
        "fc.weight": KeyEntry(("params", "fc", "kernel"), "linear", (7, 4)),
        "bn.running_mean": KeyEntry(("batch_stats", "bn", "mean"), "same", (4,)),
    }
    rng = np.random.default_rng(1)
    state = {k: rng.normal(size=e.torch_shape).astype(np.float32) for k, e in table.items()}
    variables = convert_state_dict(state, table, "toy")
    flat = flatten_dict(variables)
    assert flat[("params", "conv", "kernel")].shape == (2, 2, 3, 4)
    assert flat[("params", "dw", "kernel")].shape == (5, 5, 3)
    # torch's conv2d weight[o, i, h, w] sits at Flax kernel[h, w, i, o]
    assert flat[("params", "conv", "kernel")][1, 0, 2, 3] == state["conv.weight"][3, 2, 1, 0]
    back = export_state_dict(variables, table)
    assert set(back) == set(state)
    for key in state:
        np.testing.assert_array_equal(back[key], state[key])


def test_export_names_a_missing_variable_and_an_architecture_without_a_table():
    model = cj.load_model("resnet18", weights=None)
    variables = {"params": dict(model.variables["params"]), "batch_stats": model.variables["batch_stats"]}
    del variables["params"]["units_0"]
    with pytest.raises(WeightsError, match=r"lack params/units_0/.*torch key '(conv1|bn1)\."):
        export_state_dict(variables, model.spec.key_table())
    import dataclasses

    bare = Model(dataclasses.replace(model.spec, key_table=None), model.variables, "random")
    with pytest.raises(WeightsError, match="no torch key table"):
        bare.torch_state_dict()
