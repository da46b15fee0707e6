import jax
import pytest

# References are compared at float32 with exact matmuls (the library itself never touches global config).
# Tests marked ``default_precision`` run instead at jax's default matmul precision, as users get it on
# GPU/TPU (TF32 / bf16 passes there; on CPU "default" is full float32, so there they check the same maths
# under the users' configuration).
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True)
def _matmul_precision(request):
    if request.node.get_closest_marker("default_precision") is None:
        yield
        return
    with jax.default_matmul_precision("default"):
        yield


@pytest.fixture(scope="session")
def rng():
    import numpy as np

    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def small_cnn():
    """A user's own small Flax CNN (conv1 8 ch, conv2 16 ch stride 2, fc 5 classes on the pooled map)."""
    import flax.linen as nn

    class SmallCNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x))
            x = nn.relu(nn.Conv(16, (3, 3), strides=2, name="conv2")(x))
            return nn.Dense(5, name="fc")(x.mean(axis=(1, 2)))

    return SmallCNN()
