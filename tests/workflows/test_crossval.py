"""k-fold cross-validation: fold assignment, the fold split in load_datasets, the report."""

from __future__ import annotations

import glob
import json
import os

import ml_collections as mlc
import numpy as np
import pytest
from absl import flags
from conftest import REPO, load_config, tiny_config

from cv_jax.config import ConfigError, base_config, validate
from cv_jax.data import pipeline
from cv_jax.data.dataset import ArrayDataset
from cv_jax.training import datasets, train
from cv_jax.workflows import crossval, multirun


def dataset(counts: list[int]) -> ArrayDataset:
    """Example i has label k and image value i (so examples can be told apart)."""
    labels = np.concatenate([np.full(c, k, np.int32) for k, c in enumerate(counts)])
    images = np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1, 1).repeat(3, axis=3)
    return ArrayDataset(images=images, labels=labels,
                        class_names=tuple(f"c{k}" for k in range(len(counts))))


def ids(data: ArrayDataset) -> np.ndarray:
    return data.images[:, 0, 0, 0].astype(int)


@pytest.mark.parametrize("stratified", [True, False])
def test_folds_partition_the_training_set(stratified: bool) -> None:
    data = dataset([23, 17, 9])  # 49 examples, 5 folds of 9 or 10
    held_out = []
    for fold in range(5):
        rest, validation = pipeline.split_fold(data, 5, fold, stratified)
        assert sorted(ids(rest).tolist() + ids(validation).tolist()) == list(range(49))
        np.testing.assert_array_equal(data.labels[ids(validation)], validation.labels)
        held_out.append(ids(validation))
    everything = np.concatenate(held_out)
    assert sorted(everything.tolist()) == list(range(49))  # disjoint, union = all
    assert sorted(len(v) for v in held_out) == [9, 10, 10, 10, 10]
    if stratified:
        per_class = np.array([np.bincount(data.labels[v], minlength=3) for v in held_out])
        assert (per_class.max(axis=0) - per_class.min(axis=0) <= 1).all()
        np.testing.assert_array_equal(per_class.sum(axis=0), [23, 17, 9])


def test_fold_assignment_is_deterministic_and_seeded() -> None:
    labels = dataset([30, 30]).labels
    first = pipeline.fold_ids(labels, 4)
    np.testing.assert_array_equal(first, pipeline.fold_ids(labels, 4))
    assert not np.array_equal(first, pipeline.fold_ids(labels, 4, seed=1))
    np.testing.assert_array_equal(np.bincount(first), [15, 15, 15, 15])
    np.testing.assert_array_equal(np.bincount(first[:30]), [8, 8, 7, 7])  # class 0 stratified


def test_bad_fold_keys_are_named() -> None:
    data = dataset([5, 5])
    with pytest.raises(ValueError, match=r"config.dataset.fold=3 is not a fold of "
                                         r"config.dataset.num_folds=3; use 0..2"):
        pipeline.split_fold(data, 3, 3)
    with pytest.raises(ValueError, match=r"num_folds=11: use 2..10 folds"):
        pipeline.fold_ids(data.labels, 11)
    config = base_config()
    config.model.name, config.dataset.num_folds = "airbench", 1
    with pytest.raises(ConfigError, match=r"config.dataset.num_folds=1 is invalid: "
                                                    r"use 0 \(off\) or a number of folds >= 2"):
        validate(config)


def test_load_datasets_holds_out_the_fold(tiny_folder, cache_dir) -> None:
    config = tiny_config(tiny_folder, cache_dir)
    whole = datasets.load_datasets(config).train
    config.dataset.update(num_folds=4, fold=1)
    data = datasets.load_datasets(config)
    assert (len(data.train), len(data.validation)) == (72, 24)
    np.testing.assert_array_equal(np.bincount(data.validation.labels), [6, 6, 6, 6])
    rows = {image.tobytes() for image in np.concatenate([data.train.images,
                                                         data.validation.images])}
    assert rows == {image.tobytes() for image in whole.images} and len(rows) == 96
    config.dataset.validation_size = 10
    with pytest.raises(ConfigError, match=r"num_folds=4 holds out a fold as the "
                                                    r"validation split: set .*validation_size=0"):
        datasets.load_datasets(config)


