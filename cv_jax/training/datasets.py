"""A run's datasets: the training, validation and test splits its config names, read (or
loaded from the cache) and prepared (class selection, validation split or fold, subsampling,
balancing), the featurewise normalisation statistics of the training split, and the pipeline
that feeds the training split to the devices (``dataset.pipeline``: resident or streaming)."""

from __future__ import annotations

import dataclasses
import logging

import jax
import ml_collections as mlc
import numpy as np

from cv_jax.config import ConfigError
from cv_jax.config.validate import check_streaming
from cv_jax.data import pipeline
from cv_jax.data.dataset import ArrayDataset, FileDataset, Split
from cv_jax.data.locate import find_dataset
from cv_jax.data.sources import check_same_classes, list_split, load_split

log = logging.getLogger("cv_jax")


@dataclasses.dataclass
class Datasets:
    """The splits of a run."""

    train: Split  # images read when batched (FileDataset) only if streamed
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

    def load(split: str) -> ArrayDataset:
        return load_split(source, split, image_size=size, cache_dir=cfg.cache_dir or None,
                          bad_files=cfg.bad_files)

    train = None
    if cfg.pipeline != "resident":  # an ImageFolder directory or .tar is listed, not decoded
        train = list_split(source, cfg.train_split, image_size=size, bad_files=cfg.bad_files,
                           cache_dir=cfg.cache_dir or None, crop=cfg.stream_crop)
    train = train if train is not None else load(cfg.train_split)
    cfg.pipeline = choose_pipeline(cfg.pipeline, train)
    check_streaming(config)
    if cfg.pipeline == "streaming" and cfg.stream_crop and isinstance(train, ArrayDataset):
        raise ConfigError(
            f"config.dataset.stream_crop={cfg.stream_crop} crops training images as their files "
            f"are read, but {source} is not an ImageFolder directory, an uncompressed .tar or a "
            "tfds: split (its decoded arrays are streamed). Fix: extract it into a directory "
            "<root>/<split>/<class>/<image> or decompress it (.tar.gz -> .tar), or set "
            "config.dataset.stream_crop=0 (augment.crop_padding crops on the device).")
    if cfg.pipeline == "resident" and isinstance(train, FileDataset):
        train = load(cfg.train_split)
    test = load(cfg.test_split)
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
    if isinstance(validation, FileDataset):  # evaluated from the devices, as test is
        validation = validation.decoded()
    resolve_normalization(config, train)
    return Datasets(train, test, validation, skipped)


CPU_RESIDENT_BYTES = 4 << 30  # the resident budget where a device reports no memory size


def choose_pipeline(requested: str, train: Split) -> str:
    """``dataset.pipeline`` resolved: 'auto' is 'resident' when the decoded training split
    takes under a quarter of one device's memory (``memory_stats()['bytes_limit']``; where the
    device reports none, as a CPU, under 4 GiB), else 'streaming'. Logs the choice and why."""
    size = len(train) * int(np.prod(train.image_shape))
    if requested != "auto":
        log.info("Pipeline %r (dataset.pipeline): the decoded training split is %.2f GB.",
                 requested, size / 1e9)
        return requested
    device = jax.local_devices()[0]
    limit = (device.memory_stats() or {}).get("bytes_limit")
    budget = limit // 4 if limit else CPU_RESIDENT_BYTES
    where = f"1/4 of {device.device_kind}'s {limit / 1e9:.1f} GB" if limit else \
        f"{budget / 1e9:.1f} GB ({device.platform} reports no memory size)"
    chosen = "resident" if size < budget else "streaming"
    log.info("Pipeline %r (dataset.pipeline='auto'): the decoded training split is %.2f GB, "
             "%s the resident budget of %s.", chosen, size / 1e9,
             "under" if chosen == "resident" else "not under", where)
    return chosen


def resolve_normalization(config: mlc.ConfigDict, train: Split) -> None:
    """With ``dataset.normalization='featurewise'``, set ``dataset.mean``/``std`` to the training
    set's per-channel statistics (so the saved config holds the values the run used); then
    ConfigError unless they have one value per channel of the images."""
    cfg = config.dataset
    if cfg.normalization == "featurewise":
        mean, std = pipeline.channel_stats(train)
        cfg.mean, cfg.std = mean, std
        log.info("Featurewise normalisation from %d training images: mean %s, std %s",
                 len(train), np.round(mean, 4).tolist(), np.round(std, 4).tolist())
    channels = train.image_shape[-1]
    if len(cfg.mean) != channels:  # validate() checked that std has as many values as mean
        raise ConfigError(
            f"config.dataset.mean={tuple(cfg.mean)} and config.dataset.std={tuple(cfg.std)} have "
            f"{len(cfg.mean)} value(s), but the images of dataset {cfg.name!r} have {channels} "
            f"channel(s). Fix: give {channels} value(s) each (images scaled to [0, 1]), or set "
            "config.dataset.normalization=featurewise to compute them from the training set.")
