"""chipjax.eval.spec: runs (method @ layers) parsed from the command line's forms."""
from __future__ import annotations

import pytest

import chipjax.eval as E
from chipjax.errors import InputError


@pytest.fixture(scope="module")
def lite0():
    from chipjax.models import load_model

    return load_model("efficientnet_lite0")


def test_parse_runs_crosses_methods_and_layers(lite0):
    runs = E.parse_runs("chip,gradcam,refined-chip,rise,cam@head", "head,blocks.15.expand", lite0)
    keys = [r.key for r in runs]
    assert keys == ["chip@head", "chip@blocks.15.expand", "gradcam@head", "gradcam@blocks.15.expand",
                    "refined-chip@blocks.11.expand+blocks.15.expand+head", "rise@input", "cam@head"]
    assert [r.key for r in E.parse_runs(keys, None, lite0)] == keys  # keys parse back to themselves
    with pytest.raises(InputError, match="unknown method"):
        E.parse_runs("lime", None, lite0)
    with pytest.raises(Exception, match="Valid layers"):
        E.parse_runs("chip@nope", None, lite0)

