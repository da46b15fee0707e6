"""The array types of the public signatures, with their shapes (jaxtyping): what each letter means.

``B`` images in a batch; ``Sh, Sw`` the network's input size (the zoo's views are square, ``S × S``);
``H, W`` a tapped layer's feature-map size; ``K`` its channels; ``C`` classes (or regression outputs);
``N`` perturbed networks (masks). Inputs accept NumPy or JAX arrays; outputs are JAX arrays.

The annotations are checked at run time only where a caller asks for it, e.g.
``jaxtyping.jaxtyped(typechecker=beartype.beartype)(chipjax.explain)`` (tests/test_shapes.py does); on
their own they cost nothing and let readers and type checkers see the shapes.
"""
from __future__ import annotations

from typing import Union

import jax
import numpy as np
from jaxtyping import Float, Int, Shaped

__all__ = [
    "AnyArray", "Images", "ImagesIn", "Maps", "MapsIn", "LayerMaps", "LayerMapsIn", "Logits", "Targets", "TargetsIn", "Features", "FeaturesIn",
    "ChannelWeights", "Gram", "GramIn", "Cross", "CrossIn", "LassoWeights", "PerClass", "Scalar", "Masks",
]

#: an array from NumPy or JAX, as the public functions accept
AnyArray = Union[jax.Array, np.ndarray]

Images = Float[jax.Array, "B Sh Sw 3"]          # preprocessed images, NHWC
ImagesIn = Float[AnyArray, "B Sh Sw 3"]
Maps = Float[jax.Array, "B Sh Sw"]              # heat maps at the input size, in [0, 1]
MapsIn = Float[AnyArray, "B Sh Sw"]
LayerMaps = Float[jax.Array, "B H W"]           # maps at a layer's resolution (before upsampling)
LayerMapsIn = Float[AnyArray, "B H W"]
Logits = Float[jax.Array, "B C"]
Targets = Int[jax.Array, "B"]                   # one class index per image
TargetsIn = Int[AnyArray, "B"]
Features = Float[jax.Array, "B H W K"]          # a tapped layer's feature maps
FeaturesIn = Float[AnyArray, "B H W K"]
ChannelWeights = Float[AnyArray, "B K"]         # one weight per channel and image
Gram = Float[jax.Array, "K K"]                  # centred mask Gram MᵀM/N
GramIn = Float[AnyArray, "K K"]
Cross = Float[jax.Array, "K C"]                 # centred cross-moment MᵀY/N
CrossIn = Float[AnyArray, "K C"]
LassoWeights = Float[jax.Array, "K C"]          # fitted channel importances, one column per output
PerClass = Shaped[jax.Array, "C"]               # one value per output column
Scalar = Float[jax.Array, ""]
Masks = Float[AnyArray, "N K"]                  # 0/1 channel masks
