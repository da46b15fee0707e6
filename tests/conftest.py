import os

import jax
import pytest

# References are compared at float32 with exact matmuls (the library itself never touches global config).
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(config, items):
    pass


@pytest.fixture(scope="session")
def rng():
    import numpy as np

    return np.random.default_rng(0)
