"""The ``chipjax`` command: ``explain | predict | layers | convert | fit``.

Every failure the user can fix ends with one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
from typing import Sequence

from .errors import ChipjaxError, InputError
from .options import ChipOptions, FitOptions, add_flags, checked_values, flag_of, option_names

log = logging.getLogger("chipjax")

DEMO_PHOTO = "skimage:coffee"
#: The options of ``chipjax explain`` and ``chipjax fit`` that are flags, generated from chipjax.options.
EXPLAIN_FLAGS = ("num_masks", "keep_prob", "lam_ratio", "seed", "memory_budget")
FIT_FLAGS = ("num_masks", "keep_prob", "lam_ratio", "batch_size", "seed", "checkpoint_every", "num_workers", "classes")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the usage block too)
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="efficientnet_lite0", help="zoo model name (default: efficientnet_lite0)")
    p.add_argument("--weights", default="pretrained",
                   help="'pretrained' (shipped weights), 'none' (random init) or a checkpoint path "
                        "(.pth/.safetensors/.npz or a folder from `chipjax convert`)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notes")
    p.add_argument("-v", "--verbose", action="store_true", help="log timings")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="chipjax", description="Explain what a convolutional network looks at, with CHIP.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    p = sub.add_parser("explain", help="heat map of an image for a class, written as a PNG overlay",
                       description="Explain IMAGE (or a bundled photo with --demo) and write an overlay PNG.")
    p.add_argument("image", nargs="?", help="image file (PNG, JPEG, ...)")
    p.add_argument("--demo", action="store_true", help=f"explain the bundled photo ({DEMO_PHOTO})")
    p.add_argument("--method", default="chip", help="chip | refined-chip | cam | gradcam | gradcam++ | scorecam | ablationcam | rise")
    p.add_argument("--layer", default=None, help="tap name (see `chipjax layers`); several, comma-separated, for refined-chip")
    p.add_argument("--class", dest="target", default=None, help="class index or name (default: top-1)")
    add_flags(p, ChipOptions, EXPLAIN_FLAGS, note="; CHIP (--masks and --seed also RISE)")
    p.add_argument("--chip-model", default=None, help="folder of a class-level CHIP model from `chipjax fit`")
    p.add_argument("--out", default=None, help="output PNG (default: chipjax_<image>.png)")
    _model_args(p)
    _common(p)

    p = sub.add_parser("predict", help="top-5 classes of an image", description="Print the top-5 classes of IMAGE.")
    p.add_argument("image", help="image file")
    p.add_argument("-k", "--top", type=int, default=5, help="how many classes (default 5)")
    _model_args(p)
    _common(p)

    p = sub.add_parser("layers", help="list the tappable layers of a model",
                       description="List every tap name, input to output, with its feature-map shape.")
    p.add_argument("--shapes", action="store_true", help="also print each tap's feature-map shape")
    _model_args(p)
    _common(p)

    p = sub.add_parser("convert", help="convert a torchvision checkpoint to an orbax folder",
                       description="Read a torchvision state dict (.pth/.safetensors/.npz) with no code execution "
                                   "and write the Flax variables as an orbax checkpoint.")
    p.add_argument("--arch", required=True, help="architecture, e.g. resnet50, vgg16_bn")
    p.add_argument("src", help="input checkpoint")
    p.add_argument("dst", help="output folder (orbax)")
    _common(p)

    p = sub.add_parser("fit", help="fit a class-level CHIP model over a data set",
                       description="Stream CHIP statistics over a data set (an image folder with one sub-folder per "
                                   "class or a boxes.json list, a folder with --labels FILE, ilsvrc:IMAGES_DIR with "
                                   "--boxes, tfds:NAME_OR_DIR, or a bundled set) and save the class-level model. "
                                   "Unreadable images are skipped and listed at the end.")
    p.add_argument("data", help="FOLDER | ilsvrc:IMAGES_DIR | tfds:NAME_OR_DIR | composites | two-object | photos")
    p.add_argument("--labels", default=None, help="labels file for FOLDER: lines 'relative/path.jpg LABEL'")
    p.add_argument("--boxes", default=None, help="ILSVRC boxes (XML folder or LOC_val_solution.csv)")
    p.add_argument("--split", default="train", help="tfds split (default train)")
    p.add_argument("--num-images", type=int, default=None,
                   help="use N images spread evenly over the data, so every class keeps its share (composites: how many)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the bundled composites (default 0)")
    p.add_argument("--dtype", default=None, help="tail compute dtype, e.g. bfloat16 (default float32)")
    p.add_argument("--out", required=True, help="output folder for the CHIP model")
    p.add_argument("--layer", default=None, help="tap name (default: the model's last conv stage)")
    add_flags(p, FitOptions, FIT_FLAGS, defaults=True)
    p.add_argument("--checkpoint", default=None,
                   help="progress folder (default: one under ~/.cache/chipjax/fit named by the data and settings, "
                        "not by --out); rerun to resume")
    _model_args(p)
    _common(p)

    from .evaluate import add_eval_parser

    add_eval_parser(sub)
    return parser


def _load_model(args):
    weights = None if str(args.weights).lower() == "none" else args.weights
    return _cached_model(args.model, weights)


@functools.lru_cache(maxsize=2)
def _cached_model(name: str, weights):
    from .models import load_model

    return load_model(name, weights=weights)


def check_explain_args(args) -> None:
    """Refuse a bad method before any model is loaded (the options: :func:`method_options`)."""
    from .methods import METHODS

    if args.method not in METHODS:
        raise InputError(f"unknown method {args.method!r}; choose one of {', '.join(METHODS)}")


def _demo_image():
    import skimage.data

    return skimage.data.coffee()


def method_options(args) -> dict:
    """The explain options a method takes, from the command line, checked and typed (unset ones keep the
    library defaults); a flag the method does not take is refused, except ``--seed`` (every method accepts it)."""
    given = {name: getattr(args, name) for name in EXPLAIN_FLAGS if getattr(args, name) is not None}
    takes = option_names(args.method)
    for name in given:
        if name not in takes and name != "seed":
            raise InputError(f"{flag_of(name)} does not apply to --method {args.method}")
    return checked_values(args.method, {k: v for k, v in given.items() if k in takes}, from_text=True)


def _check_out_path(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise InputError(f"output folder {folder} does not exist; create it or choose another --out")
    if not os.access(folder, os.W_OK):
        raise InputError(f"output folder {folder} is not writable; choose another --out")
    return path


def cmd_explain(args) -> int:
    import numpy as np

    from . import methods as ex
    from . import viz
    from .models.preprocess import to_rgb_uint8

    if args.demo == bool(args.image):
        raise InputError("give an IMAGE or --demo (not both)")
    check_explain_args(args)
    name = "demo" if args.demo else os.path.splitext(os.path.basename(args.image))[0]
    out = _check_out_path(args.out or f"chipjax_{name}.png")
    viz.check_out(out)  # a folder, another extension, ...: refused before the computation
    options = method_options(args)
    rgb = _demo_image() if args.demo else to_rgb_uint8(args.image)
    model = _load_model(args)
    x = model.preprocess(rgb)
    layer = args.layer
    if args.method == "refined-chip" and layer:
        layer = [l.strip() for l in layer.split(",")]
    if args.chip_model:
        from .chip import CHIP

        cm = CHIP.load(args.chip_model, model=model, layer=args.layer)
        options = {"chip_model": cm}
        layer = cm.layer
    used_layer = layer if layer is not None else (list(model.spec.stage_layers) if args.method == "refined-chip"
                                                  else model.default_layer)
    t0 = time.perf_counter()
    result = ex.explain_details(model, x, method=args.method, layer=layer, target=args.target, **options)
    logits = check_finite_logits(model, np.asarray(result.logits))[0]  # the explanation's own forward pass
    maps, target = np.asarray(result.maps), int(result.targets[0])
    _note_ambiguous_class(args.target, target, model.labels)
    log.info("explained in %.2f s", time.perf_counter() - t0)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    layer_text = ",".join(used_layer) if isinstance(used_layer, list) else used_layer
    if not np.isfinite(maps).all():
        raise ChipjaxError(f"the {args.method} map holds NaN or Inf values; the model or its weights are broken: "
                           f"try another checkpoint")
    viz.overlay(rgb, viz.map_on_photo(maps[0], model.spec.view, rgb.shape[:2]), class_name=model.labels[target],
                score=float(probs[target]), method=args.method, layer=layer_text, out=out)
    if not args.quiet:
        print(f"{model.labels[target]} (class {target}, p={probs[target]:.3f}) — {args.method} @ {layer_text} -> {out}")
    return 0


def finite_logits(model, x):
    """``model(x)`` as numpy ``(B, C)``; :class:`ChipjaxError` when a logit is NaN or Inf (broken weights)."""
    import numpy as np

    return check_finite_logits(model, np.asarray(model(x)))


def check_finite_logits(model, logits):
    """``logits (B, C)`` unchanged; :class:`ChipjaxError` when one is NaN or Inf (broken weights)."""
    import numpy as np

    if not np.isfinite(logits).all():
        raise ChipjaxError(f"{model.name} ({model.weights}) gives NaN or Inf logits for this image; its weights are "
                           f"damaged or diverged: use another checkpoint")
    return logits


def _note_ambiguous_class(given, chosen: int, labels) -> None:
    """When ``--class NAME`` names several classes, say on stderr which one is explained and list the others."""
    if not isinstance(given, str) or given.strip().isdigit() or not labels:
        return
    same = [i for i, l in enumerate(labels) if l.lower() == given.strip().lower()]
    if len(same) > 1:
        others = ", ".join(str(i) for i in same if i != chosen)
        print(f"chipjax: note: {len(same)} classes are named {given!r}; explaining class {chosen}; "
              f"give --class {others} for the other", file=sys.stderr)


def cmd_predict(args) -> int:
    import numpy as np

    from .models.preprocess import to_rgb_uint8
    from .options import check_option

    check_option("top", args.top)
    rgb = to_rgb_uint8(args.image)
    model = _load_model(args)
    logits = finite_logits(model, model.preprocess(rgb))[0]
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    k = max(1, min(args.top, len(probs)))
    for i in np.argsort(-probs)[:k]:
        print(f"{probs[i]:.4f}  {i:4d}  {model.labels[i]}")
    return 0


def cmd_layers(args) -> int:
    model = _load_model(args) if args.shapes else None
    if model is None:
        from .models import get_spec, tap_names

        spec = get_spec(args.model)
        names = tap_names(spec.units, spec.aliases)
        default = spec.default_layer
    else:
        names, default = model.layers, model.default_layer
    shapes = {}
    if args.shapes:
        import jax
        import jax.numpy as jnp

        x = jax.ShapeDtypeStruct((1, model.input_size, model.input_size, 3), jnp.float32)
        for n in names:
            shapes[n] = jax.eval_shape(model.tap(n).head_fn, model.variables, x).shape[1:]
    for n in names:
        mark = "  (default)" if n == default else ""
        shape = f"  {tuple(shapes[n])}" if n in shapes else ""
        print(f"{n}{shape}{mark}")
    return 0


def cmd_convert(args) -> int:
    from . import io as cjio
    from .models import check_variables, get_spec

    spec = get_spec(args.arch)
    _check_out_path(args.dst)
    state = cjio.read_state_dict(args.src)
    variables = check_variables(spec, spec.convert(state), args.src)
    cjio.save_variables(variables, args.dst, {"arch": spec.name, "source": os.path.basename(args.src)})
    if not args.quiet:
        print(f"wrote {spec.name} variables to {args.dst}")
    return 0


def cmd_eval(args) -> int:
    from .evaluate import cmd_eval as run_eval

    return run_eval(args)


def cmd_fit(args) -> int:
    from .fit import check_fit_options, check_fit_out, fit_data_source, fit_source

    opts = check_fit_options(from_text=True, **{name: getattr(args, name) for name in FIT_FLAGS})
    check_fit_out(args.out)
    # a missing or malformed data folder, before the model loads
    source, data_id = fit_data_source(args.data, labels_file=args.labels, boxes=args.boxes, split=args.split,
                                      num_images=args.num_images, seed=args.data_seed)
    model = _load_model(args)
    cm = fit_source(model, source, data_id=data_id, layer=args.layer, progress=not args.quiet,
                    checkpoint_dir=args.checkpoint or "auto", compute_dtype=args.dtype, out=args.out, **opts)
    loader = cm.fit_report["loader"]
    if loader.skipped:
        print(f"chipjax: {loader.summary()}", file=sys.stderr)
    if not args.quiet:
        print(f"fitted CHIP on {cm.num_images} images at {cm.layer} ({cm.fit_report['images_per_s']:.2f} images/s, "
              f"{cm.fit_report['evals_per_s']:,.0f} perturbed evaluations/s); saved to {args.out}")
    return 0


def configure_logging(verbose: bool) -> None:
    """chipjax's own log lines (timings, checkpoints) on stderr with ``--verbose``; other libraries stay quiet."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("chipjax: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    log.propagate = False


COMMANDS = {"explain": cmd_explain, "predict": cmd_predict, "layers": cmd_layers, "convert": cmd_convert,
            "fit": cmd_fit, "eval": cmd_eval}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 2
        configure_logging(args.verbose)
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(str(e), file=sys.stderr)
        return 2
    except ChipjaxError as e:
        print(f"chipjax: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"chipjax: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("chipjax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
