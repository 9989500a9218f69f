"""Config strings, recipes, the locked CLI and validation messages."""

import subprocess
import sys

import jax
import pytest
from conftest import REPO, load_config, tiny_config

from cv_jax.config import ConfigError, lookup, model_section, validate
from cv_jax.training import train


def test_default_recipe_follows_the_backend():
    config = load_config("")
    assert config.recipe == "cpu"
    assert config.recipe_reason == "no recipe named; the JAX backend is cpu"


def test_config_string_variants_and_shortcuts():
    config = load_config("smoke,epochs=3,batch_size=32,seed=4")
    assert (config.recipe, config.training.num_epochs, config.seed) == ("smoke", 3.0, 4)
    # The learning rate scales linearly with the batch size shortcut (64 -> 32): airbench's
    # 11.5 per 1024 examples over Nesterov's gain 1 + 1 / (1 - 0.85), for 32 images.
    assert config.training.batch_size == 32
    assert config.optimizer.learning_rate == pytest.approx(11.5 * 32 / 1024 / (1 + 1 / 0.15))
    resnet = load_config("cpu,model=resnet20,steps=10")
    assert resnet.model.to_dict() == {"name": "resnet20", "shortcut": "A", "bn_momentum": 0.9,
                                      "bn_epsilon": 1e-5}
    assert resnet.training.num_steps == 10 and resnet.optimizer.freeze == ""


@pytest.mark.parametrize("arg,message", [
    ("fast", "unknown recipe 'fast'.*headline, cpu, cpu15, smoke"),
    ("smoke,epoch=3", "unknown config-string key 'epoch'.*epochs"),
    ("smoke,epochs=three", "'epochs' expects a float, got 'three'"),
])
def test_bad_config_strings_name_the_problem(arg, message):
    with pytest.raises(ConfigError, match=message):
        load_config(arg)


def test_unknown_model_field_is_named():
    with pytest.raises(ConfigError, match="has no field.*'width'"):
        model_section("airbench", width=3)


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
    validate(config)
    assert config.recipe == recipe
    if recipe == "keras":
        assert (config.model.name, config.optimizer.name, config.training.batch_size) == (
            "keras_cifar_cnn", "rmsprop", 32)
        assert config.augment.width_shift_range == config.augment.height_shift_range == 0.1
    else:
        assert config.model.name == "resnet18_cifar" and config.mixup.cutmix_alpha == 1.0
        assert config.augment.auto_augment == "randaugment"


# --- bad configs fail before anything compiles ----------------------------------------------

def override(config, dotted: str, value) -> None:
    """Sets a dotted key as a program can (sweeps, config files): a new key is added and the
    default's type is not enforced."""
    parent, _, key = dotted.rpartition(".")
    section = lookup(config, parent) if parent else config
    with section.ignore_type():
        section[key] = value


