"""The ``chipjax`` command: ``explain | predict | layers | convert | fit | eval``.

Every failure the user can fix ends with one line on stderr and exit code 2.

Over 500 lines on purpose: every sub-command's flags and entry point, so the whole command line reads in one
place; ``eval`` is one block at the end (its parser, its option parsing and :func:`cmd_eval`).
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
from typing import Mapping, Sequence

from .errors import ChipjaxError, InputError
from .options import ChipOptions, FitOptions, add_flags, checked_values, flag_of, option_names, split_items

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


# ---------------------------------------------------------------------------------------------- eval
# The ``eval`` sub-command (chipjax.eval): its parser, its options and the command, in one block.
def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``eval`` sub-command to an argparse ``subparsers`` object; returns its parser."""
    from .eval.spec import ALL_METHODS, DEFAULT_METRICS, METRICS, Settings

    p = subparsers.add_parser(
        "eval", help="evaluate methods × layers × metrics over a data set (table, CSV, plots; resumable)",
        description="Explain every image of a data set for its ground-truth class with each method at each layer, "
                    "score the maps (pointing game, CAM box accuracy, MaxBoxAcc, top-1 localisation error, "
                    "deletion/insertion AUC, sanity check) and write results.md, results.csv and plots to --out. "
                    "A killed run continues where it stopped when the same command is run again.")
    p.add_argument("--data", default="photos",
                   help="photos | composites | two-object | FOLDER | tfds:NAME_OR_DIR | ilsvrc:IMAGES_DIR (default photos)")
    p.add_argument("--num-images", type=int, default=None,
                   help="use the first N images (composites: how many to make; default 200)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the composites (default 0)")
    p.add_argument("--boxes", default=None, help="ILSVRC boxes: XML folder or LOC_val_solution.csv")
    p.add_argument("--split", default="validation", help="tfds split (default validation)")
    p.add_argument("--methods", default=ALL_METHODS,
                   help="comma-separated methods, each optionally @LAYER (refined-chip@A+B+C); default: all. "
                        "chip-class@LAYER: class-level CHIP fitted on --fit-data (one forward pass per image)")
    p.add_argument("--layers", default=None,
                   help="comma-separated taps crossed with the methods given without @ (default: the model's default)")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help=f"comma-separated from {', '.join(METRICS)}, or 'all' (default: all but sanity)")
    p.add_argument("--fit-data", default=None,
                   help="chip-class@LAYER: the data its class-level model is fitted on, disjoint from --data "
                        "(FOLDER | ilsvrc:DIR | tfds:NAME | composites, with --fit-data-seed)")
    p.add_argument("--fit-data-seed", type=int, default=1, help="seed of --fit-data composites (default 1)")
    p.add_argument("--fit-num-images", type=int, default=None,
                   help="fit on N images spread evenly over --fit-data (composites: how many to make)")
    p.add_argument("--fit-split", default="train", help="tfds split of --fit-data (default train)")
    p.add_argument("--fit-labels", default=None, help="labels file for a --fit-data FOLDER")
    p.add_argument("--fit-boxes", default=None, help="ILSVRC boxes of an ilsvrc: --fit-data")
    p.add_argument("--masks", type=int, default=None, help="number of masks for chip, refined-chip and rise")
    p.add_argument("--keep-prob", type=float, default=None, help="CHIP channel keep probability")
    p.add_argument("--lam-ratio", type=float, default=None, help="CHIP λ as a fraction of λ_max")
    p.add_argument("--score", default=None, help="CHIP score: prob | logit | logprob")
    p.add_argument("--seed", type=int, default=None, help="mask seed of chip, refined-chip and rise")
    p.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="any method option, e.g. scorecam.chunk_size=32 (repeatable; VALUE read as JSON)")
    p.add_argument("--batch-size", type=int, default=Settings.batch_size, help="images explained together")
    p.add_argument("--steps", type=int, default=Settings.deletion_steps, help="deletion/insertion curve points")
    p.add_argument("--baseline", default=Settings.baseline,
                   help="baseline of the chipjax deletion/insertion protocol: blur | constant")
    p.add_argument("--deletion-protocol", default=Settings.deletion_protocol,
                   help="deletion/insertion: rise (RISE's reference: deletion to zero, insertion from a blur; default) "
                        "| chipjax (the first variant: --baseline both ways)")
    p.add_argument("--bootstrap", type=int, default=Settings.bootstrap,
                   help="bootstrap resamples of the 95%% intervals in the table (default 1000; 0: none)")
    p.add_argument("--threshold", type=float, default=Settings.box_threshold, help="CAM box threshold (default 0.2)")
    p.add_argument("--tolerance", type=float, default=Settings.pointing_tolerance, help="pointing-game tolerance, px")
    p.add_argument("--examples", type=int, default=Settings.num_examples, help="images in examples.png")
    p.add_argument("--sanity-top", type=int, default=Settings.sanity_top,
                   help="parameterised units re-initialised for the sanity metric (default 2: head and fc)")
    p.add_argument("--tune", default=None, metavar="DATA",
                   help="tune each run's box threshold on this separate split (same forms as --data; 'composites' "
                        "uses --data-seed + 1) and report the box accuracy at it on --data")
    p.add_argument("--sanity-depth", type=int, default=Settings.sanity_depth,
                   help="units from the logits down that the sanity_layers metric randomises (default 0: all)")
    p.add_argument("--checkpoint-every", type=int, default=16, help="records between checkpoints (default 16)")
    p.add_argument("--restart", action="store_true", help="discard the results already in --out and start over")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable samples (listed in results.md and on stderr) instead of stopping at the first")
    p.add_argument("--out", default="chipjax_eval", help="output folder (default chipjax_eval)")
    p.add_argument("--model", default="efficientnet_lite0", help="zoo model name (default: efficientnet_lite0)")
    p.add_argument("--weights", default="pretrained",
                   help="'pretrained' (shipped weights), 'none' (random init) or a checkpoint path")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    p.add_argument("-v", "--verbose", action="store_true", help="log every finished unit")
    return p


