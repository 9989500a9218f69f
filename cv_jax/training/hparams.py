"""A finished run's config and final metrics in TensorBoard's HParams dashboard.

Each finished run writes, to its own TensorBoard run (``workdir/tensorboard``, beside its
scalars), an HParams session: the config flattened to dotted keys (``flat_config``) as its
hyper-parameters, and its final metrics (``final_metrics``) as scalars tagged
``hparams/<name>`` at the run's last step. ``tensorboard --logdir`` over a sweep's folder then
lists its runs in the HParams tab, one row per run (docs/integrations.md). Only process 0
writes.

A run writes no experiment summary (tensorboardX's first summary): TensorBoard then builds the
experiment from all the sessions it finds, marking the hyper-parameters that differ between
them and offering every scalar tag as a metric, where one run's experiment summary would fix
the columns for all (TensorBoard reads the first it finds).
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import ml_collections as mlc

from cv_jax.training.metrics import summary_writer

MAX_CHARS = 120  # a longer string value is cut to this many characters, ending in '...'
METRIC_TAG = "hparams/"  # the final metrics' scalar tags: hparams/test_accuracy, ...
# results.json's numbers that are final metrics besides the evaluations' accuracies and losses.
RUN_METRICS = ("train_time_s", "compile_time_s", "images_per_sec", "epochs", "steps",
               "parameters")
_EVALUATION = re.compile(r"_(accuracy|balanced_accuracy|loss)$")


def _short(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS - 3] + "..."


def flat_config(config: mlc.ConfigDict | dict, prefix: str = "") -> dict[str, Any]:
    """Every key of ``config`` by its dotted name ('optimizer.learning_rate'): booleans,
    numbers and strings as they are, tuples and lists as the string of the tuple
    ('(0.4914, 0.4822, 0.4465)'); strings longer than ``MAX_CHARS`` are cut. None values are
    left out."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, (mlc.ConfigDict, dict)):
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float)):
            flat[name] = value
        elif isinstance(value, (tuple, list)):
            flat[name] = _short(str(tuple(value)))
        elif value is not None:
            flat[name] = _short(str(value))
    return flat


def final_metrics(results: dict) -> dict[str, float]:
    """The numbers of a run's results (results.json) that compare runs: every evaluation's
    accuracy, balanced accuracy and loss (test_accuracy, validation_loss, test_ema_accuracy,
    ...) and ``RUN_METRICS``."""
    return {k: float(v) for k, v in results.items()
            if (_EVALUATION.search(k) or k in RUN_METRICS)
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


def write_hparams(workdir: str, config: mlc.ConfigDict, results: dict, step: int) -> None:
    """Writes the HParams session of a finished run to ``workdir/tensorboard``: the
    ``flat_config`` of ``config`` and the ``final_metrics`` of ``results`` at ``step``."""
    if jax.process_index() != 0:
        return
    writer = summary_writer(os.path.join(workdir, "tensorboard"), filename_suffix=".hparams")
    from tensorboardX.summary import hparams  # loaded by summary_writer

    metrics = {METRIC_TAG + k: v for k, v in final_metrics(results).items()}
    _, start, end = hparams(flat_config(config), metrics)  # experiment, session start, end
    try:
        for summary in (start, end):
            writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, step)
    finally:
        writer.close()
