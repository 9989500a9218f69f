"""From decoded arrays to what the jitted steps read: subsets, a validation split,
epoch permutations and padded evaluation arrays. All deterministic."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from cv_jax.data.sources import ArrayDataset


def take(dataset: ArrayDataset, indices: np.ndarray) -> ArrayDataset:
    """The examples at ``indices``, in that order."""
    return dataclasses.replace(dataset, images=dataset.images[indices],
                               labels=dataset.labels[indices])


def shuffled_order(n: int, seed: int) -> np.ndarray:
    """A fixed permutation of range(n) (numpy, independent of JAX versions)."""
    return np.random.default_rng(seed).permutation(n)


def limit(dataset: ArrayDataset, max_examples: int, seed: int = 0) -> ArrayDataset:
    """A fixed random subset of ``max_examples`` (sorted back into source order); 0: all."""
    if max_examples <= 0 or max_examples >= len(dataset):
        return dataset
    return take(dataset, np.sort(shuffled_order(len(dataset), seed)[:max_examples]))


def split_validation(dataset: ArrayDataset, size: int,
                     seed: int = 0) -> tuple[ArrayDataset, ArrayDataset | None]:
    """Carves ``size`` examples out of ``dataset`` for validation, the same ones every run."""
    if size <= 0:
        return dataset, None
    if size >= len(dataset):
        raise ValueError(
            f"config.dataset.validation_size={size} leaves no training examples "
            f"(the train split has {len(dataset)}); use a smaller value"
        )
    order = shuffled_order(len(dataset), seed)
    return take(dataset, np.sort(order[size:])), take(dataset, np.sort(order[:size]))


def epoch_permutation(key: jax.Array, epoch: jax.Array, n: int) -> jax.Array:
    """The example order of ``epoch``: a permutation keyed by (run seed, epoch)."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)


def pad_to_multiple(dataset: ArrayDataset, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels padded with zeros to a multiple of ``multiple`` examples.

    Evaluation runs over the padded arrays and then drops predictions past ``len(dataset)``,
    so every example is counted exactly once.
    """
    pad = -len(dataset) % multiple
    images = np.concatenate([dataset.images, np.zeros((pad, *dataset.images.shape[1:]),
                                                      dataset.images.dtype)])
    labels = np.concatenate([dataset.labels, np.zeros((pad,), dataset.labels.dtype)])
    return images, labels
