"""chipjax.options: one options object per method — defaults written once, ranges, the CLI and eval parsers."""
import dataclasses
import inspect

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import chipjax as cj
from chipjax import cams, chip, fit, options
from chipjax.cli import EXPLAIN_FLAGS, FIT_FLAGS, build_parser
from chipjax.errors import InputError
from chipjax.options import (AblationCamOptions, ChipOptions, FitOptions, RiseOptions, ScoreCamOptions, for_method,
                             parse_items)


def _keyword_defaults(fn) -> dict:
    return {n: p.default for n, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("fn, cls", [(chip.chip_maps, ChipOptions), (cams.rise_maps, RiseOptions),
                                     (cams.scorecam_maps, ScoreCamOptions), (cams.ablationcam_maps, AblationCamOptions),
                                     (fit.fit_source, FitOptions), (chip.CHIP.fit, FitOptions)])
def test_public_functions_take_their_defaults_from_the_options_object(fn, cls):
    defaults = _keyword_defaults(fn)
    shared = [f.name for f in dataclasses.fields(cls) if f.name in defaults]
    assert shared, fn
    for name in shared:
        assert defaults[name] == getattr(cls, name), (fn.__qualname__, name)


def test_cli_defaults_and_help_come_from_the_options_objects():
    parser = build_parser()
    fit_args = parser.parse_args(["fit", "photos", "--out", "x"])
    for name in FIT_FLAGS:
        assert getattr(fit_args, name) == getattr(FitOptions, name), name
    explain_args = parser.parse_args(["explain", "--demo"])
    assert all(getattr(explain_args, name) is None for name in EXPLAIN_FLAGS)  # unset: the library's defaults
    help_text = parser._subparsers._group_actions[0].choices["fit"].format_help()
    doc = dataclasses.fields(FitOptions)[[f.name for f in dataclasses.fields(FitOptions)].index("checkpoint_every")]
    assert doc.metadata["doc"] in " ".join(help_text.split())


@pytest.mark.parametrize("method, values, message", [
    ("chip", dict(keep_prob=1.0), "keep_prob"),
    ("chip", dict(lam_ratio=1.0), "lam_ratio"),
    ("chip", dict(num_masks=1), "num_masks"),
    ("chip", dict(num_masks="lots"), "num_masks"),
    ("chip", dict(design="sobol"), "design"),
    ("chip", dict(nonneg="yes"), "nonneg"),
    ("chip", dict(seed="3"), "seed"),  # a number as a string: fine on the command line, refused in the library
    ("refined-chip", dict(fusion="median"), "fusion"),
    ("rise", dict(num_masks=0), "num_masks"),
    ("rise", dict(grid=True), "grid"),
    ("scorecam", dict(channel_softmax=1), "channel_softmax"),
    ("ablationcam", dict(memory_budget="lots"), "memory_budget"),
    ("ablationcam", dict(compute_dtype="int8"), "compute_dtype"),
    ("gradcam", dict(seed=0), "takes no option seed"),
    ("chip", dict(grid=7), "takes no option grid"),
])
def test_bad_options_are_refused_naming_the_option(method, values, message):
    with pytest.raises(InputError, match=message):
        for_method(method, **values)


def test_check_types_the_values():
    o = for_method("chip", num_masks="AUTO", memory_budget="2M", keep_prob=np.float32(0.25))
    assert o.num_masks == "auto" and o.memory_budget == 2 * 2 ** 20 and o.keep_prob == 0.25
    assert options.checked_values("chip", {"seed": "3", "keep_prob": "0.5"}, from_text=True) == {"seed": 3,
                                                                                                   "keep_prob": 0.5}
    with pytest.raises(InputError, match="auto applies to image-level CHIP"):
        FitOptions(num_masks="auto").check()


def test_parse_items_reads_eval_option_items():
    got = parse_items(["chip.seed=3", "scorecam.chunk_size=32", "refined-chip.fusion=mean", "chip.nonneg=true"])
    assert got == {"chip": {"seed": 3, "nonneg": True}, "scorecam": {"chunk_size": 32},
                   "refined-chip": {"fusion": "mean"}}
    for bad, message in [("chip.seed", "METHOD.KEY=VALUE"), ("seed=3", "METHOD.KEY=VALUE"),
                         ("lime.seed=1", "unknown method"), ("gradcam.seed=1", "takes no option"),
                         ("chip.keep_prob=2", "keep_prob")]:
        with pytest.raises(InputError, match=message):
            parse_items([bad])


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), strides=2, name="conv")(x))
        return nn.Dense(5, name="fc")(x.mean(axis=(1, 2)))


def test_explain_checks_its_options_once(monkeypatch):
    module, x = _Tiny(), jnp.ones((1, 16, 16, 3))
    tap = cj.tap_module(module, "conv", x, module.init(__import__("jax").random.PRNGKey(0), x))
    calls = []
    original = options.MethodOptions.check

    def counted(self, from_text=False):
        calls.append(type(self).__name__)
        return original(self, from_text)

    monkeypatch.setattr(options.MethodOptions, "check", counted)
    for method, kw in [("chip", dict(num_masks=16)), ("rise", dict(num_masks=8)), ("ablationcam", {}),
                       ("gradcam", {})]:
        calls.clear()
        maps = cj.explain(tap, x, method=method, **kw)
        assert np.isfinite(np.asarray(maps)).all()
        assert len(calls) == 1, (method, calls)
    calls.clear()
    cams.rise_maps(tap, x, jnp.array([0]), num_masks=8)  # a map function called directly checks for itself
    assert calls == ["RiseOptions"]