def eval_options(args, runs: Sequence) -> dict[str, dict]:
    """``{method: options}`` from the command line (``runs``: :class:`chipjax.eval.Run`): shared flags go to the
    methods that take them."""
    from .eval.spec import CLASS_CHIP

    methods = {r.method for r in runs}
    shared = {"num_masks": (args.masks, ("chip", "refined-chip", "rise", CLASS_CHIP)),
              "keep_prob": (args.keep_prob, ("chip", "refined-chip", CLASS_CHIP)),
              "lam_ratio": (args.lam_ratio, ("chip", "refined-chip", CLASS_CHIP)),
              "score": (args.score, ("chip", "refined-chip", CLASS_CHIP)),
              "seed": (args.seed, ("chip", "refined-chip", "rise", CLASS_CHIP))}
    out: dict[str, dict] = {}
    for name, (value, takers) in shared.items():
        if value is None:
            continue
        if not methods & set(takers):
            raise InputError(f"--{name.replace('num_masks', 'masks').replace('_', '-')} applies to "
                             f"{', '.join(takers)}, none of which is evaluated")
        for m in takers:
            if m in methods:
                out.setdefault(m, {})[name] = value
    for method, opts in split_items(args.option).items():
        out.setdefault(method, {}).update(opts)
    return check_eval_options(out)


