"""Pseudo-labelling: the labelled subset, selection by threshold / top-k, the pseudo-labelled
training set in load_datasets, and the rounds (with training and prediction stubbed)."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
from conftest import REPO, load_config, tiny_config

from cv_jax.config import ConfigError, validate
from cv_jax.data import pipeline
from cv_jax.data.dataset import ArrayDataset
from cv_jax.training import datasets, train
from cv_jax.workflows import multirun, pseudo_label


def test_threshold_keeps_exactly_the_confident_rows() -> None:
    probabilities = np.array([[0.95, 0.05], [0.5, 0.5], [0.2, 0.8], [0.05, 0.95],
                              [0.949, 0.051]])
    np.testing.assert_array_equal(pseudo_label.select(probabilities, 0.95), [0, 3])
    np.testing.assert_array_equal(pseudo_label.select(probabilities, 0.8), [0, 2, 3, 4])
    np.testing.assert_array_equal(pseudo_label.select(probabilities, 0.0), [0, 1, 2, 3, 4])
    assert pseudo_label.select(probabilities, 0.96).size == 0


def test_top_k_keeps_the_most_confident_of_each_predicted_class() -> None:
    probabilities = np.array([
        [0.7, 0.2, 0.1],  # 0: class 0, 0.7
        [0.9, 0.05, 0.05],  # 1: class 0, 0.9
        [0.8, 0.1, 0.1],  # 2: class 0, 0.8
        [0.1, 0.6, 0.3],  # 3: class 1, 0.6
        [0.3, 0.3, 0.4],  # 4: class 2, 0.4
        [0.1, 0.85, 0.05],  # 5: class 1, 0.85
        [0.9, 0.05, 0.05],  # 6: class 0, 0.9 (ties with row 1, which comes first)
    ])
    np.testing.assert_array_equal(pseudo_label.select(probabilities, top_k=1), [1, 4, 5])
    np.testing.assert_array_equal(pseudo_label.select(probabilities, top_k=2), [1, 3, 4, 5, 6])
    np.testing.assert_array_equal(pseudo_label.select(probabilities, 0.65, top_k=2), [1, 5, 6])
    assert pseudo_label.select(probabilities, 0.99, top_k=2).size == 0


def test_labelled_subset_is_class_balanced_and_deterministic() -> None:
    labels = np.repeat(np.arange(3, dtype=np.int32), [30, 20, 10])
    chosen = pipeline.labelled_indices(labels, 10, num_classes=3, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[chosen]), [4, 3, 3])
    assert len(np.unique(chosen)) == 10
    np.testing.assert_array_equal(chosen, pipeline.labelled_indices(labels, 10, 3, seed=0))
    assert not np.array_equal(chosen, pipeline.labelled_indices(labels, 10, 3, seed=1))
    np.testing.assert_array_equal(np.bincount(labels[pipeline.labelled_indices(labels, 30, 3)]),
                                  [10, 10, 10])
    with pytest.raises(ValueError, match=r"num_labelled=40 needs 13 examples of class 2, which "
                                         r"has 10; use at most 30"):
        pipeline.labelled_indices(labels, 40, 3)


def test_pseudo_label_accuracy_is_against_the_true_labels() -> None:
    pool = ArrayDataset(images=np.zeros((5, 1, 1, 3), np.uint8),
                        labels=np.array([0, 1, 2, 0, 1], np.int32), class_names=("a", "b", "c"))
    quality = pseudo_label.label_quality(np.array([0, 1, 3]), np.array([0, 2, 0]), pool)
    assert quality == {"count": 3, "correct": 2, "accuracy": 2 / 3}
    assert pseudo_label.label_quality(np.zeros(0, int), np.zeros(0, int), pool)["accuracy"] is None


def test_load_datasets_adds_the_pseudo_labelled_examples(tiny_folder, cache_dir,
                                                         tmp_path) -> None:
    config = tiny_config(tiny_folder, cache_dir)
    pool = datasets.load_datasets(config).train
    config.dataset.num_labelled = 8
    labelled = datasets.load_datasets(config).train
    np.testing.assert_array_equal(np.bincount(labelled.labels), [2, 2, 2, 2])
    chosen = pipeline.labelled_indices(pool.labels, 8, 4)
    np.testing.assert_array_equal(labelled.images, pool.images[chosen])
    extra = np.setdiff1d(np.arange(96), chosen)[[0, 5, 40]]
    path = str(tmp_path / "pl.npz")
    np.savez(path, indices=extra, labels=np.array([3, 3, 0]))
    config.dataset.pseudo_labels = path
    union = datasets.load_datasets(config).train
    assert len(union) == 11
    np.testing.assert_array_equal(union.images[8:], pool.images[extra])
    np.testing.assert_array_equal(union.labels, np.concatenate([labelled.labels, [3, 3, 0]]))
    np.savez(path, indices=np.array([chosen[0]]), labels=np.array([1]))
    with pytest.raises(ValueError, match=r"pseudo_labels='.*pl.npz': some indices are labelled "
                                         r"examples"):
        datasets.load_datasets(config)
    config.dataset.pseudo_labels = str(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match=r"pseudo_labels='.*missing.npz' does not exist"):
        datasets.load_datasets(config)
    config.dataset.num_labelled = 0
    with pytest.raises(ValueError, match=r"needs a labelled subset: set "
                                         r"config.dataset.num_labelled"):
        datasets.load_datasets(config)


@pytest.fixture
def stubbed(tiny_folder, cache_dir, monkeypatch):
    """Rounds with training and prediction stubbed. Training returns test accuracy 0.5 in
    round 0 and 0.6 in round 1 and records each round's training set; prediction is right on
    unlabelled example j unless j % 4 == 0, with confidence 0.6 when j % 3 == 0, else 0.99."""
    config = tiny_config(tiny_folder, cache_dir)
    config.dataset.num_labelled = 8
    pool, unlabelled = pseudo_label.unlabelled_pool(config)
    trained = {}

    def fake_train(config, workdir):
        trained[os.path.basename(workdir)] = (config, datasets.load_datasets(config).train)
        return {"test_accuracy": {"round_0": 0.5, "round_1": 0.6}[os.path.basename(workdir)],
                "epochs": 2.0}

    def fake_probabilities(workdir, results, images):
        np.testing.assert_array_equal(images, pool.images[unlabelled])
        j = np.arange(len(images))
        predicted = np.where(j % 4 == 0, (pool.labels[unlabelled] + 1) % 4,
                             pool.labels[unlabelled])
        confidence = np.where(j % 3 == 0, 0.6, 0.99)
        probabilities = np.full((len(images), 4), 0.0)
        probabilities[j, predicted] = confidence
        probabilities[j, (predicted + 1) % 4] = 1 - confidence
        return probabilities

    monkeypatch.setattr(train, "train_and_evaluate", fake_train)
    monkeypatch.setattr(multirun, "probabilities", fake_probabilities)
    return config, pool, unlabelled, trained


def test_rounds_train_on_the_confident_pseudo_labels(stubbed, tmp_path) -> None:
    config, pool, unlabelled, trained = stubbed
    assert len(unlabelled) == 88
    report = pseudo_label.pseudo_label(config, str(tmp_path), rounds=1, threshold=0.9)
    # kept: j % 3 != 0, 58 of 88; wrong among them: j % 4 == 0 but not j % 12 == 0, 14
    selected = {"count": 58, "correct": 44, "accuracy": 44 / 58}
    assert report["rounds"][0]["selected"] == selected
    assert report["rounds"][0]["pool_accuracy"] == 66 / 88
    assert report["rounds"][1]["trained_on_pseudo_labels"] == selected
    assert [r["test_accuracy"] for r in report["rounds"]] == [0.5, 0.6]
    round_1, train_1 = trained["round_1"]
    assert round_1.dataset.pseudo_labels == str(tmp_path / "round_0" / "pseudo_labels.npz")
    assert len(trained["round_0"][1]) == 8 and len(train_1) == 8 + 58
    saved = np.load(round_1.dataset.pseudo_labels)
    np.testing.assert_array_equal(saved["indices"], unlabelled[np.arange(88) % 3 != 0])
    np.testing.assert_array_equal(train_1.labels[8:], saved["labels"])
    assert np.sum(train_1.labels[8:] != pool.labels[saved["indices"]]) == 14
    assert json.load(open(tmp_path / "pseudo_label.json")) == report
    table = open(tmp_path / "pseudo_label.md").read()
    assert "| 0 | 8 + 0 | 0.5000 | 58 (accuracy 0.7586) | 0.7500 |" in table
    assert "| 1 | 8 + 58 (accuracy 0.7586) | 0.6000 | (last round) |  |" in table
    assert "Hardware: cpu" in table and "runs: 2." in table
    with pytest.raises(ValueError, match=r"pseudo_labels.npz was written with threshold=0.9, "
                                         r"not 0.5: use a new --workdir"):
        pseudo_label.pseudo_label(config, str(tmp_path), rounds=1, threshold=0.5)


def test_pseudo_labelling_needs_a_labelled_subset(tiny_folder, cache_dir, tmp_path) -> None:
    config = tiny_config(tiny_folder, cache_dir)
    with pytest.raises(ConfigError, match=r"set --config.dataset.num_labelled"):
        pseudo_label.pseudo_label(config, str(tmp_path), rounds=1)


@pytest.mark.parametrize("path", sorted(glob.glob(str(REPO / "experiments/pseudo_label_*.py"))))
def test_experiment_definitions_are_valid(path: str) -> None:
    config = load_config("", path)
    validate(config)
    assert config.dataset.num_labelled > 0
    assert set(config.pseudo_label) <= set(pseudo_label.SETTINGS)
