"""Ensembles of separately trained runs: bagging and SAMME boosting.

    python -m cv_jax.workflows.ensemble --config=configs/cifar10.py:cpu --workdir=runs/bag
    --members=5
    python -m cv_jax.workflows.ensemble --config=... --workdir=runs/boost --method=boosting
    --members=5
    make ensemble CONFIG=experiments/ensemble_bagging_tiny.py

Member i is a normal run in ``workdir/member_<i>/`` with ``seed = config.seed + i`` (its
initialisation, augmentation and batch order) and ``dataset.resample_seed`` the same seed.

* **Bagging** (Breiman 1996): each member trains on its own bootstrap sample of the training
  set (n draws with replacement, ``pipeline.resample_indices``; about 63% distinct examples).
  The ensemble averages the members' class probabilities, or takes their majority vote (ties
  go to the lowest class index); both are reported. Bagging members share every shape, so
  ``--vectorized=vmap`` (or ``unroll``) trains them as one program (``cv_jax.workflows.vectorized``
  with bootstrap samples) in ``workdir/seed_<s>/``: one stream of batch positions (ordered by
  ``config.data_seed``, or the first member's seed when it is -1), which each member maps
  through its own sample. On a GPU that fills the device with several small models; on a CPU
  separate runs (the default) are faster.
* **Boosting**, SAMME (Zhu et al. 2009, multi-class AdaBoost): example weights start uniform;
  after member m, its weighted training error ``err`` gives ``alpha = log((1 - err) / err) +
  log(K - 1)`` and each misclassified example's weight is multiplied by ``exp(alpha)``
  (then all renormalised). The weights enter training by *weighted resampling* (boosting by
  resampling): member m trains on n draws in proportion to its weights
  (``dataset.resample_weights`` = ``member_<m>/samme.npz``), so the training step and
  the run length are unchanged. The ensemble is the alpha-weighted vote. As scikit-learn's
  AdaBoostClassifier, boosting stops at a member with no training error (its alpha is then 1)
  and drops a member no better than chance (err >= 1 - 1/K). Training error is measured on the
  un-resampled training set, without augmentation.

The report (``workdir/ensemble.json`` and ``ensemble.md``) gives each member's and the
ensemble's accuracy on the test split. Flags left out take their values from the config's
``ensemble`` section if it has one (``experiments/ensemble_*.py``).
"""

from __future__ import annotations

import logging
import math
import os

import ml_collections as mlc
import numpy as np
from absl import flags

from cv_jax.config import ConfigError
from cv_jax.data import pipeline
from cv_jax.runtime import cpu_defaults
from cv_jax.training import datasets
from cv_jax.workflows import members, multirun, vectorized
from cv_jax.workflows.members import MODES

log = logging.getLogger("cv_jax")
METHODS = ("bagging", "boosting")
SETTINGS = ("method", "members", "vectorized")


# ------------------------------------------------------------------------------ combination


def average_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Class predictions [N] of the mean of the members' probabilities [M, N, K]."""
    return np.argmax(np.mean(probabilities, axis=0), axis=-1)


