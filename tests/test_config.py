"""Config strings, recipes, the locked CLI and validation messages."""

import subprocess
import sys

import pytest
from conftest import REPO, load_config

from cv_jax import configlib


def test_default_recipe_follows_the_backend():
    config = load_config("")
    assert config.recipe == "cpu"
    assert config.recipe_reason == "no recipe named; the JAX backend is cpu"


def test_config_string_variants_and_shortcuts():
    config = load_config("smoke,epochs=3,batch_size=32,seed=4")
    assert (config.recipe, config.training.num_epochs, config.seed) == ("smoke", 3.0, 4)
    # The learning rate scales linearly with the batch size shortcut (64 -> 32).
    assert config.training.batch_size == 32
    assert config.optimizer.learning_rate == pytest.approx(0.25)
    resnet = load_config("cpu,model=resnet20,steps=10")
    assert resnet.model.to_dict() == {"name": "resnet20", "shortcut": "A", "bn_momentum": 0.9,
                                      "bn_epsilon": 1e-5}
    assert resnet.training.num_steps == 10 and resnet.optimizer.freeze == ""


@pytest.mark.parametrize("arg,message", [
    ("fast", "unknown recipe 'fast'.*headline, cpu, smoke"),
    ("smoke,epoch=3", "unknown config-string key 'epoch'.*epochs"),
    ("smoke,epochs=three", "'epochs' expects a float, got 'three'"),
])
def test_bad_config_strings_name_the_problem(arg, message):
    with pytest.raises(configlib.ConfigError, match=message):
        load_config(arg)


def test_unknown_model_field_is_named():
    with pytest.raises(configlib.ConfigError, match="has no field.*'width'"):
        configlib.model_section("airbench", width=3)


def test_cli_rejects_a_misspelt_key_before_training(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cv_jax.main", "--config=configs/cifar10.py:smoke",
         f"--workdir={tmp_path}", "--config.optimizer.learnin_rate=0.1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "learnin_rate" in result.stderr
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("recipe", ["keras", "timm"])
def test_example_recipes_are_valid(recipe):
    config = load_config(recipe)
    configlib.validate(config)
    assert config.recipe == recipe
    if recipe == "keras":
        assert (config.model.name, config.optimizer.name, config.training.batch_size) == (
            "keras_cifar_cnn", "rmsprop", 32)
        assert config.augment.width_shift_range == config.augment.height_shift_range == 0.1
    else:
        assert config.model.name == "resnet18_cifar" and config.mixup.cutmix_alpha == 1.0
        assert config.augment.auto_augment == "randaugment"
