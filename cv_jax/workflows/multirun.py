"""Pieces shared by the workflows that train several runs of one config: k-fold
cross-validation (cv_jax.workflows.crossval), ensembles (cv_jax.workflows.ensemble) and
pseudo-labelling
(cv_jax.workflows.pseudo_label).

Each run is a normal ``train.train_and_evaluate`` run in a subfolder of the workflow's workdir,
so it resumes, and a finished one only reports. Arrays a workflow derives from a finished run
(pseudo-labels, boosting weights) are saved beside it and read back on a rerun, so a resumed
workflow trains its later runs on exactly what the first attempt gave them. The workflow writes
``<name>.json`` and ``<name>.md`` into its workdir; both state the hardware, epochs, seeds and
number of runs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from cv_jax import inference
from cv_jax.analysis import report
from cv_jax.config import ConfigError, lookup
from cv_jax.data.dataset import ArrayDataset
from cv_jax.training import train
from cv_jax.training.metrics import classification_metrics

REPO = pathlib.Path(__file__).resolve().parents[2]


def recipe_config(arg: str = "", path: str = "configs/cifar10.py") -> mlc.ConfigDict:
    """``get_config(arg)`` of a config file of this repository, for experiment files that
    build on a recipe (``recipe_config('smoke,epochs=4')``)."""
    spec = importlib.util.spec_from_file_location("recipe_config", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def cli(section: str, workflow: Callable[..., dict], define: Callable[[], None],
        names: Sequence[str], argv: Sequence[str] | None = None) -> None:
    """A workflow's command line: ``--config``, ``--workdir`` and the flags ``names`` that
    ``define()`` adds; runs ``workflow(config, workdir, **workflow_settings(...))``."""
    config_flags.DEFINE_config_file("config", None, "Config file (and :variant).",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory of the runs and the report.")
    define()
    flags.mark_flags_as_required(["config", "workdir"])

    def run(args):
        if len(args) > 1:
            raise app.UsageError(f"Unexpected arguments: {args[1:]}")
        absl_logging.set_verbosity(absl_logging.WARNING)  # quiet orbax/jax INFO chatter
        logging.getLogger("cv_jax").setLevel(logging.INFO)
        config = flags.FLAGS.config
        workflow(config, flags.FLAGS.workdir,
                 **workflow_settings(config, section, flags.FLAGS, names))

    app.run(run, argv=argv or sys.argv)


def workflow_settings(config: mlc.ConfigDict, section: str, flag_values: Any,
                      names: Sequence[str]) -> dict[str, Any]:
    """A workflow's settings: each flag given on the command line, else
    ``config.<section>.<name>`` (an experiment file's choice), else the flag's default."""
    chosen = config.get(section) or {}
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise ConfigError(f"config.{section} has no key(s) {unknown}; its keys are "
                                    f"{sorted(names)}")
    return {name: chosen[name] if name in chosen and not flag_values[name].present
            else flag_values[name].value for name in names}


def variant(config: mlc.ConfigDict, updates: Mapping[str, Any]) -> mlc.ConfigDict:
    """A copy of ``config`` with dotted keys set: ``variant(c, {'dataset.fold': 2})``."""
    copy = config.copy_and_resolve_references()
    for dotted, value in updates.items():
        parent, _, key = dotted.rpartition(".")
        section = lookup(copy, parent) if parent else copy
        section[key] = value
    return copy


def run(config: mlc.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes, or only reports) the run of ``config`` in ``workdir``."""
    os.makedirs(workdir, exist_ok=True)
    return train.train_and_evaluate(config, workdir)


def probabilities(workdir: str, results: dict, images: np.ndarray) -> np.ndarray:
    """Class probabilities [N, K] of ``images`` by the finished run in ``workdir``: the weights
    its ``results`` report (the best checkpoint after early stopping restored it, else the
    latest), evaluated as the run evaluates (normalisation, flip TTA)."""
    which = "best" if results.get("restored_best") else "latest"
    return inference.load(workdir, checkpoint=which, weights="raw").predict(images)


def score(predictions: np.ndarray, dataset: ArrayDataset) -> dict[str, Any]:
    """Accuracy, balanced accuracy, correct and examples of class predictions."""
    metrics = classification_metrics(np.asarray(predictions), np.zeros(len(dataset)),
                                     dataset.labels, dataset.class_names)
    metrics.pop("loss")
    return metrics


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and *sample* standard deviation (ddof=1; None for a single value)."""
    values = np.asarray(values, np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    return {"mean": float(values.mean()), "std": std, "n": len(values)}


def format_mean_std(stats: dict[str, Any]) -> str:
    std = "n/a" if stats["std"] is None else f"{stats['std']:.4f}"
    return f"{stats['mean']:.4f} ± {std}"


def provenance(configs: Sequence[mlc.ConfigDict], results: Sequence[dict]) -> dict[str, Any]:
    """What every report states: hardware, epochs, seeds and the number of runs."""
    return {
        "hardware": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "jax_version": jax.__version__,
        "runs": len(results),
        "epochs": [r["epochs"] for r in results],
        "seeds": [int(c.seed) for c in configs],
        "data_seeds": [int(c.seed if c.data_seed < 0 else c.data_seed) for c in configs],
        "recipe": configs[0].recipe,
        "model": configs[0].model.name,
    }


def provenance_line(info: dict[str, Any]) -> str:
    epochs = sorted(set(info["epochs"]))
    epochs_text = f"{epochs[0]:g}" if len(epochs) == 1 else ", ".join(f"{e:g}" for e in epochs)
    return (f"Hardware: {info['hardware']} ({info['devices']} device(s), jax "
            f"{info['jax_version']}); recipe {info['recipe']!r}, model {info['model']}; "
            f"epochs per run: {epochs_text}; seeds: {', '.join(map(str, info['seeds']))}; "
            f"runs: {info['runs']}.")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return "\n".join(report.table(header, rows))


def write_report(workdir: str, name: str, report: dict, markdown: str) -> None:
    """``workdir/<name>.json`` and ``workdir/<name>.md``."""
    with open(os.path.join(workdir, f"{name}.json"), "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    with open(os.path.join(workdir, f"{name}.md"), "w") as f:
        f.write(markdown.rstrip() + "\n")


def load_or_compute(path: str, compute: Callable[[], dict[str, np.ndarray]],
                    **settings: Any) -> dict[str, np.ndarray]:
    """The arrays saved in the .npz ``path`` if it exists, else ``compute()`` saved there.
    ``settings`` are saved too; a file written with other settings is an error."""
    if not os.path.exists(path):
        arrays = {**compute(), **{k: np.asarray(v) for k, v in settings.items()}}
        with open(path + ".tmp", "wb") as f:
            np.savez(f, **arrays)
        os.replace(path + ".tmp", path)
    with np.load(path) as data:
        arrays = dict(data)
    for key, value in settings.items():
        if key not in arrays or arrays[key].item() != value:
            saved = arrays[key].item() if key in arrays else None
            raise ValueError(f"{path} was written with {key}={saved!r}, not {value!r}: use a "
                             "new --workdir, or delete that file and the runs after it")
    return arrays
