"""Class-level CHIP inside an evaluation (``chip-class@LAYER``): one model per layer fitted (or reloaded) on data
disjoint from the evaluated images, then one forward pass per image."""
from __future__ import annotations

import json
import logging
import os
from typing import Mapping, Sequence

from .. import jobs
from ..data import EvalSource, load_source
from ..errors import InputError
from .spec import CLASS_CHIP, CLASS_CHIP_DIR, Run

log = logging.getLogger("chipjax")

#: Options of a ``chip-class`` run that go to the fit (the rest are refused).
CLASS_CHIP_FIT_OPTIONS = ("num_masks", "keep_prob", "lam_ratio", "score", "nonneg", "seed", "batch_size",
                          "chunk_size", "classes", "num_workers")


def _fit_samples(fit_data):
    if isinstance(fit_data, EvalSource):
        return fit_data
    return load_source(fit_data)


def _check_disjoint(fit: EvalSource, evaluated: EvalSource) -> None:
    """Refuse a fit on the evaluated images (same description, or a shared sample name when both are in memory)."""
    from ..data import Source

    if fit.description == evaluated.description:
        raise InputError(f"class-level CHIP would be fitted on the evaluated images ({fit.description}); fit on a "
                         f"disjoint split (composites: another --fit-data-seed)")
    if not isinstance(fit.samples, Source) and not isinstance(evaluated.samples, Source):
        shared = {str(s.name) for s in fit.samples} & {str(s.name) for s in evaluated.samples}
        if shared:
            raise InputError(f"the fit data and the evaluated data share {len(shared)} images (e.g. {sorted(shared)[0]}); "
                             f"fit on a disjoint split")


def class_chip_models(model, runs: Sequence[Run], options: Mapping, fit_data, evaluated: EvalSource, out_dir: str,
                      progress: bool = False) -> tuple[dict, str | None]:
    """Fit (or reload) the class-level CHIP model of every ``chip-class@LAYER`` run.

    Protocol: the model of a layer is fitted on ``fit_data`` (never the evaluated images: the same
    description or a shared sample name is refused) with :func:`chipjax.fit.fit_source` and ``options``
    (:data:`CLASS_CHIP_FIT_OPTIONS`), saved under ``OUT/chip-class/`` (with a resumable ``.partial``
    checkpoint) and reloaded by a resumed evaluation with the same settings.

    Returns ``({layer: CHIP}, description of the fit data)``, or ``({}, None)`` without such runs.
    """
    from .. import io as cjio
    from ..chip import CHIP
    from ..fit import fit_source, remove_checkpoint

    layers = [r.layers[0] for r in runs if r.method == CLASS_CHIP]
    if not layers:
        return {}, None
    if fit_data is None:
        raise InputError(f"{CLASS_CHIP} needs data to fit on, disjoint from the evaluated images: --fit-data SOURCE "
                         f"(e.g. --data composites --fit-data composites --fit-data-seed 1)")
    unknown = sorted(set(options) - set(CLASS_CHIP_FIT_OPTIONS) - {"fit_data"})
    if unknown:
        raise InputError(f"{CLASS_CHIP} options {unknown} are not fit options; use {', '.join(CLASS_CHIP_FIT_OPTIONS)}")
    fit = _fit_samples(fit_data)
    _check_disjoint(fit, evaluated)
    fit_opts = {k: v for k, v in options.items() if k != "fit_data"}
    models = {}
    for layer in layers:
        ident = json.dumps({"layer": layer, "data": fit.description, "n": len(fit.samples), **fit_opts}, sort_keys=True)
        folder = os.path.join(out_dir, CLASS_CHIP_DIR, f"{layer}-{jobs.fingerprint(ident, digits=10)}")
        if cjio.is_variables_dir(folder):
            models[layer] = CHIP.load(folder, model=model, layer=layer)
            continue
        cm = fit_source(model, fit.samples, data_id=fit.description, layer=layer, progress=progress,
                        checkpoint_dir=folder + ".partial", **fit_opts)
        cm.save(folder)
        remove_checkpoint(folder + ".partial")
        log.info("chip-class@%s fitted on %s: %d images, %.1f images/s", layer, fit.description, cm.num_images,
                 cm.fit_report["images_per_s"])
        models[layer] = cm
    _check_fitted_labels(models, evaluated)
    return models, fit.description


def _check_fitted_labels(models: Mapping, evaluated: EvalSource) -> None:
    """Before anything is evaluated: every evaluated class must have had fit images (in-memory sources only;
    a lazily read source is checked image by image as it is explained)."""
    from ..data import Source

    if isinstance(evaluated.samples, Source):
        return
    labels = {int(s.label) for s in evaluated.samples if s.label is not None}
    for layer, cm in models.items():
        if cm.fitted_classes is not None:
            missing = sorted(c for c in labels if not cm.fitted_classes[c])
            if missing:
                raise InputError(f"{CLASS_CHIP}@{layer}: the evaluated classes {missing[:10]} have no images in the fit "
                                 f"data; fit on more images (--fit-num-images) or with --option {CLASS_CHIP}.classes=all")

