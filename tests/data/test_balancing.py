"""Imbalanced training sets: the long-tailed variant, resampling, balanced accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from cv_jax.data import pipeline
from cv_jax.data.dataset import ArrayDataset
from cv_jax.training.metrics import classification_metrics, per_class_accuracy


def dataset(counts: list[int]) -> ArrayDataset:
    labels = np.concatenate([np.full(c, k, np.int32) for k, c in enumerate(counts)])
    images = np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1, 1).repeat(3, axis=3)
    return ArrayDataset(images=images, labels=labels,
                        class_names=tuple(f"c{k}" for k in range(len(counts))))


def test_long_tailed_counts_follow_the_exponential_profile() -> None:
    data = dataset([100] * 5)
    tailed = pipeline.long_tailed(data, imbalance_ratio=100.0)
    # n_k = 100 * 100 ** (-k / 4): 100, 31.6, 10, 3.16, 1
    np.testing.assert_array_equal(np.bincount(tailed.labels), [100, 31, 10, 3, 1])
    again = pipeline.long_tailed(data, imbalance_ratio=100.0)
    np.testing.assert_array_equal(tailed.images, again.images)  # deterministic
    assert pipeline.long_tailed(data, 1.0) is data


@pytest.mark.parametrize(("mode", "count"), [("oversample", 50), ("undersample", 5)])
def test_rebalance_gives_equal_counts(mode: str, count: int) -> None:
    data = dataset([50, 20, 5])
    balanced = pipeline.rebalance(data, mode)
    np.testing.assert_array_equal(np.bincount(balanced.labels), [count] * 3)
    ids = balanced.images[:, 0, 0, 0]
    # every example's label is still its own; oversampling keeps every original example
    np.testing.assert_array_equal(data.labels[ids], balanced.labels)
    if mode == "oversample":
        assert set(ids.tolist()) == set(range(75))
    else:
        assert len(set(ids.tolist())) == 15
    with pytest.raises(ValueError, match="dataset.balance='both'"):
        pipeline.rebalance(data, "both")


def test_balanced_accuracy_is_the_mean_of_per_class_accuracies() -> None:
    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    predictions = np.array([0, 0, 0, 1, 1, 0, 2])
    assert per_class_accuracy(predictions, labels, ("a", "b", "c")) == {
        "a": 0.75, "b": 1.0, "c": 0.5}
    metrics = classification_metrics(predictions, np.zeros(7), labels, ("a", "b", "c"))
    assert metrics["accuracy"] == 5 / 7 and metrics["correct"] == 5
    assert metrics["balanced_accuracy"] == pytest.approx((0.75 + 1.0 + 0.5) / 3)


def test_featurewise_normalisation_uses_training_statistics() -> None:
    from cv_jax.config import base_config
    from cv_jax.training import datasets

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 4, 4, 3)).astype(np.uint8)
    data = ArrayDataset(images=images, labels=np.zeros(50, np.int32), class_names=("a",))
    mean, std = pipeline.channel_stats(data)
    chunked = pipeline.channel_stats(data, chunk=7)  # chunking must not change the result
    np.testing.assert_allclose(chunked, (mean, std), rtol=1e-12)
    np.testing.assert_allclose(mean, (images / 255.0).mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, (images / 255.0).std(axis=(0, 1, 2)), rtol=1e-9)
    config = base_config()
    given = tuple(config.dataset.mean)
    datasets.resolve_normalization(config, data)
    assert tuple(config.dataset.mean) == given  # 'given' leaves the config alone
    config.dataset.normalization = "featurewise"
    datasets.resolve_normalization(config, data)
    assert tuple(config.dataset.mean) == mean and tuple(config.dataset.std) == std


def test_select_classes_keeps_and_relabels_the_named_classes():
    parse_classes, select_classes = pipeline.parse_classes, pipeline.select_classes
    names = ("a", "b", "c", "d", "e")
    labels = np.array([0, 1, 2, 3, 4, 4, 3, 2], np.int32)
    images = np.arange(8, dtype=np.uint8).reshape(8, 1, 1, 1).repeat(3, -1)
    data = ArrayDataset(images, labels, names)
    assert parse_classes("1-3", names) == [1, 2, 3] and parse_classes("", names) == [0, 1, 2, 3, 4]
    assert parse_classes("e,0", names) == [4, 0]
    subset = select_classes(data, "e,2")
    assert subset.class_names == ("e", "c")
    np.testing.assert_array_equal(subset.labels, [1, 0, 0, 1])
    np.testing.assert_array_equal(subset.images[:, 0, 0, 0], [2, 4, 5, 7])
    for spec, message in [("2-7", "use distinct indices in 0..4"), ("x", "'x' is neither"),
                          ("1,1", "distinct")]:
        with pytest.raises(ValueError, match=message):
            select_classes(data, spec)
