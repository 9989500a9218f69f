"""Bagging and SAMME boosting: resampling, combining members, the weight update, and one tiny
bagged and boosted ensemble trained end to end."""

from __future__ import annotations

import glob
import json
import math
import os

import jax
import numpy as np
import pytest
from conftest import REPO, convnet_config, load_config, tiny_config

from cv_jax.config import ConfigError, validate
from cv_jax.data import pipeline
from cv_jax.training import datasets, runs
from cv_jax.workflows import ensemble, members, multirun


def test_bootstrap_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    first = pipeline.resample_indices(1000, seed=3)
    assert first.shape == (1000,) and first.min() >= 0 and first.max() < 1000
    np.testing.assert_array_equal(first, pipeline.resample_indices(1000, seed=3))
    assert not np.array_equal(first, pipeline.resample_indices(1000, seed=4))
    assert len(np.unique(first)) / 1000 == pytest.approx(1 - math.exp(-1), abs=0.03)


def test_weighted_resampling_follows_the_weights() -> None:
    weights = np.array([0.0, 3.0, 0.0, 1.0])  # any scale
    drawn = pipeline.resample_indices(4, seed=0, weights=weights)
    assert len(drawn) == 4 and set(drawn.tolist()) <= {1, 3}
    many = pipeline.resample_indices(4000, seed=0, weights=np.tile(weights, 1000))
    assert np.mean(many % 4 == 1) == pytest.approx(0.75, abs=0.03)
    with pytest.raises(ValueError, match=r"must be 4 numbers >= 0 with a positive sum"):
        pipeline.resample_indices(4, seed=0, weights=np.array([1.0, -1.0, 0.0, 0.0]))


def test_load_datasets_resamples_the_training_set(tiny_folder, cache_dir, tmp_path) -> None:
    config = tiny_config(tiny_folder, cache_dir)
    base = datasets.load_datasets(config).train
    config.dataset.resample_seed = 7
    bagged = datasets.load_datasets(config).train
    expected = pipeline.take(base, pipeline.resample_indices(96, 7))
    np.testing.assert_array_equal(bagged.images, expected.images)
    np.testing.assert_array_equal(bagged.labels, expected.labels)
    weights = np.zeros(96)
    weights[5] = 1.0
    np.save(tmp_path / "w.npy", weights)
    config.dataset.resample_weights = str(tmp_path / "w.npy")
    only = datasets.load_datasets(config).train
    assert len(only) == 96 and (only.images == base.images[5]).all()
    np.save(tmp_path / "short.npy", np.ones(95))
    config.dataset.resample_weights = str(tmp_path / "short.npy")
    with pytest.raises(ValueError, match=r"resample_weights='.*short.npy': resampling weights "
                                         r"must be 96 numbers"):
        datasets.load_datasets(config)
    config.dataset.resample_seed = -1
    with pytest.raises(ValueError, match=r"needs config.dataset.resample_seed >= 0"):
        datasets.load_datasets(config)


def test_mean_probabilities_and_majority_vote_match_hand_computation() -> None:
    probabilities = np.array([  # 3 members, 2 examples, 3 classes
        [[0.9, 0.1, 0.0], [0.2, 0.3, 0.5]],
        [[0.4, 0.6, 0.0], [0.1, 0.1, 0.8]],
        [[0.4, 0.6, 0.0], [0.6, 0.3, 0.1]],
    ])
    # mean of example 0: (0.567, 0.433, 0); of example 1: (0.3, 0.233, 0.467)
    np.testing.assert_array_equal(ensemble.average_probabilities(probabilities), [0, 2])
    # votes of example 0: 0, 1, 1; of example 1: 2, 2, 0
    np.testing.assert_array_equal(ensemble.majority_vote(probabilities.argmax(-1), 3), [1, 2])
    votes = np.array([[0, 2], [2, 0]])  # a tie on each example goes to the lowest class
    np.testing.assert_array_equal(ensemble.majority_vote(votes, 3), [0, 0])
    np.testing.assert_array_equal(ensemble.majority_vote(votes, 3, np.array([1.0, 2.0])),
                                  [2, 0])


def test_samme_update_matches_hand_computation() -> None:
    weights = np.full(4, 0.25)
    misclassified = np.array([1.0, 0.0, 0.0, 0.0])
    error = ensemble.weighted_error(weights, misclassified)
    assert error == 0.25
    alpha = ensemble.samme_alpha(error, num_classes=3)
    assert alpha == pytest.approx(math.log(3) + math.log(2))
    np.testing.assert_allclose(ensemble.reweight(weights, misclassified, alpha),
                               np.array([6.0, 1.0, 1.0, 1.0]) / 9)
    assert ensemble.weighted_error(np.array([1.0, 3.0, 6.0]), np.array([0, 1, 1])) == 0.9
    assert ensemble.samme_alpha(2 / 3, num_classes=3) == pytest.approx(0.0)  # chance level
    assert ensemble.samme_alpha(0.0, 3) == math.inf and ensemble.samme_alpha(1.0, 3) < 0


def quick_config(tiny_folder, cache_dir):
    """A one-layer convnet for one epoch (6 steps), no augmentation: seconds per member."""
    return convnet_config(tiny_folder, cache_dir, num_steps=6, eval_every_epochs=100.0)


