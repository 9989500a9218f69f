"""A run's datasets: the training, validation and test splits its config names, read (or
loaded from the cache) and prepared (class selection, validation split or fold, subsampling,
balancing), and the featurewise normalisation statistics of the training split."""

from __future__ import annotations

import dataclasses
import logging

import ml_collections as mlc
import numpy as np

from cv_jax.config import ConfigError
from cv_jax.data import pipeline
from cv_jax.data.dataset import ArrayDataset
from cv_jax.data.locate import find_dataset
from cv_jax.data.sources import check_same_classes, load_split

log = logging.getLogger("cv_jax")


@dataclasses.dataclass
class Datasets:
    """The splits of a run."""

    train: ArrayDataset
    test: ArrayDataset
    validation: ArrayDataset | None = None  # carved from train when dataset.validation_size > 0
    skipped: tuple[tuple[str, str], ...] = ()  # (file, reason) under dataset.bad_files='skip'

    def eval_sets(self) -> dict[str, ArrayDataset]:
        """The splits evaluated during training, by the name used in metrics."""
        extra = {"validation": self.validation} if self.validation is not None else {}
        return extra | {"test": self.test}


def load_datasets(config: mlc.ConfigDict) -> Datasets:
    """Reads (or loads from cache) the splits named by ``config.dataset``; with featurewise
    normalisation, sets ``config.dataset.mean``/``std`` from the training split."""
    cfg = config.dataset
    source = find_dataset(cfg.name, cfg.data_dir or None)
    size = tuple(cfg.image_size) or None
    train, test = (load_split(source, split, image_size=size, cache_dir=cfg.cache_dir or None,
                              bad_files=cfg.bad_files)
                   for split in (cfg.train_split, cfg.test_split))
    skipped = train.skipped + test.skipped
    check_same_classes(train, test, cfg.test_split)
    train, test = (pipeline.select_classes(split, cfg.classes) for split in (train, test))
    train, validation = pipeline.split_validation(train, cfg.validation_size)
    if validation is not None:
        validation = pipeline.limit(validation, cfg.max_eval_examples)
    train = pipeline.limit(train, cfg.max_train_examples)
    if cfg.num_folds:
        if validation is not None or config.early_stopping.patience:
            # checkpoint.selection reads validation_size: with folds it would pick on test.
            raise ConfigError(
                f"config.dataset.num_folds={cfg.num_folds} holds out a fold as the validation "
                "split: set config.dataset.validation_size=0 and config.early_stopping.patience=0")
        train, validation = pipeline.split_fold(train, cfg.num_folds, cfg.fold,
                                                cfg.stratified_folds)
    train = pipeline.long_tailed(train, cfg.imbalance_ratio)
    train = pipeline.semi_supervised(train, cfg.num_labelled, cfg.labelled_seed,
                                     cfg.pseudo_labels)
    train = pipeline.rebalance(train, cfg.balance)
    train = pipeline.resample(train, cfg.resample_seed, cfg.resample_weights)
    test = pipeline.limit(test, cfg.max_eval_examples)
    resolve_normalization(config, train)
    return Datasets(train, test, validation, skipped)


def resolve_normalization(config: mlc.ConfigDict, train: ArrayDataset) -> None:
    """With ``dataset.normalization='featurewise'``, set ``dataset.mean``/``std`` to the training
    set's per-channel statistics (so the saved config holds the values the run used); then
    ConfigError unless they have one value per channel of the images."""
    cfg = config.dataset
    if cfg.normalization == "featurewise":
        mean, std = pipeline.channel_stats(train)
        cfg.mean, cfg.std = mean, std
        log.info("Featurewise normalisation from %d training images: mean %s, std %s",
                 len(train), np.round(mean, 4).tolist(), np.round(std, 4).tolist())
    channels = train.images.shape[-1]
    if len(cfg.mean) != channels:  # validate() checked that std has as many values as mean
        raise ConfigError(
            f"config.dataset.mean={tuple(cfg.mean)} and config.dataset.std={tuple(cfg.std)} have "
            f"{len(cfg.mean)} value(s), but the images of dataset {cfg.name!r} have {channels} "
            f"channel(s). Fix: give {channels} value(s) each (images scaled to [0, 1]), or set "
            "config.dataset.normalization=featurewise to compute them from the training set.")
