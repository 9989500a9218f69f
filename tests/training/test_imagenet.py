"""configs/imagenet.py: its smoke recipe trains end to end on an ImageFolder of photos of
different sizes (streamed, cropped on the host, every val image evaluated once), and the
ResNet-50 recipe has the values docs/recipes-and-configs.md gives for it."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import load_config, write_photo_folder

import cv_jax
from cv_jax.config import validate
from cv_jax.optim import lr
from cv_jax.optim.chain import param_path, path_mask
from cv_jax.training import runs, train
from cv_jax.training.state import init_variables

CONFIG = "configs/imagenet.py"
TRAIN_PER_CLASS, VAL_PER_CLASS = 16, 5  # 3 classes: 48 training, 15 val images


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photo_folder(tmp_path_factory.mktemp("photos"),
                              {"train": TRAIN_PER_CLASS, "val": VAL_PER_CLASS})


def test_smoke_recipe_trains_on_photos_of_any_size_and_counts_every_val_image_once(
        photos, cache_dir, tmp_path, caplog):
    config = load_config(f"smoke,data_dir={photos}", CONFIG)
    config.dataset.cache_dir = cache_dir
    workdir = str(tmp_path / "run")
    with caplog.at_level("INFO", logger="cv_jax"):
        results = train.train_and_evaluate(config, workdir)
    assert "Listed 48 images of split 'train'" in caplog.text
    # 48 images at batch 16: 3 steps an epoch, 2 epochs; 15 val images, padded to 16 and masked.
    assert results["finished"] and results["steps"] == 6
    assert results["test_examples"] == 3 * VAL_PER_CLASS
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f) == results
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)["dataset"]
    assert (saved["pipeline"], saved["test_split"], saved["stream_crop"]) == \
        ("streaming", "val", 32)
    # The reported count is the trained model's on each val image, read once.
    model = cv_jax.load(workdir, checkpoint="latest")
    assert model.image_shape == (32, 32, 3) and model.class_names == ("cat", "dog", "frog")
    paths = sorted(str(p) for p in photos.glob("val/*/*.jpg"))
    labels = [model.class_names.index(os.path.basename(os.path.dirname(p))) for p in paths]
    predicted = model.predict_files(paths).argmax(-1)
    assert results["test_correct"] == int(np.sum(predicted == labels))


def test_the_resnet50_recipe():
    config = load_config("", CONFIG)
    validate(config)
    assert (config.recipe, config.model.name, config.model.zero_init_residual) == \
        ("resnet50", "resnet50", True)
    d = config.dataset
    assert (d.pipeline, d.train_split, d.test_split, d.image_size, d.stream_crop,
            d.stream_crop_scale, d.stream_flip) == \
        ("streaming", "train", "val", (224, 224), 224, (0.08, 1.0), True)
    assert (config.augment.crop_padding, config.augment.flip) == (0, False)
    assert (config.training.batch_size, config.training.num_epochs,
            config.training.compute_dtype) == (1024, 90.0, "bfloat16")
    o = config.optimizer
    assert (o.name, o.momentum, o.nesterov, o.weight_decay) == ("sgd", 0.9, True, 1e-4)
    assert config.loss.label_smoothing == 0.1
    # 0.1 per 256 images, from 0 to the peak over 5 epochs, then cosine to 0 (ImageNet's
    # 1,281,167 images: 1251 steps an epoch at batch 1024).
    spe = 1_281_167 // 1024
    total = 90 * spe
    warmup, cosine = 5 * spe, total - 5 * spe
    rate = lr.learning_rate(config, spe, total, "conv/kernel",
                            np.array([0, 1000, warmup, warmup + cosine // 2, total]))
    np.testing.assert_allclose(rate, [0.0, 0.4 * 1000 / warmup, 0.4, 0.2, 0.0], rtol=2e-5)  # f32
    assert load_config("batch_size=256", CONFIG).optimizer.learning_rate == 0.1
    small = load_config("model=resnet18,size=160", CONFIG)
    assert (small.model.name, small.model.zero_init_residual, small.dataset.stream_crop,
            small.dataset.image_size) == ("resnet18", True, 160, (160, 160))
    # Weight decay on every conv and dense kernel, none on BatchNorm scales/biases or biases.
    model = runs.build_model(config, 1000)
    params = jax.eval_shape(lambda: init_variables(model, jax.random.key(0),
                                                   (224, 224, 3)))["params"]
    decayed = jax.tree_util.tree_flatten_with_path(path_mask(o.decay_mask)(params))[0]
    paths = {param_path(path): bool(flag) for path, flag in decayed}
    assert len(paths) == 161  # 53 convolutions, 53 BatchNorms (scale, bias), the dense layer
    assert {p for p, flag in paths.items() if flag} == {p for p in paths if p.endswith("kernel")}
    assert sum(paths.values()) == 54
    assert not any(flag for p, flag in paths.items() if p.endswith(("scale", "bias")))
