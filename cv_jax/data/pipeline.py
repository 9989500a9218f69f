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


def long_tailed(dataset: ArrayDataset, imbalance_ratio: float, seed: int = 0) -> ArrayDataset:
    """A long-tailed subset: class k keeps ``n_max * ratio ** (-k / (K - 1))`` examples (the
    exponential profile of Cao et al. 2019, arXiv:1906.07413), so the first class keeps all of
    its examples and the last ``1 / ratio`` of them. Which examples stay is fixed by ``seed``;
    ratio <= 1: the dataset unchanged."""
    num_classes = len(dataset.class_names)
    if imbalance_ratio <= 1 or num_classes < 2:
        return dataset
    order = shuffled_order(len(dataset), seed)
    n_max = int(np.bincount(dataset.labels, minlength=num_classes).max())
    keep = []
    for k in range(num_classes):
        count = int(n_max * imbalance_ratio ** (-k / (num_classes - 1)))
        keep.append(order[dataset.labels[order] == k][:max(count, 1)])
    return take(dataset, np.sort(np.concatenate(keep)))


BALANCE_MODES = ("", "oversample", "undersample")


def rebalance(dataset: ArrayDataset, mode: str, seed: int = 0) -> ArrayDataset:
    """Equal class counts by resampling once, deterministically: ``oversample`` repeats randomly
    chosen examples of the smaller classes up to the largest count (every original example
    stays); ``undersample`` keeps a random subset of each class at the smallest count."""
    if not mode:
        return dataset
    if mode not in BALANCE_MODES:
        raise ValueError(f"config.dataset.balance={mode!r}; use one of {BALANCE_MODES}")
    rng = np.random.default_rng(seed)
    counts = np.bincount(dataset.labels, minlength=len(dataset.class_names))
    present = np.flatnonzero(counts)
    target = counts[present].max() if mode == "oversample" else counts[present].min()
    chosen = []
    for k in present:
        members = rng.permutation(np.flatnonzero(dataset.labels == k))
        if mode == "undersample":
            chosen.append(members[:target])
        else:
            extra = rng.choice(members, target - len(members), replace=True)
            chosen.append(np.concatenate([members, extra]))
    return take(dataset, np.sort(np.concatenate(chosen)))


def channel_stats(dataset: ArrayDataset, chunk: int = 4096) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and std of the images scaled to [0, 1] (float64, in chunks)."""
    total = np.zeros(dataset.images.shape[-1])
    squares = np.zeros_like(total)
    for start in range(0, len(dataset), chunk):
        pixels = dataset.images[start:start + chunk].reshape(-1, total.size) / 255.0
        total += pixels.sum(axis=0)
        squares += np.square(pixels).sum(axis=0)
    count = len(dataset) * int(np.prod(dataset.images.shape[1:3]))
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


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