def check_eval_options(options: Mapping[str, Mapping]) -> dict[str, dict]:
    """Every ``{method: {option: value}}`` checked before any work against the method's options object
    (:mod:`chipjax.options`; class-level CHIP takes CHIP's): a known method, an option it takes, a value of
    the option's type and range. ``chip_model`` (a folder) is checked when it is loaded."""
    from .eval.spec import CLASS_CHIP
    from .methods import METHODS

    known = (*METHODS, CLASS_CHIP)
    out: dict[str, dict] = {}
    for method, opts in options.items():
        if method not in known:
            raise InputError(f"options given for unknown method {method!r}; methods: {', '.join(known)}")
        values = dict(opts)
        folder = {"chip_model": values.pop("chip_model")} if method == "chip" and "chip_model" in values else {}
        out[method] = {**checked_values("chip" if method == CLASS_CHIP else method, values), **folder}
    return out


def cmd_eval(args) -> int:
    """The ``eval`` sub-command (see :func:`add_eval_parser`)."""
    from .data import EvalSource, exact_label, load_source
    from .eval import RECORDS_FILE, Settings, check_metrics, evaluate, make_out_dir, parse_runs, read_records, \
        results_table
    from .models import load_model
    from .options import check_option

    settings = Settings(box_threshold=args.threshold, pointing_tolerance=args.tolerance, deletion_steps=args.steps,
                        baseline=args.baseline, deletion_protocol=args.deletion_protocol, bootstrap=args.bootstrap,
                        batch_size=args.batch_size, num_examples=args.examples,
                        sanity_top=args.sanity_top, sanity_depth=args.sanity_depth).check()
    metrics = check_metrics(args.metrics)
    for name in ("masks", "keep_prob", "lam_ratio", "score", "seed", "num_images", "data_seed", "checkpoint_every"):
        if getattr(args, name) is not None:
            check_option("num_masks" if name == "masks" else name, getattr(args, name))
    check_eval_options(split_items(args.option))
    make_out_dir(args.out, create=False)  # a file or an unwritable place, before the data and the model load
    source = load_source(args.data, num_images=args.num_images, seed=args.data_seed, boxes=args.boxes,
                         split=args.split)
    weights = None if str(args.weights).lower() == "none" else args.weights
    model = load_model(args.model, weights=weights)
    runs = parse_runs(args.methods, args.layers, model)
    options = eval_options(args, runs)
    fit_data = None
    if args.fit_data is not None:
        from .fit import fit_data_source

        samples, data_id = fit_data_source(args.fit_data, labels_file=args.fit_labels, boxes=args.fit_boxes,
                                           split=args.fit_split, num_images=args.fit_num_images,
                                           seed=args.fit_data_seed)
        fit_data = EvalSource(samples, data_id, exact_label)
    try:
        result = evaluate(model, source, methods=[r.key for r in runs], metrics=metrics, options=options,
                          out_dir=args.out, resume=not args.restart, progress=not args.quiet,
                          checkpoint_every=args.checkpoint_every, settings=settings, fit_data=fit_data,
                          tune_source=None if args.tune is None else
                          load_source(args.tune, num_images=args.num_images, seed=args.data_seed + 1,
                                      boxes=args.boxes, split=args.split),
                          skip_bad=getattr(args, "skip_bad", False))
    except KeyboardInterrupt:
        done = len(read_records(os.path.join(args.out, RECORDS_FILE)))
        print(f"chipjax: interrupted; {done} results are saved in {args.out}; run the same command to continue",
              file=sys.stderr)
        return 130
    if not args.quiet:
        print(results_table(result["summary"], metrics, settings), end="")
        print(f"wrote {os.path.join(args.out, 'results.md')} ({result['computed']} results computed now)")
    for kind in ("skipped", "dropped"):
        names = result.get(kind) or {}
        if names:
            listed = "; ".join(f"{n}: {why}" for n, why in list(names.items())[:10])
            print(f"chipjax: note: {len(names)} sample(s) {kind}{' from the box metrics' if kind == 'dropped' else ''}"
                  f" ({listed}{'; ...' if len(names) > 10 else ''}); all are listed in "
                  f"{os.path.join(args.out, 'results.md')}", file=sys.stderr)
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