@pytest.fixture(scope="module")
def bagged(tiny_folder, cache_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("bagging"))
    config = quick_config(tiny_folder, cache_dir)
    config.seed = 10
    return workdir, config, ensemble.build(config, workdir, "bagging", members=2)


def test_bagging_members_and_ensemble(bagged) -> None:
    workdir, config, report = bagged
    test = datasets.load_datasets(config).test
    probabilities = []
    for i in range(2):
        member = ensemble.member_dir(workdir, i)
        saved = json.load(open(os.path.join(member, "config.json")))
        assert saved["seed"] == 10 + i and saved["dataset"]["resample_seed"] == 10 + i
        results = json.load(open(os.path.join(member, "results.json")))
        assert report["members"][i]["test_accuracy"] == results["test_accuracy"]
        p = multirun.probabilities(member, results, test.images)
        assert np.mean(p.argmax(-1) == test.labels) == results["test_accuracy"]
        probabilities.append(p)
    mean = np.mean(probabilities, axis=0).argmax(-1)
    assert report["ensemble"]["mean_probabilities"]["correct"] == np.sum(mean == test.labels)
    assert report["members"][1]["distinct_train_fraction"] == len(
        np.unique(pipeline.resample_indices(96, 11))) / 96
    assert report["provenance"]["seeds"] == [10, 11]
    assert report["provenance"]["epochs"] == [1.0, 1.0]
    table = open(os.path.join(workdir, "ensemble.md")).read()
    assert "# Bagging ensemble of 2 members" in table and "runs: 2." in table
    accuracy = report["ensemble"]["mean_probabilities"]["accuracy"]
    assert f"| **ensemble: mean probabilities** |  |  | **{accuracy:.4f}** (" in table


@pytest.mark.parametrize("mode", ["vmap", "unroll"])
def test_bagging_as_one_program_equals_separate_members(tiny_folder, cache_dir, tmp_path,
                                                        mode) -> None:
    """Members trained as one program, each batch mapped through the member's own bootstrap
    sample, equal the separate bagging runs given the same data order (data_seed 10, which
    the program's members share). Weights to the tolerance of tests/test_vectorized.py."""
    config = quick_config(tiny_folder, cache_dir)
    config.seed, config.data_seed = 10, 10
    separate = ensemble.build(config, str(tmp_path / "separate"), "bagging", members=2)
    together = ensemble.build(config, str(tmp_path / "together"), "bagging", members=2,
                              vectorized=mode)
    for i, seed in enumerate((10, 11)):
        alone, member = (runs.load_run(d) for d in (
            ensemble.member_dir(str(tmp_path / "separate"), i),
            members.member_dir(str(tmp_path / "together"), seed)))
        assert member.config.dataset.resample_seed == seed == alone.config.dataset.resample_seed
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-6),
                     jax.device_get(member.state.params), jax.device_get(alone.state.params))
    assert [m["test_accuracy"] for m in together["members"]] == [
        m["test_accuracy"] for m in separate["members"]]
    assert together["ensemble"] == separate["ensemble"]
    assert together["vectorized"] == mode
    table = open(tmp_path / "together" / "ensemble.md").read()
    assert f"members are trained together as one {mode} program, in seed_<s>/." in table


def test_vectorized_boosting_is_refused(tiny_folder, cache_dir, tmp_path) -> None:
    with pytest.raises(ConfigError, match="boosting members train one after another"):
        ensemble.build(quick_config(tiny_folder, cache_dir), str(tmp_path), "boosting",
                       members=2, vectorized="vmap")


def test_boosting_weights_follow_samme(tiny_folder, cache_dir, tmp_path) -> None:
    config = quick_config(tiny_folder, cache_dir)
    report = ensemble.build(config, str(tmp_path), "boosting", members=2)
    first = np.load(tmp_path / "member_0" / "samme.npz")["weights"]
    np.testing.assert_array_equal(first, np.full(96, 1 / 96))
    row = report["members"][0]
    assert row["alpha"] == pytest.approx(math.log((1 - row["weighted_error"])
                                                  / row["weighted_error"]) + math.log(3))
    second = np.load(tmp_path / "member_1" / "samme.npz")["weights"]
    assert second.sum() == pytest.approx(1.0)
    # misclassified examples went up by exp(alpha) relative to the others
    assert sorted(np.unique(np.round(second / second.min(), 6))) == pytest.approx(
        [1.0, math.exp(row["alpha"])])
    assert np.sum(second > second.min()) == round((1 - row["train_accuracy"]) * 96)
    saved = json.load(open(tmp_path / "member_1" / "config.json"))
    assert saved["dataset"]["resample_weights"] == str(tmp_path / "member_1" / "samme.npz")
    assert "samme_vote" in report["ensemble"] and "| alpha |" in open(
        tmp_path / "ensemble.md").read()


@pytest.mark.parametrize("path", sorted(glob.glob(str(REPO / "experiments/ensemble_*.py"))))
def test_experiment_definitions_are_valid(path: str) -> None:
    config = load_config("", path)
    validate(config)
    assert config.ensemble.method in ensemble.METHODS and config.ensemble.members >= 1