def majority_vote(predictions: np.ndarray, num_classes: int,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """Class predictions [N] of the members' predictions [M, N], each member's vote counted
    ``weights[m]`` times (default 1); ties go to the lowest class index."""
    predictions = np.asarray(predictions)
    weights = np.ones(len(predictions)) if weights is None else np.asarray(weights, np.float64)
    votes = np.zeros((predictions.shape[1], num_classes))
    for member, weight in zip(predictions, weights, strict=True):
        votes[np.arange(len(member)), member] += weight
    return np.argmax(votes, axis=-1)


def weighted_error(weights: np.ndarray, misclassified: np.ndarray) -> float:
    """SAMME's err: the weight of the misclassified examples over the total weight."""
    return float(np.sum(weights * misclassified) / np.sum(weights))


def samme_alpha(error: float, num_classes: int) -> float:
    """``log((1 - err) / err) + log(K - 1)``: > 0 exactly when err < 1 - 1/K (inf at err 0,
    -inf at err 1)."""
    if error <= 0 or error >= 1:
        return math.inf if error <= 0 else -math.inf
    return math.log((1 - error) / error) + math.log(num_classes - 1)


def reweight(weights: np.ndarray, misclassified: np.ndarray, alpha: float) -> np.ndarray:
    """Misclassified examples' weights times ``exp(alpha)``, then normalised to sum 1."""
    updated = weights * np.exp(alpha * misclassified)
    return updated / updated.sum()


# ------------------------------------------------------------------------------ workflows


def member_dir(workdir: str, member: int) -> str:
    return os.path.join(workdir, f"member_{member}")


def member_config(config: mlc.ConfigDict, member: int, weights_path: str = "") -> mlc.ConfigDict:
    seed = config.seed + member
    return multirun.variant(config, {"seed": seed, "dataset.resample_seed": seed,
                                     "dataset.resample_weights": weights_path})


def base_data(config: mlc.ConfigDict) -> datasets.Datasets:
    """The splits without resampling: the training set members are drawn from."""
    base = multirun.variant(config, {"dataset.resample_seed": -1, "dataset.resample_weights": ""})
    return datasets.load_datasets(base)


def bagging(config: mlc.ConfigDict, workdir: str, count: int, mode: str = "") -> dict:
    """Trains ``count`` bagged members (separate runs, or one ``mode`` program of
    ``cv_jax.workflows.vectorized``); returns the report (member and ensemble test accuracy)."""
    data = base_data(config)
    if mode:
        seeds = [config.seed + i for i in range(count)]
        results = vectorized.train_seeds(config, workdir, seeds, mode=mode, bootstrap=True)
        configs = [members.member_config(config, s, {"dataset.resample_seed": s})
                   for s in seeds]
        dirs = [members.member_dir(workdir, s) for s in seeds]
    else:
        configs = [member_config(config, i) for i in range(count)]
        dirs = [member_dir(workdir, i) for i in range(count)]
        results = [multirun.run(c, d) for c, d in zip(configs, dirs, strict=True)]
    probs = np.stack([multirun.probabilities(d, r, data.test.images)
                      for d, r in zip(dirs, results, strict=True)])
    rows = [{"member": i, "seed": int(c.seed), "test_accuracy": r["test_accuracy"],
             "distinct_train_fraction": distinct_fraction(len(data.train), c.seed)}
            for i, (c, r) in enumerate(zip(configs, results, strict=True))]
    ensemble = {
        "mean_probabilities": multirun.score(average_probabilities(probs), data.test),
        "majority_vote": multirun.score(
            majority_vote(probs.argmax(-1), len(data.test.class_names)), data.test)}
    return report("bagging", configs, results, rows, ensemble) | {"vectorized": mode}


def distinct_fraction(n: int, seed: int) -> float:
    """The fraction of the training set that a member's bootstrap sample contains."""
    return len(np.unique(pipeline.resample_indices(n, seed))) / n


def boosting(config: mlc.ConfigDict, workdir: str, members: int) -> dict:
    """SAMME boosting by weighted resampling; returns the report."""
    data = base_data(config)
    num_classes = len(data.train.class_names)
    weights = np.full(len(data.train), 1.0 / len(data.train))
    configs, results, rows, test_predictions, stopped = [], [], [], [], None
    for m in range(members):
        directory = member_dir(workdir, m)
        os.makedirs(directory, exist_ok=True)
        path = os.path.abspath(os.path.join(directory, "samme.npz"))  # member m draws by these
        weights = multirun.load_or_compute(path, lambda w=weights: {"weights": w})["weights"]
        mconfig = member_config(config, m, path)
        mresults = multirun.run(mconfig, directory)
        step = boosting_step(weights, directory, mresults, data.train, num_classes)
        if step["alpha"] <= 0:
            stopped = (f"member {m} dropped: weighted error {step['error']:.4f} >= "
                       f"1 - 1/K = {1 - 1 / num_classes:.4f} (no better than chance)")
            if not rows:
                raise RuntimeError(f"the first boosting member ({directory}) is no better than "
                                   "chance on the training set; train longer or on more data")
            break
        configs.append(mconfig)
        results.append(mresults)
        test_predictions.append(
            multirun.probabilities(directory, mresults, data.test.images).argmax(-1))
        rows.append({"member": m, "seed": int(mconfig.seed), "weighted_error": step["error"],
                     "alpha": step["alpha"], "train_accuracy": step["train_accuracy"],
                     "test_accuracy": mresults["test_accuracy"]})
        if step["error"] == 0:
            stopped = f"member {m} has no training error (alpha 1)"
            break
        weights = reweight(weights, step["misclassified"], step["alpha"])
    if stopped:
        log.info("Boosting stopped early: %s.", stopped)
    alphas = np.array([row["alpha"] for row in rows])
    ensemble = {"samme_vote": multirun.score(
        majority_vote(np.stack(test_predictions), num_classes, alphas), data.test)}
    return report("boosting", configs, results, rows, ensemble) | {"stopped_early": stopped}


def boosting_step(weights: np.ndarray, directory: str, results: dict, train_set,
                  num_classes: int) -> dict:
    """Member's training-set mistakes, weighted error and alpha (1 when the error is 0)."""
    predictions = multirun.probabilities(directory, results, train_set.images).argmax(-1)
    misclassified = (predictions != train_set.labels).astype(np.float64)
    error = weighted_error(weights, misclassified)
    alpha = 1.0 if error == 0 else samme_alpha(error, num_classes)
    return {"misclassified": misclassified, "error": error, "alpha": alpha,
            "train_accuracy": float(1 - misclassified.mean())}


def report(method: str, configs: list, results: list, rows: list, ensemble: dict) -> dict:
    return {
        "method": method,
        "members": rows,
        "member_test_accuracy": multirun.mean_std([r["test_accuracy"] for r in rows]),
        "ensemble": ensemble,
        "provenance": multirun.provenance(configs, results),
    }


_COLUMNS = {"distinct_train_fraction": "distinct training examples (fraction)",
            "weighted_error": "weighted training error", "alpha": "alpha",
            "train_accuracy": "training accuracy"}


def markdown(rep: dict) -> str:
    extra = [k for k in _COLUMNS if k in rep["members"][0]]
    header = ("member", "seed", *(_COLUMNS[k] for k in extra), "test accuracy")
    rows = [(r["member"], r["seed"], *(f"{r[k]:.4f}" for k in extra), f"{r['test_accuracy']:.4f}")
            for r in rep["members"]]
    rows.append(("mean ± std of members (ddof=1)", "", *[""] * len(extra),
                 multirun.format_mean_std(rep["member_test_accuracy"])))
    for name, metrics in rep["ensemble"].items():
        rows.append((f"**ensemble: {name.replace('_', ' ')}**", "", *[""] * len(extra),
                     f"**{metrics['accuracy']:.4f}** ({metrics['correct']}/"
                     f"{metrics['examples']})"))
    stopped = rep.get("stopped_early")
    stopped = f" Boosting stopped early: {stopped}." if stopped else ""
    where = (f"trained together as one {rep['vectorized']} program, in seed_<s>/"
             if rep.get("vectorized") else "separate runs in member_<i>/")
    return "\n\n".join([
        f"# {rep['method'].capitalize()} ensemble of {len(rep['members'])} members",
        multirun.provenance_line(rep["provenance"]),
        multirun.markdown_table(header, rows),
        f"Test accuracy on the test split; members are {where}.{stopped}",
    ])


def build(config: mlc.ConfigDict, workdir: str, method: str = "bagging",
          members: int = 5, vectorized: str = "") -> dict:
    """Trains the ensemble, writes ``ensemble.json`` / ``ensemble.md``, returns the report."""
    if method not in METHODS:
        raise ConfigError(f"--method={method!r}: use one of {METHODS}")
    if members < 1:
        raise ConfigError(f"--members={members}: train at least 1 member")
    if vectorized and (method != "bagging" or vectorized not in MODES):
        raise ConfigError(
            f"--vectorized={vectorized!r} with --method={method}: bagging members can train "
            f"as one program ({' or '.join(MODES)}); boosting members train one after another")
    if method == "bagging":
        rep = bagging(config, workdir, members, vectorized)
    else:
        rep = boosting(config, workdir, members)
    multirun.write_report(workdir, "ensemble", rep, markdown(rep))
    for name, metrics in rep["ensemble"].items():
        log.info("Ensemble (%s) test accuracy %.4f; members %s", name, metrics["accuracy"],
                 multirun.format_mean_std(rep["member_test_accuracy"]))
    return rep


def main(argv: list[str] | None = None) -> None:
    def define():
        flags.DEFINE_enum("method", "bagging", METHODS, "Bagging or SAMME boosting.")
        flags.DEFINE_integer("members", 5, "Number of members (boosting: at most this many).")
        flags.DEFINE_string("vectorized", "", "Bagging: train the members as one program, "
                            "'vmap' (GPU/TPU) or 'unroll' (CPU); '': separate runs.")
    multirun.cli("ensemble", build, define, SETTINGS, argv)


if __name__ == "__main__":
    cpu_defaults.apply()  # before JAX starts its backend
    main()
