"""The shape-annotated public signatures (chipjax.shapes): they resolve, and calls satisfy them at run time."""
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from beartype import beartype
from jaxtyping import AbstractArray, TypeCheckError, jaxtyped

import chipjax as cj
from chipjax import chip, heatmaps, methods, solvers
from chipjax.models.base import Model

#: public function -> its parameters (and "return") that carry array shapes
ANNOTATED = {
    methods.explain: ("x", "return"),
    methods.resolve_targets: ("logits", "return"),
    Model.__call__: ("x", "return"),
    Model.preprocess: ("return",),
    solvers.lasso: ("G", "R", "W0", "return"),
    solvers.lasso_with_info: ("G", "R", "W0"),
    solvers.lambda_max: ("R", "return"),
    solvers.top_eigenvalue: ("G", "return"),
    heatmaps.weighted_channel_sum: ("features", "weights", "return"),
    heatmaps.upsample: ("maps", "return"),
    heatmaps.normalize01: ("maps", "return"),
    heatmaps.heatmap: ("features", "weights", "return"),
    chip.chip_maps: ("x", "targets", "return"),
    chip.fuse_maps: ("return",),
    cj.CHIP.explain: ("x", "targets", "return"),
    cj.CHIP.explain_features: ("features", "targets", "return"),
}


def _array_types(hint) -> list:
    """The jaxtyping array types inside a hint (through ``X | None`` and other unions)."""
    if isinstance(hint, type) and issubclass(hint, AbstractArray):
        return [hint]
    return [t for arg in typing.get_args(hint) for t in _array_types(arg)]


@pytest.mark.parametrize("fn", list(ANNOTATED), ids=lambda f: f.__qualname__)
def test_public_signature_names_its_array_shapes(fn):
    hints = typing.get_type_hints(fn)
    for name in ANNOTATED[fn]:
        found = _array_types(hints.get(name))
        assert found, f"{fn.__qualname__}: {name} is not a shape-annotated array ({hints.get(name)!r})"
        assert all(t.dim_str for t in found) or name == "return" and fn is solvers.top_eigenvalue


def checked(fn):
    """``fn`` with its annotations enforced (shapes consistent across arguments and the result)."""
    return jaxtyped(typechecker=beartype)(fn)


@pytest.fixture(scope="module")
def small_tap(small_cnn):
    module = small_cnn
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 12, 3))
    return cj.tap_module(module, "conv2", x, module.init(jax.random.PRNGKey(1), x)), x


@pytest.mark.parametrize("method", ["gradcam", "chip"])
def test_explain_returns_maps_of_its_input_size_as_annotated(small_tap, method):
    tap, x = small_tap
    maps = checked(methods.explain)(tap, x, method=method, **({"num_masks": 32} if method == "chip" else {}))
    assert maps.shape == (2, 16, 12)
    # the same call on an input of another batch size keeps B consistent too
    assert checked(methods.explain)(tap, np.asarray(x[:1]), method=method,
                                    **({"num_masks": 32} if method == "chip" else {})).shape == (1, 16, 12)


def test_solvers_and_heatmaps_satisfy_their_annotations():
    rng = np.random.default_rng(0)
    M = rng.integers(0, 2, (64, 6)).astype(np.float32)
    M -= M.mean(0)
    G = M.T @ M / 64
    R = (M.T @ rng.standard_normal((64, 3)) / 64).astype(np.float32)
    W = checked(solvers.lasso)(G, R, 0.01)
    assert W.shape == (6, 3)
    assert checked(solvers.lambda_max)(R).shape == (3,)
    assert checked(solvers.top_eigenvalue)(G).shape == ()
    features = jnp.asarray(rng.random((2, 4, 5, 6)), jnp.float32)
    maps = checked(heatmaps.heatmap)(features, jnp.asarray(rng.random((2, 6)), jnp.float32), (8, 10))
    assert maps.shape == (2, 8, 10)
    assert checked(chip.fuse_maps)([maps, maps]).shape == (2, 8, 10)


def test_the_checker_refuses_shapes_that_do_not_agree():
    """The annotations say something: G (K, K) and R (K, C) must share K; features and weights share B and K."""
    with pytest.raises(TypeCheckError):
        checked(solvers.lasso)(np.eye(4, dtype=np.float32), np.ones((5, 2), np.float32), 0.1)
    with pytest.raises(TypeCheckError):
        checked(heatmaps.heatmap)(jnp.ones((2, 4, 4, 6)), jnp.ones((2, 7)), (8, 8))
    with pytest.raises(TypeCheckError):
        checked(heatmaps.heatmap)(jnp.ones((2, 4, 4, 6)), jnp.ones((3, 6)), (8, 8))
