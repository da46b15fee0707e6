"""Evaluation (``chipjax eval``): methods × layers × metrics over a data source, written as a table; resumable.

What is measured (one *run* is a method at a layer, e.g. ``chip@head``; ``refined-chip`` fuses several
layers, ``refined-chip@blocks.11.expand+blocks.15.expand+head``; RISE works on the input, ``rise@input``):

* **Class-level CHIP** (``chip-class@LAYER``): one model per layer fitted on ``fit_data`` / ``--fit-data``, never
  the evaluated images (refused), then one forward pass per image; see :func:`~chipjax.eval.class_chip.class_chip_models`.
* **Targets.** Every map explains the sample's **ground-truth class** (localisation "GT-known"). A sample
  without a label is explained for the model's top-1 class and counts in no class-dependent metric.
* **Classification**, once per image: the top-5 classes of the model. A prediction is right when it is
  one of the sample's acceptable labels (:func:`chipjax.evalsets.acceptable_labels` for the bundled
  sets, where a photo may count as several ImageNet classes; the label itself for other sources).
* **Boxes** are mapped from the photo to the network's view (``model.view``, a
  :class:`~chipjax.models.preprocess.View`: the ``S × S`` picture the network sees; :meth:`View.boxes`), and every
  map is compared with them there.
* ``pointing``: pointing game, a hit when the map's maximum lies within ``pointing_tolerance`` pixels
  (15, as Zhang et al.) of a ground-truth box (:func:`chipjax.metrics.pointing_game`).
* ``box_acc``: CAM protocol at ``box_threshold`` (0.2 of the map's maximum): the box of the largest
  blob has IoU ≥ 0.5 with a ground-truth box (:func:`chipjax.metrics.localization_correct`).
* ``max_box_acc``: the same accuracy at the best of the thresholds 0, 0.01, …, 0.99, the threshold
  chosen once for the whole set (:func:`chipjax.metrics.max_box_acc`).
* ``max_box_acc_v2``: MaxBoxAccV2 (Choe et al. 2020): min-max normalised maps, the best box among all
  connected components, IoU 0.3, 0.5 and 0.7 each at its best threshold, averaged
  (:func:`chipjax.metrics.max_box_acc_v2`).
* ``pxap``: pixel average precision (Choe et al. 2020) where the source has pixel masks: the composites,
  whose mask is the pasted rectangle (:func:`chipjax.metrics.pxap`); ``–`` elsewhere.
* ``confidence``: average drop (↓) and increase in confidence (↑) of the target's softmax on image × map
  (Grad-CAM++; :func:`chipjax.metrics.confidence_change`).
* ``road`` (not by default): ROAD (Rong et al. 2022) at percentiles 10 … 90: MoRF (↓), LeRF (↑) and
  pytorch-grad-cam's combined ``(LeRF − MoRF)/2`` (↑) (:func:`chipjax.metrics.road`).
* ``top1_loc``: top-1 localisation error, ``1 − mean(top-1 right AND box right)``.
* ``deletion`` / ``insertion``: AUC of the target's softmax probability as pixels are removed / added
  in the map's order (:func:`chipjax.metrics.deletion_insertion`, 21 steps); by default RISE's protocol
  (deletion to zero = the mean colour, insertion from RISE's blur), ``deletion_protocol="chipjax"`` the first
  variant (both from the blurred ``baseline``). The table header names the protocol.
* ``sanity_layers`` (not by default): Adebayo et al.'s sanity check as a curve: every parameterised unit
  re-initialised from the logits down, cascading and independently; Spearman (of the maps and of their
  absolute values), SSIM and HOG similarity per unit (``sanity_layers.csv``, a table in ``results.md``).
* ``sanity`` (not by default): Spearman r between each map and the map of the same run on the model
  whose top ``sanity_top`` parameterised units are re-initialised (lower = the map depends on them).

Every table entry comes with a percentile-bootstrap 95 % interval over the images (``bootstrap``
resamples, seed 0; set-level metrics such as MaxBoxAcc and PxAP are recomputed on every resample).

Output folder: ``results.md`` (the table), ``results.csv``, ``records.jsonl`` (one line per
(image, run)), ``run.json`` (the settings), ``timing.csv``, ``deletion.png``/``insertion.png`` (mean
curves) and ``examples.png`` (overlays of the first images).

Resuming: records are buffered and appended to ``records.jsonl`` (then ``fsync``) every
``checkpoint_every`` records, at the end, and on SIGINT/SIGTERM; a line cut short by a crash is dropped
when the file is read back. Rerunning the same command skips the (batch, run) units whose records are
all on disk and computes the rest. Batches are fixed by the image index (``i // batch_size``) and every
random choice has a fixed seed, so a resumed run writes the same table as an uninterrupted one; a
SIGKILL loses at most the records of one interval. Table files are written to a temporary file and
moved into place (:func:`chipjax.jobs.atomic_write`).

Layout: :mod:`~chipjax.eval.spec` (settings, runs, the run's identity), :mod:`~chipjax.eval.runner`
(:func:`evaluate`: batches, per-image records), :mod:`~chipjax.eval.class_chip` (``chip-class`` fits),
:mod:`~chipjax.eval.sanity` (randomised models), :mod:`~chipjax.eval.store` (``records.jsonl``, ``run.json``)
and :mod:`~chipjax.eval.report` (summaries, tables, CSV, plots). The data sources are :mod:`chipjax.data`
(:func:`~chipjax.data.load_source`), the metrics :mod:`chipjax.metrics`, the command line :mod:`chipjax.cli`.
"""
from __future__ import annotations

from .class_chip import CLASS_CHIP_FIT_OPTIONS, class_chip_models
from .report import (add_tuned_box_accuracy, results_markdown, results_table, sanity_layer_table, summarize,
                     write_outputs)
from .runner import evaluate, make_out_dir, softmax_fn, softmax_scorer
from .sanity import SANITY_MODES, SANITY_SIMILARITIES, SanityModels, parameterised_units, randomized_model
from .spec import (ALL_METHODS, CLASS_CHIP, CONFIG_FILE, DEFAULT_METRICS, DELETION_PROTOCOLS, EXAMPLES_DIR,
                   METRICS, RECORDS_FILE, Run, Settings, check_metrics, check_options, parse_runs, run_config,
                   sample_digests)
from .store import RecordStore, read_records, record_checksum

__all__ = [
    "METRICS", "DEFAULT_METRICS", "DELETION_PROTOCOLS", "ALL_METHODS", "CLASS_CHIP", "RECORDS_FILE", "CONFIG_FILE",
    "EXAMPLES_DIR", "Settings", "Run", "parse_runs", "check_metrics", "check_options", "run_config", "sample_digests",
    "evaluate", "make_out_dir", "softmax_scorer", "softmax_fn", "CLASS_CHIP_FIT_OPTIONS", "class_chip_models",
    "SANITY_MODES", "SANITY_SIMILARITIES", "SanityModels", "parameterised_units", "randomized_model",
    "RecordStore", "read_records", "record_checksum",
    "summarize", "add_tuned_box_accuracy", "results_table", "results_markdown", "sanity_layer_table", "write_outputs",
]
