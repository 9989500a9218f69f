"""Pseudo-labelling (self-training): a labelled subset of the training set, the rest unlabelled.

    python -m cv_jax.workflows.pseudo_label --config=configs/cifar10.py:cpu \\
        --config.dataset.num_labelled=4000 --workdir=runs/pl --rounds=3 --threshold=0.95
    make pseudo-label CONFIG=experiments/pseudo_label_tiny.py

``dataset.num_labelled`` examples of the training set keep their labels: class-balanced, fixed
by ``dataset.labelled_seed`` (``pipeline.labelled_indices``); the others form the unlabelled
pool, whose true labels are only used to report how good the pseudo-labels are. Round 0 trains
on the labelled subset alone (the supervised-only baseline). After round r, its model predicts
the pool; predictions with confidence (the top class probability) >= ``--threshold`` are kept,
and with ``--top_k`` > 0 at most the k most confident of each predicted class. Round r + 1
trains from scratch on the labelled subset plus those pseudo-labelled examples
(``dataset.pseudo_labels`` = ``round_<r>/pseudo_labels.npz``). ``--rounds`` counts the rounds
after round 0. Label smoothing caps confidence: with ``loss.label_smoothing=s`` over K classes a
model fitting its targets predicts at most 1 - s + s/K (0.82 for the recipes' 0.2 on CIFAR-10),
so turn it off for a high threshold, or select by ``--top_k`` alone (``--threshold=0``).

Each round is a normal run in ``workdir/round_<r>/``; its pseudo-labels are saved beside it and
reused on a rerun. The report (``workdir/pseudo_label.json`` and ``pseudo_label.md``) gives per
round the test accuracy, how many pseudo-labels it trained on and their accuracy against the
true labels, and what it selected for the next round. Flags left out take their values from the
config's ``pseudo_label`` section if it has one (``experiments/pseudo_label_*.py``).
"""

from __future__ import annotations

import functools
import logging
import os

import ml_collections as mlc
import numpy as np
from absl import flags

from cv_jax.config import ConfigError
from cv_jax.data import pipeline
from cv_jax.data.dataset import ArrayDataset
from cv_jax.runtime import cpu_defaults
from cv_jax.training import datasets
from cv_jax.workflows import multirun

log = logging.getLogger("cv_jax")
SETTINGS = ("rounds", "threshold", "top_k")


def select(probabilities: np.ndarray, threshold: float = 0.0, top_k: int = 0) -> np.ndarray:
    """Sorted rows of ``probabilities`` [N, K] to pseudo-label: top probability >= threshold,
    then (top_k > 0) the top_k most confident of each predicted class, ties by row order."""
    confidence = probabilities.max(axis=-1)
    kept = np.flatnonzero(confidence >= threshold)
    if top_k:
        kept = kept[np.argsort(-confidence[kept], kind="stable")]
        predicted = probabilities[kept].argmax(axis=-1)
        kept = np.concatenate([kept[predicted == k][:top_k] for k in np.unique(predicted)]
                              or [np.zeros(0, np.int64)])
    return np.sort(kept)


def label_quality(indices: np.ndarray, labels: np.ndarray, pool: ArrayDataset) -> dict:
    """How many pseudo-labels and their accuracy against the pool's true labels."""
    correct = int(np.sum(pool.labels[indices] == labels))
    return {"count": len(indices), "correct": correct,
            "accuracy": correct / len(indices) if len(indices) else None}


def unlabelled_pool(config: mlc.ConfigDict) -> tuple[ArrayDataset, np.ndarray]:
    """The training set the labelled subset is taken from (with every true label) and the
    indices of its unlabelled examples."""
    if not config.dataset.num_labelled:
        raise ConfigError("pseudo-labelling needs a labelled subset: set "
                                    "--config.dataset.num_labelled (e.g. 4000)")
    pool_config = multirun.variant(config, {
        "dataset.num_labelled": 0, "dataset.pseudo_labels": "", "dataset.balance": "",
        "dataset.resample_seed": -1, "dataset.resample_weights": ""})
    pool = datasets.load_datasets(pool_config).train
    labelled = pipeline.labelled_indices(pool.labels, config.dataset.num_labelled,
                                         len(pool.class_names), config.dataset.labelled_seed)
    return pool, np.setdiff1d(np.arange(len(pool)), labelled)


def round_dir(workdir: str, r: int) -> str:
    return os.path.join(workdir, f"round_{r}")


