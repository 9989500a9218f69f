"""From decoded arrays to what the jitted steps read: subsets, a validation split,
epoch permutations and padded evaluation arrays. All deterministic."""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from cv_jax.data.dataset import ArrayDataset, Split


def take(dataset: Split, indices: np.ndarray) -> Split:
    """The examples at ``indices``, in that order (of decoded images or of image files)."""
    return dataset.take(indices)


def parse_classes(spec: str, class_names: tuple[str, ...]) -> list[int]:
    """``dataset.classes``: '0-4', '5,7,9' or 'cat,dog' (indices, ranges or folder names) ->
    the chosen class indices, in the order given; '' = every class."""
    if not spec:
        return list(range(len(class_names)))
    chosen: list[int] = []
    for item in (part.strip() for part in spec.split(",")):
        start, dash, end = item.partition("-")
        if item in class_names:
            chosen.append(class_names.index(item))
        elif dash and start.isdigit() and end.isdigit():
            chosen.extend(range(int(start), int(end) + 1))
        elif item.isdigit():
            chosen.append(int(item))
        else:
            raise ValueError(f"config.dataset.classes={spec!r}: {item!r} is neither a class "
                             f"index nor one of {list(class_names)}")
    bad = [k for k in chosen if k >= len(class_names)]
    if bad or len(set(chosen)) != len(chosen):
        raise ValueError(f"config.dataset.classes={spec!r}: use distinct indices in "
                         f"0..{len(class_names) - 1} (got {chosen})")
    return chosen


def select_classes(dataset: Split, spec: str) -> Split:
    """The examples of the classes ``spec`` names (see :func:`parse_classes`), relabelled
    0..k-1 in that order, with those class names."""
    chosen = parse_classes(spec, dataset.class_names)
    if chosen == list(range(len(dataset.class_names))):
        return dataset
    relabel = np.full(len(dataset.class_names), -1, np.int32)
    relabel[chosen] = np.arange(len(chosen), dtype=np.int32)
    kept = take(dataset, np.flatnonzero(relabel[dataset.labels] >= 0))
    return dataclasses.replace(kept, labels=relabel[kept.labels],
                               class_names=tuple(dataset.class_names[k] for k in chosen))


def shuffled_order(n: int, seed: int) -> np.ndarray:
    """A fixed permutation of range(n) (numpy, independent of JAX versions)."""
    return np.random.default_rng(seed).permutation(n)


def limit(dataset: Split, max_examples: int, seed: int = 0) -> Split:
    """A fixed random subset of ``max_examples`` (sorted back into source order); 0: all."""
    if max_examples <= 0 or max_examples >= len(dataset):
        return dataset
    return take(dataset, np.sort(shuffled_order(len(dataset), seed)[:max_examples]))


def long_tailed(dataset: Split, imbalance_ratio: float, seed: int = 0) -> Split:
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


def rebalance(dataset: Split, mode: str, seed: int = 0) -> Split:
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


def split_validation(dataset: Split, size: int, seed: int = 0) -> tuple[Split, Split | None]:
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


# ---------------------------------------------------------- folds, resampling, semi-supervised


def fold_ids(labels: np.ndarray, num_folds: int, stratified: bool = True,
             seed: int = 0) -> np.ndarray:
    """The fold (0..num_folds-1) of every example, fixed by ``seed``. Examples are shuffled
    (within each class when ``stratified``) and dealt round-robin, so fold sizes differ by at
    most 1, and so do a class's counts in any two folds when stratified."""
    if num_folds < 2 or num_folds > len(labels):
        raise ValueError(f"config.dataset.num_folds={num_folds}: use 2..{len(labels)} folds "
                         f"for a training set of {len(labels)} examples")
    order = shuffled_order(len(labels), seed)
    if stratified:
        order = order[np.argsort(labels[order], kind="stable")]  # class by class, shuffled
    folds = np.empty(len(labels), np.int64)
    folds[order] = np.arange(len(labels)) % num_folds
    return folds


def split_fold(dataset: Split, num_folds: int, fold: int, stratified: bool = True,
               seed: int = 0) -> tuple[Split, Split]:
    """``(train, validation)``: fold ``fold`` of ``num_folds`` held out, the rest to train on."""
    if not 0 <= fold < num_folds:
        raise ValueError(f"config.dataset.fold={fold} is not a fold of "
                         f"config.dataset.num_folds={num_folds}; use 0..{num_folds - 1}")
    held_out = fold_ids(dataset.labels, num_folds, stratified, seed) == fold
    return take(dataset, np.flatnonzero(~held_out)), take(dataset, np.flatnonzero(held_out))


def resample_indices(n: int, seed: int, weights: np.ndarray | None = None) -> np.ndarray:
    """``n`` draws with replacement from range(n), sorted: a bootstrap sample, or with
    ``weights`` (>= 0, any scale) each example drawn with probability proportional to its
    weight. Fixed by ``seed``."""
    p = None
    if weights is not None:
        weights = np.asarray(weights, np.float64)
        if weights.shape != (n,) or np.any(weights < 0) or not weights.sum() > 0:
            raise ValueError(f"resampling weights must be {n} numbers >= 0 with a positive sum "
                             f"(one per training example), got shape {weights.shape}")
        p = weights / weights.sum()
    return np.sort(np.random.default_rng(seed).choice(n, n, replace=True, p=p))