@pytest.fixture
def fake_training(monkeypatch):
    """train_and_evaluate replaced by a stub that loads the run's real data and returns fixed
    accuracies: validation 0.5, 0.6, 0.7 for folds 0, 1, 2 and test 0.1 lower; 0.9 on test for
    the run on the whole training set."""
    calls = []

    def fake(config, workdir):
        data = datasets.load_datasets(config)
        calls.append((workdir, config))
        if not config.dataset.num_folds:
            return {"test_accuracy": 0.9, "test_examples": len(data.test), "epochs": 2.0}
        accuracy = 0.5 + 0.1 * config.dataset.fold
        return {"validation_accuracy": accuracy, "validation_examples": len(data.validation),
                "test_accuracy": accuracy - 0.1, "test_examples": len(data.test), "epochs": 2.0}

    monkeypatch.setattr(train, "train_and_evaluate", fake)
    return calls


def test_cross_validate_reports_mean_and_sample_std(tiny_folder, cache_dir, tmp_path,
                                                    fake_training) -> None:
    config = tiny_config(tiny_folder, cache_dir)
    report = crossval.cross_validate(config, str(tmp_path), folds=3)
    assert [os.path.basename(w) for w, _ in fake_training] == ["fold_0", "fold_1", "fold_2",
                                                               "full"]
    assert [(c.dataset.num_folds, c.dataset.fold) for _, c in fake_training] == [
        (3, 0), (3, 1), (3, 2), (0, 0)]
    assert [f["validation_examples"] for f in report["per_fold"]] == [32, 32, 32]
    assert report["validation_accuracy"]["mean"] == pytest.approx(0.6)
    assert report["validation_accuracy"]["std"] == pytest.approx(0.1)  # ddof=1 (ddof=0: 0.0816)
    assert report["fold_models_test_accuracy"]["mean"] == pytest.approx(0.5)
    assert report["full_training_set"]["test_accuracy"] == 0.9
    assert report["provenance"]["hardware"] == "cpu" and report["provenance"]["runs"] == 4
    assert report["provenance"]["seeds"] == [0, 0, 0, 0]
    assert json.load(open(tmp_path / "crossval.json")) == report
    table = open(tmp_path / "crossval.md").read()
    assert "| mean ± std (ddof=1) | 0.6000 ± 0.1000 | 0.5000 ± 0.1000 |  |" in table
    assert "| whole training set |  | 0.9000 | 2 |" in table
    assert "Hardware: cpu (8 device(s)" in table and "seeds: 0, 0, 0, 0; runs: 4." in table


def test_flags_override_the_config_section() -> None:
    values = flags.FlagValues()
    flags.DEFINE_integer("folds", 5, "", flag_values=values)
    flags.DEFINE_bool("full", True, "", flag_values=values)
    values(["crossval", "--folds=3"])
    config = mlc.ConfigDict({"crossval": {"folds": 4, "full": False}})
    chosen = multirun.workflow_settings(config, "crossval", values, crossval.SETTINGS)
    assert chosen == {"folds": 3, "full": False}
    assert multirun.workflow_settings(mlc.ConfigDict(), "crossval", values,
                                      crossval.SETTINGS) == {"folds": 3, "full": True}
    config.crossval.k = 2
    with pytest.raises(ConfigError, match=r"config.crossval has no key\(s\) \['k'\]"):
        multirun.workflow_settings(config, "crossval", values, crossval.SETTINGS)


@pytest.mark.parametrize("path", sorted(glob.glob(str(REPO / "experiments/crossval_*.py"))))
def test_experiment_definitions_are_valid(path: str) -> None:
    config = load_config("", path)
    validate(config)
    assert set(config.crossval) <= set(crossval.SETTINGS) and config.crossval.folds >= 2