BAD_CONFIGS = [
    # Unknown keys, listing the valid ones.
    ({"training.batch_sise": 32},
     r"unknown key\(s\) \['batch_sise'\] in config.training; valid keys: .*batch_size"),
    ({"sed": 1}, r"unknown key\(s\) \['sed'\] in the config; valid keys: .*, seed"),
    ({"model.widthz": (8, 16, 16)},
     r"model 'airbench' has no field\(s\) \['widthz'\] in config.model; its fields are "
     r"\[.*'widths'\]"),
    ({"augment.horizontal_flip": True}, r"\['horizontal_flip'\].*is called flip"),
    # Wrong types.
    ({"training.batch_size": 32.5}, r"config.training.batch_size=32.5 is invalid: use a positive "
                                    r"integer$"),
    ({"training.batch_size": "abc"}, r"config.training.batch_size='abc' is invalid: use a "
                                     r"positive integer$"),
    ({"training.batch_size": True}, r"config.training.batch_size=True is invalid: use a positive "
                                    r"integer$"),
    ({"training.eval_every_epochs": float("nan")},
     r"config.training.eval_every_epochs=nan is invalid: use a positive number of epochs$"),
    ({"augment.flip": 1}, r"config.augment.flip=1 is invalid: use True or False$"),
    ({"model.widths": "8,16,16"}, r"config.model.widths='8,16,16' is invalid: use a tuple$"),
    # Out of range.
    ({"training.num_epochs": -1.0}, r"config.training.num_epochs=-1.0 is invalid: use a number "
                                    r">= 0$"),
    ({"training.nonfinite": "ignore"},
     r"config.training.nonfinite='ignore' is invalid: use 'stop' .* or 'skip' "),
    ({"training.max_consecutive_skips": 0},
     r"config.training.max_consecutive_skips=0 is invalid: use an integer >= 1$"),
    ({"seed": -1}, r"config.seed=-1 is invalid: use an integer >= 0$"),
    ({"eval.tta_translate": -1},
     r"config.eval.tta_translate=-1 is invalid: use pixels, an integer >= 0 \(0: off; airbench "
     r"uses 1\)$"),
    ({"dataset.std": (0.25, 0.0, 0.25)},
     r"config.dataset.std=\(0.25, 0.0, 0.25\) is invalid: use per-channel standard deviations "
     r"> 0"),
    ({"optimizer.name": "sgdd"}, r"config.optimizer.name='sgdd' is unknown; choose one of "
                                 r"\[.*'sgd'\]"),
    ({"model.name": "resnet19"}, r"config.model.name='resnet19' is unknown; choose one of "
                                 r".*resnet20"),
    ({"schedule.name": "cosin"}, r"config.schedule.name='cosin' is unknown; choose one of "
                                 r"\[.*'cosine'"),
    # Inconsistent combinations.
    ({"dataset.mean": (0.5, 0.5)}, r"config.dataset.mean=\(0.5, 0.5\) and config.dataset.std="
                                   r"\(.*\) differ in length"),
    ({"schedule.warmup_epochs": 3.0},
     r"config.schedule.warmup_epochs=3.0 is longer than the run \(config.training.num_epochs="
     r"2.0\): use a warmup <= num_epochs$"),
    ({"early_stopping.patience": 2, "training.eval_every_epochs": 2.0},
     r"config.training.eval_every_epochs=2.0 leaves only the final evaluation of a 2.0-epoch "
     r"run, but config.early_stopping.patience > 0 acts on .*: use eval_every_epochs < "
     r"num_epochs$"),
    ({"training.batch_size": 12},
     r"config.training.batch_size=12 does not divide across the 8 devices; use a multiple of 8"),
    ({"training.num_devices": 16},
     r"config.training.num_devices=16 but only 8 cpu device\(s\) exist; use 0"),
    # ... where the data says so (the tiny folder has 96 training images).
    ({"training.batch_size": 128},
     r"config.training.batch_size=128 is larger than the training set \(96 examples\)"),
    ({"dataset.validation_size": 96},
     r"config.dataset.validation_size=96 leaves no training examples .*use a smaller value"),
    ({"dataset.num_folds": 3, "dataset.fold": 3},
     r"config.dataset.fold=3 is not a fold of config.dataset.num_folds=3; use 0..2"),
]


@pytest.fixture
def no_jit(monkeypatch):
    """jax.jit raises: a run that gets as far as compiling anything fails the test."""
    def compiled(*args, **kwargs):
        raise AssertionError("jax.jit was reached")

    monkeypatch.setattr(jax, "jit", compiled)


@pytest.mark.parametrize("overrides,message", BAD_CONFIGS,
                         ids=[",".join(o) for o, _ in BAD_CONFIGS])
def test_bad_config_fails_before_compiling(overrides, message, tiny_folder, cache_dir, tmp_path,
                                           no_jit):
    config = tiny_config(tiny_folder, cache_dir)
    for key, value in overrides.items():
        override(config, key, value)
    with pytest.raises(ValueError, match=message):  # ConfigError is a ValueError
        train.train_and_evaluate(config, str(tmp_path))


def test_a_good_config_reaches_compilation(tiny_folder, cache_dir, tmp_path, no_jit):
    with pytest.raises(AssertionError, match="jax.jit was reached"):
        train.train_and_evaluate(tiny_config(tiny_folder, cache_dir), str(tmp_path))



@pytest.mark.parametrize("model", ["resnet20", "resnet56", "resnet110"])
def test_resnet_paper_recipe_is_the_papers_schedule(model):
    """He et al. 2016, section 4.2: LR 0.1, /10 at 32k and 48k iterations, 64k iterations,
    batch 128 (ResNet-110: 0.01 for the first 400 iterations)."""
    from cv_jax.optim import lr

    config = load_config("resnet_paper" + ("" if model == "resnet20" else f",model={model}"))
    validate(config)
    assert (config.model.name, config.model.shortcut) == (model, "A")
    assert (config.training.batch_size, config.training.num_steps) == (128, 64_000)
    assert (config.optimizer.momentum, config.optimizer.nesterov,
            config.optimizer.weight_decay) == (0.9, False, 1e-4)
    steps = [0, 399, 400, 31_999, 32_000, 47_999, 48_000, 63_999]
    rates = lr.learning_rate(config, 390, 64_000, "stage1_block0/conv1/kernel", steps)
    first = [0.01, 0.01] if model == "resnet110" else [0.1, 0.1]
    assert rates == pytest.approx(first + [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    with pytest.raises(ValueError, match="resnet_paper trains resnet20, .*got model='vgg11'"):
        load_config("resnet_paper,model=vgg11")
