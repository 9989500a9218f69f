"""configs/fashion_mnist.py trains on MNIST-format IDX files: one grey channel end to end."""

import json
import os
import re

import numpy as np
import pytest
from conftest import load_config, write_idx_folder
from PIL import Image

import cv_jax
from cv_jax.config import ConfigError
from cv_jax.data import idx
from cv_jax.data.pipeline import channel_stats, limit
from cv_jax.data.sources import load_split
from cv_jax.training import datasets, train

CONFIG = "configs/fashion_mnist.py"


@pytest.fixture(scope="module")
def fashion_folder(tmp_path_factory):
    """Fashion-MNIST's four .gz files, 300 train and 50 test images (28x28, 10 classes)."""
    folder = tmp_path_factory.mktemp("data") / "fashion-mnist"
    write_idx_folder(folder, {"train": 300, "test": 50})
    return folder


def fashion_config(recipe, folder, cache_dir):
    config = load_config(recipe, CONFIG)
    config.dataset.update(data_dir=str(folder), cache_dir=cache_dir)
    return config


def test_smoke_recipe_trains_on_idx_files_and_predicts_grey_images(fashion_folder, cache_dir,
                                                                   tmp_path):
    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(fashion_config("smoke", fashion_folder, cache_dir),
                                       workdir)
    # 256 of the 300 training images at batch 32 for 2 epochs; all 50 test images.
    assert results["finished"] and results["steps"] == 16
    assert results["test_examples"] == 50
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f) == results
    saved = json.load(open(os.path.join(workdir, "config.json")))
    train_split = load_split(fashion_folder, "train", cache_dir=cache_dir)
    assert train_split.images.shape == (300, 28, 28, 1)
    assert train_split.class_names == idx.FASHION_MNIST_CLASSES
    # featurewise: one mean and one std, those of the 256-image training subset
    mean, std = channel_stats(limit(train_split, 256))
    assert (saved["dataset"]["mean"], saved["dataset"]["std"]) == (list(mean), list(std))
    assert len(mean) == 1

    model = cv_jax.load(workdir)
    assert model.image_shape == (28, 28, 1) and model.class_names == idx.FASHION_MNIST_CLASSES
    Image.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(tmp_path / "colour.png")
    images = model.read_images([str(tmp_path / "colour.png")])  # RGB file -> one grey channel
    assert images.shape == (1, 28, 28, 1) and np.all(images == 200)
    probabilities = model.predict(images)
    assert probabilities.shape == (1, 10)
    np.testing.assert_allclose(probabilities.sum(), 1.0, rtol=1e-5)


def test_lenet5_recipe_trains_on_28x28_images(fashion_folder, cache_dir, tmp_path):
    config = fashion_config("lenet5,steps=3", fashion_folder, cache_dir)
    config.dataset.update(max_train_examples=128, max_eval_examples=64)
    config.training.update(batch_size=32, log_every_steps=1)
    config.eval.batch_size = 64
    results = train.train_and_evaluate(config, str(tmp_path / "lenet"))
    assert results["finished"] and results["steps"] == 3 and results["test_examples"] == 50
    assert np.isfinite(results["test_loss"])


def test_three_channel_normalisation_on_grey_images_is_refused(fashion_folder, cache_dir):
    config = load_config("smoke")  # configs/cifar10.py: CIFAR-10's three means and stds
    config.dataset.update(data_dir=str(fashion_folder), cache_dir=cache_dir)
    with pytest.raises(ConfigError, match=re.escape(
            "config.dataset.mean=(0.4914, 0.4822, 0.4465) and config.dataset.std=(0.247, "
            "0.2435, 0.2616) have 3 value(s), but the images of dataset 'cifar10' have 1 "
            "channel(s). Fix: give 1 value(s) each (images scaled to [0, 1]), or set "
            "config.dataset.normalization=featurewise")):
        datasets.load_datasets(config)


def test_recipes_and_shortcuts():
    fashion, digits = load_config("", CONFIG), load_config("dataset=mnist,lenet5", CONFIG)
    assert (fashion.recipe, fashion.model.name, fashion.dataset.name) == \
        ("cnn", "convnet", "fashion_mnist")
    assert fashion.model.layers == "conv:32:valid,conv:64:valid,pool:max:2,dropout:0.25"
    assert (fashion.optimizer.name, fashion.optimizer.learning_rate) == ("adadelta", 1.0)
    assert fashion.augment.flip and not digits.augment.flip  # digits are not mirrored
    assert (digits.model.name, digits.model.pad, digits.dataset.name) == ("lenet5", 2, "mnist")
    assert digits.dataset.normalization == fashion.dataset.normalization == "featurewise"
    with pytest.raises(ConfigError, match="dataset='cifar10' in the config string; choose one "
                                          "of fashion_mnist, mnist"):
        load_config("dataset=cifar10", CONFIG)

