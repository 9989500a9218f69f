"""k-fold cross-validation of a config:

    python -m cv_jax.workflows.crossval --config=configs/cifar10.py:cpu --workdir=runs/cv --folds=5
    make cv CONFIG=experiments/crossval_tiny.py K=3

Fold k of K is the validation split of a normal run in ``workdir/fold_<k>/``
(``dataset.num_folds=K``, ``dataset.fold=k``): the training set (after
``dataset.max_train_examples``) is dealt into K folds, stratified by class unless
``--config.dataset.stratified_folds=false``, the same folds every time (fold seed 0).

The report gives each fold model's validation accuracy (its final weights, as its results.json)
with their mean ± *sample* standard deviation (ddof=1, over the K folds), and each fold model's
test accuracy with their mean ± sample std. The test accuracy of the setting itself is that of
the config trained on the whole training set in ``workdir/full/`` (``--full``, on by default):
the number to quote, the fold models having seen (K-1)/K of the data. Written to
``workdir/crossval.json`` and ``workdir/crossval.md``; rerunning resumes unfinished runs.
Flags left out take their values from the config's ``crossval`` section if it has one (an
experiment file's choice, ``experiments/crossval_*.py``).
"""

from __future__ import annotations

import logging
import os

import ml_collections as mlc
from absl import flags

from cv_jax.config import ConfigError
from cv_jax.runtime import cpu_defaults
from cv_jax.workflows import multirun

log = logging.getLogger("cv_jax")
SETTINGS = ("folds", "full")


def fold_dir(workdir: str, fold: int) -> str:
    return os.path.join(workdir, f"fold_{fold}")


def cross_validate(config: mlc.ConfigDict, workdir: str, folds: int = 5,
                   full: bool = True) -> dict:
    """Trains the K fold runs (and the full-training-set run), writes and returns the report."""
    if folds < 2:
        raise ConfigError(f"--folds={folds}: cross-validation needs at least 2 folds")
    configs = [multirun.variant(config, {"dataset.num_folds": folds, "dataset.fold": k})
               for k in range(folds)]
    results = [multirun.run(c, fold_dir(workdir, k)) for k, c in enumerate(configs)]
    full_result = None
    if full:
        full_config = multirun.variant(config, {"dataset.num_folds": 0, "dataset.fold": 0})
        full_result = multirun.run(full_config, os.path.join(workdir, "full"))
        configs, results = configs + [full_config], results + [full_result]
    report = summarize(config, results[:folds], full_result)
    report["provenance"] = multirun.provenance(configs, results)
    multirun.write_report(workdir, "crossval", report, markdown(report))
    log.info("%d-fold validation accuracy %s (mean ± sample std)", folds,
             multirun.format_mean_std(report["validation_accuracy"]))
    return report


def summarize(config: mlc.ConfigDict, fold_results: list[dict],
              full_result: dict | None) -> dict:
    """Per-fold accuracies and their mean ± sample std (ddof=1)."""
    per_fold = [{"fold": k, "validation_accuracy": r["validation_accuracy"],
                 "validation_examples": r["validation_examples"],
                 "test_accuracy": r["test_accuracy"], "epochs": r["epochs"]}
                for k, r in enumerate(fold_results)]
    return {
        "folds": len(fold_results),
        "stratified": bool(config.dataset.stratified_folds),
        "std": "sample standard deviation over folds (ddof=1)",
        "per_fold": per_fold,
        "validation_accuracy": multirun.mean_std([f["validation_accuracy"] for f in per_fold]),
        "fold_models_test_accuracy": multirun.mean_std([f["test_accuracy"] for f in per_fold]),
        "full_training_set": None if full_result is None else {
            "test_accuracy": full_result["test_accuracy"],
            "test_examples": full_result["test_examples"], "epochs": full_result["epochs"]},
    }


def markdown(report: dict) -> str:
    rows = [(f["fold"], f"{f['validation_accuracy']:.4f} ({f['validation_examples']})",
             f"{f['test_accuracy']:.4f}", f"{f['epochs']:g}") for f in report["per_fold"]]
    rows.append(("mean ± std (ddof=1)", multirun.format_mean_std(report["validation_accuracy"]),
                 multirun.format_mean_std(report["fold_models_test_accuracy"]), ""))
    full = report["full_training_set"]
    if full is not None:
        rows.append(("whole training set", "", f"{full['test_accuracy']:.4f}",
                     f"{full['epochs']:g}"))
    kind = "stratified" if report["stratified"] else "plain"
    return "\n\n".join([
        f"# {report['folds']}-fold cross-validation ({kind} folds)",
        multirun.provenance_line(report["provenance"]),
        multirun.markdown_table(("fold", "validation accuracy (examples)", "test accuracy",
                                 "epochs"), rows),
        "Validation accuracy: each fold model's final weights on its held-out fold. Test "
        "accuracy of the setting: the run on the whole training set (last row), if trained.",
    ])


def main(argv: list[str] | None = None) -> None:
    def define():
        flags.DEFINE_integer("folds", 5, "Number of folds K (>= 2).")
        flags.DEFINE_bool("full", True, "Also train on the whole training set for the test "
                          "accuracy of the setting.")
    multirun.cli("crossval", cross_validate, define, SETTINGS, argv)


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend
    main()
