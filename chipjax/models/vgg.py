"""VGG-11/13/16/19, with or without batch norm, in Flax linen, torchvision layout.

NHWC. Every layer of torchvision's ``features`` ``nn.Sequential`` is one *unit*, named
by its index (``"features.0"`` conv, ``"features.1"`` ReLU or BN, …), followed by
``"avgpool"`` (``AdaptiveAvgPool2d((7, 7))`` and a flatten in torch's C, H, W order,
``(B, 25088)``) and ``"classifier"`` (Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear;
dropout is the identity at inference). Alias ``"features"`` names the last features
unit. Variables convert from a torchvision ``state_dict`` with
:func:`convert_vgg`.
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping, Sequence

import flax.linen as nn
import jax

from ..errors import ModelError
from .base import ArchSpec
from .keymap import KeyEntry, convert_state_dict, with_torch_keys
from .layers import AvgPoolFlatten, BatchNorm, MaxPool2d, ReLU, channelwise_units, conv2d, dense
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, mean_std_normalize, resize_crop_view

M = "M"
#: depth -> torchvision's ``cfgs``: conv widths, ``"M"`` for a 2x2 max-pool.
VGG_CONFIGS: Mapping[int, tuple[int | str, ...]] = {
    11: (64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M),
    13: (64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M),
    16: (64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M),
    19: (64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M),
}
#: torchvision's ``nn.init.normal_(linear.weight, 0, 0.01)``.
CLASSIFIER_INIT = nn.initializers.normal(0.01)


class Classifier(nn.Module):
    """torchvision's VGG ``classifier`` at inference: ``(B, 25088) -> (B, num_classes)``.

    Dense layers are named ``"0"``, ``"3"``, ``"6"`` like their torch indices.
    """

    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(dense(4096, CLASSIFIER_INIT, name="0")(x))
        x = nn.relu(dense(4096, CLASSIFIER_INIT, name="3")(x))
        return dense(self.num_classes, CLASSIFIER_INIT, name="6")(x)


def features_plan(config: Sequence[int | str], batch_norm: bool) -> list[tuple[str, Callable[[], nn.Module]]]:
    """``[("features.i", module factory), ...]`` exactly as torchvision's ``make_layers`` numbers them."""
    layers: list[Callable[[], nn.Module]] = []
    for v in config:
        if v == M:
            layers.append(functools.partial(MaxPool2d, kernel_size=2, stride=2))
            continue
        layers.append(functools.partial(conv2d, int(v), 3, 1, 1))
        if batch_norm:
            layers.append(BatchNorm)
        layers.append(ReLU)
    return [(f"features.{i}", make) for i, make in enumerate(layers)]


def vgg_plan(depth: int, batch_norm: bool, num_classes: int = 1000) -> list[tuple[str, Callable[[], nn.Module]]]:
    """``[(unit name, module factory), ...]``, input to output, for VGG-``depth`` (``_bn`` if ``batch_norm``)."""
    if depth not in VGG_CONFIGS:
        raise ModelError(f"no VGG of depth {depth}; choose one of {', '.join(map(str, VGG_CONFIGS))}")
    return features_plan(VGG_CONFIGS[depth], batch_norm) + [
        ("avgpool", functools.partial(AvgPoolFlatten, output_size=(7, 7))),
        ("classifier", functools.partial(Classifier, num_classes=num_classes)),
    ]


class VGG(nn.Module):
    """VGG-``depth``: ``(B, S, S, 3) -> (B, num_classes)``; ``__call__(x, start, stop)`` runs ``units[start:stop]``."""

    depth: int
    batch_norm: bool = False
    num_classes: int = 1000

    def setup(self):
        self.units = [make() for _, make in vgg_plan(self.depth, self.batch_norm, self.num_classes)]

    def __call__(self, x: jax.Array, start: int = 0, stop: int | None = None) -> jax.Array:
        for unit in self.units[start:stop]:
            x = unit(x)
        return x


def relus_before_pools(depth: int, batch_norm: bool) -> list[str]:
    """Names of the ReLU units right before each max-pool of ``features``, input to output."""
    config = VGG_CONFIGS[depth]
    per_conv = 3 if batch_norm else 2
    names, index = [], 0
    for v in config:
        if v == M:
            names.append(f"features.{index - 1}")
            index += 1
        else:
            index += per_conv
    return names


@functools.lru_cache(maxsize=None)
def vgg_key_table(depth: int, batch_norm: bool) -> Mapping[str, KeyEntry]:
    """``{torch key: KeyEntry}`` of torchvision's ``vgg{depth}`` / ``vgg{depth}_bn``."""
    return vgg_spec(depth, batch_norm).key_table()


def convert_vgg(state_dict: Mapping, depth: int, batch_norm: bool = False) -> dict:
    """torchvision ``vgg{depth}[_bn]().state_dict()`` (as arrays) -> Flax variables of :class:`VGG`."""
    return convert_state_dict(state_dict, vgg_key_table(depth, batch_norm), f"vgg{depth}_bn" if batch_norm else f"vgg{depth}")


def vgg_spec(depth: int, batch_norm: bool = False) -> ArchSpec:
    """The :class:`ArchSpec` of torchvision's ``vgg{depth}`` / ``vgg{depth}_bn`` (224 px, resize 256, mean/std)."""
    units = tuple(name for name, _ in vgg_plan(depth, batch_norm))
    last_features = [u for u in units if u.startswith("features.")][-1]
    stages = tuple(relus_before_pools(depth, batch_norm)[-3:])
    spec = ArchSpec(
        name=f"vgg{depth}_bn" if batch_norm else f"vgg{depth}",
        make_module=functools.partial(VGG, depth=depth, batch_norm=batch_norm),
        units=units,
        aliases={"features": last_features},
        input_size=224,
        view=resize_crop_view(224, 256),
        normalize=mean_std_normalize(IMAGENET_MEAN, IMAGENET_STD),
        pretrained=None,
        default_layer=stages[-1],
        stage_layers=stages,
        channelwise_units=channelwise_units(vgg_plan(depth, batch_norm)),
    )
    return with_torch_keys(spec)