def resample(dataset: Split, seed: int, weights_path: str = "") -> Split:
    """``config.dataset.resample_seed`` / ``resample_weights``: the training set replaced by
    ``resample_indices`` of it (weights from an .npy, or an .npz's array 'weights'; '' =
    uniform); seed < 0: unchanged."""
    if seed < 0:
        if weights_path:
            raise ValueError(f"config.dataset.resample_weights={weights_path!r} needs "
                             "config.dataset.resample_seed >= 0 to draw the sample with")
        return dataset
    weights = None
    if weights_path:
        weights = _read_arrays(weights_path, "resample_weights", ("weights",))["weights"]
    try:
        return take(dataset, resample_indices(len(dataset), seed, weights))
    except ValueError as e:
        raise ValueError(f"config.dataset.resample_weights={weights_path!r}: {e}") from None


def labelled_indices(labels: np.ndarray, num_labelled: int, num_classes: int,
                     seed: int = 0) -> np.ndarray:
    """A class-balanced labelled subset, fixed by ``seed``: ``num_labelled // K`` examples of
    every class, one more for the first ``num_labelled % K`` classes. Sorted indices."""
    if not 0 < num_labelled <= len(labels):
        raise ValueError(f"config.dataset.num_labelled={num_labelled}: use 1..{len(labels)} "
                         f"(the training set has {len(labels)} examples)")
    order = shuffled_order(len(labels), seed)
    chosen = []
    for k in range(num_classes):
        quota = num_labelled // num_classes + (k < num_labelled % num_classes)
        members = order[labels[order] == k]
        if len(members) < quota:
            raise ValueError(f"config.dataset.num_labelled={num_labelled} needs {quota} "
                             f"examples of class {k}, which has {len(members)}; use at most "
                             f"{len(members) * num_classes}")
        chosen.append(members[:quota])
    return np.sort(np.concatenate(chosen))


def semi_supervised(pool: ArrayDataset, num_labelled: int, seed: int = 0,
                    pseudo_labels: str = "") -> ArrayDataset:
    """The labelled subset of ``pool`` (``labelled_indices``), then the examples of the .npz
    ``pseudo_labels`` (``indices`` into ``pool``, ``labels`` replacing theirs). The other
    examples of ``pool`` are the unlabelled ones. num_labelled 0: ``pool`` unchanged."""
    if not num_labelled:
        if pseudo_labels:
            raise ValueError(f"config.dataset.pseudo_labels={pseudo_labels!r} needs a labelled "
                             "subset: set config.dataset.num_labelled (e.g. 4000)")
        return pool
    labelled = labelled_indices(pool.labels, num_labelled, len(pool.class_names), seed)
    if not pseudo_labels:
        return take(pool, labelled)
    indices, labels = read_pseudo_labels(pseudo_labels)
    check_pseudo_labels(indices, labels, labelled, len(pool), len(pool.class_names),
                        pseudo_labels)
    return dataclasses.replace(
        pool, images=np.concatenate([pool.images[labelled], pool.images[indices]]),
        labels=np.concatenate([pool.labels[labelled], labels.astype(np.int32)]))


def check_pseudo_labels(indices: np.ndarray, labels: np.ndarray, labelled: np.ndarray,
                        pool_size: int, num_classes: int, path: str) -> None:
    """ValueError naming ``path`` unless the pseudo-labels are distinct unlabelled examples
    with valid class labels."""
    problem = ""
    if indices.shape != labels.shape or indices.ndim != 1:
        problem = f"indices {indices.shape} and labels {labels.shape} must be equal-length 1-D"
    elif len(indices) and (indices.min() < 0 or indices.max() >= pool_size):
        problem = f"indices must lie in 0..{pool_size - 1}"
    elif len(np.unique(indices)) != len(indices):
        problem = "indices repeat"
    elif np.intersect1d(indices, labelled).size:
        problem = "some indices are labelled examples (pseudo-label only the unlabelled ones)"
    elif len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        problem = f"labels must lie in 0..{num_classes - 1}"
    if problem:
        raise ValueError(f"config.dataset.pseudo_labels={path!r}: {problem}; give the "
                          "pseudo_labels.npz that cv_jax.workflows.pseudo_label wrote for "
                          "this training set")


def read_pseudo_labels(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, labels)`` of a ``dataset.pseudo_labels`` .npz."""
    data = _read_arrays(path, "pseudo_labels", ("indices", "labels"))
    return data["indices"], data["labels"]


def _read_arrays(path: str, key: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays of the .npz at ``config.dataset.<key>`` (an .npy: the array ``names[0]``),
    which must include ``names``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.dataset.{key}={path!r} does not exist; give the path "
                                "of a file written by a previous run")
    data = np.load(path)
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            data = dict(data)
    else:
        data = {names[0]: data}
    if not set(names) <= set(data):
        raise ValueError(f"config.dataset.{key}={path!r} holds arrays {sorted(data)}; it needs "
                         f"{list(names)}")
    return data