def pseudo_label(config: mlc.ConfigDict, workdir: str, rounds: int = 3,
                 threshold: float = 0.95, top_k: int = 0) -> dict:
    """Trains rounds 0..rounds; writes and returns the report."""
    if rounds < 0 or not 0 <= threshold <= 1 or top_k < 0:
        raise ConfigError(f"--rounds={rounds}, --threshold={threshold}, "
                                    f"--top_k={top_k}: use rounds >= 0, a threshold in [0, 1] "
                                    "and top_k >= 0 (0: no per-class limit)")
    pool, unlabelled = unlabelled_pool(config)
    configs, results, rows, labels_path = [], [], [], ""
    for r in range(rounds + 1):
        rconfig = multirun.variant(config, {"dataset.pseudo_labels": labels_path})
        directory = round_dir(workdir, r)
        rresults = multirun.run(rconfig, directory)
        row = {"round": r, "test_accuracy": rresults["test_accuracy"],
               "labelled": int(config.dataset.num_labelled),
               "trained_on_pseudo_labels": rows[-1]["selected"] if rows else None}
        if r < rounds:
            labels_path = os.path.abspath(os.path.join(directory, "pseudo_labels.npz"))
            saved = multirun.load_or_compute(
                labels_path, functools.partial(predict_pool, directory, rresults, pool,
                                               unlabelled, threshold, top_k),
                threshold=float(threshold), top_k=int(top_k))
            row["selected"] = label_quality(saved["indices"], saved["labels"], pool)
            row["pool_accuracy"] = float(np.mean(saved["predictions"] == pool.labels[unlabelled]))
        configs.append(rconfig)
        results.append(rresults)
        rows.append(row)
    rep = {"rounds": rows, "threshold": threshold, "top_k": top_k,
           "unlabelled_pool": len(unlabelled), "provenance": multirun.provenance(configs, results)}
    multirun.write_report(workdir, "pseudo_label", rep, markdown(rep))
    log.info("Test accuracy by round: %s", ", ".join(f"{row['test_accuracy']:.4f}"
                                                     for row in rows))
    return rep


def predict_pool(directory: str, results: dict, pool: ArrayDataset, unlabelled: np.ndarray,
                 threshold: float, top_k: int) -> dict[str, np.ndarray]:
    """A round's predictions on the unlabelled pool and the pseudo-labels it selects."""
    probabilities = multirun.probabilities(directory, results, pool.images[unlabelled])
    kept = select(probabilities, threshold, top_k)
    predictions = probabilities.argmax(-1)
    return {"indices": unlabelled[kept], "labels": predictions[kept],
            "unlabelled": unlabelled, "predictions": predictions,
            "confidence": probabilities.max(-1)}


def _quality_text(quality: dict | None, missing: str) -> str:
    if quality is None:
        return missing
    accuracy = "n/a" if quality["accuracy"] is None else f"{quality['accuracy']:.4f}"
    return f"{quality['count']} (accuracy {accuracy})"


def markdown(rep: dict) -> str:
    rows = [(r["round"],
             f"{r['labelled']} + {_quality_text(r['trained_on_pseudo_labels'], '0')}",
             f"{r['test_accuracy']:.4f}", _quality_text(r.get("selected"), "(last round)"),
             f"{r['pool_accuracy']:.4f}" if "pool_accuracy" in r else "")
            for r in rep["rounds"]]
    limit = f", at most {rep['top_k']} per class" if rep["top_k"] else ""
    return "\n\n".join([
        f"# Pseudo-labelling: {len(rep['rounds']) - 1} round(s) after a supervised round 0",
        multirun.provenance_line(rep["provenance"]),
        f"Unlabelled pool: {rep['unlabelled_pool']} examples; kept: confidence >= "
        f"{rep['threshold']}{limit}. Pseudo-label accuracy is against the pool's true labels.",
        multirun.markdown_table(
            ("round", "trained on: labelled + pseudo-labels", "test accuracy",
             "pseudo-labels selected for the next round", "accuracy on the whole pool"), rows),
        "Round 0 is the supervised-only baseline (the labelled subset alone).",
    ])


def main(argv: list[str] | None = None) -> None:
    def define():
        flags.DEFINE_integer("rounds", 3, "Pseudo-labelling rounds after the supervised round 0.")
        flags.DEFINE_float("threshold", 0.95, "Keep predictions at least this confident (0: all).")
        flags.DEFINE_integer("top_k", 0, "> 0: keep at most this many per predicted class, the "
                             "most confident first.")
    multirun.cli("pseudo_label", pseudo_label, define, SETTINGS, argv)


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend
    main()
