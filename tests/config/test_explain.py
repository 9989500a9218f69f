"""--explain: a section's keys with their value, default, allowed values and doc."""

import subprocess
import sys

import pytest
from conftest import REPO, load_config

from cv_jax.config import EXPLAIN_SECTIONS, ConfigError, explain
from cv_jax.config.schema import declared_keys


def test_a_key_shows_its_value_default_allowed_values_and_doc():
    config = load_config("smoke")
    config.optimizer.learning_rate = 0.25
    text = explain(config, "optimizer")
    assert text.startswith("[optimizer] the optax chain: update rule, weight decay, ")
    assert ("optimizer.learning_rate = 0.25  (default: 0.1)\n"
            "    allowed: a number >= 0\n"
            "    the peak of the schedule\n") in text
    assert ("optimizer.name = 'sgd'  (default: 'sgd')\n"
            "    allowed: one of ['adadelta', 'adagrad', 'adam', 'adamw', 'lamb', 'lars', 'lion', "
            "'rmsprop',\n        'sam', 'schedule_free_adamw', 'schedule_free_sgd', 'sgd']\n"
            "    the update rule; sam and schedule_free_* wrap one\n") in text
    assert "augment." not in text


def test_allowed_words_come_from_the_checks():
    config = load_config("smoke")
    config.augment.crop_padding = 3
    text = explain(config, "augment")
    assert ("augment.fill_mode = 'nearest'  (default: 'nearest')\n"
            "    allowed: 'constant', 'nearest', 'reflect' or 'wrap'\n"
            "    affine: what fills pixels from outside the image (Keras' meanings)\n") in text
    assert ("augment.crop_padding = 3  (default: 4)\n"
            "    allowed: an integer >= 0 (0: off)\n") in text


def test_the_model_section_lists_the_chosen_models_fields():
    text = explain(load_config("cpu,model=resnet20"), "model")
    assert "model.name = 'resnet20'  (default: '')\n" in text
    assert ("model.shortcut = 'A'  (default: 'A')\n"
            "    allowed: a string\n"
            "    a field of model 'resnet20'") in text


def test_all_explains_every_key_of_every_section():
    text = explain(load_config("smoke"), "all")
    assert EXPLAIN_SECTIONS[0] == "all"
    for section in EXPLAIN_SECTIONS[1:]:
        assert f"\n[{section}] " in f"\n{text}"
    for key in declared_keys():
        assert f"\n{key} = " in f"\n{text}"


def test_an_unknown_section_lists_the_sections():
    with pytest.raises(ConfigError) as error:
        explain(load_config("smoke"), "optimiser")
    assert str(error.value) == (
        "unknown config section 'optimiser' to explain; choose one of all, top, dataset, model, "
        "optimizer, schedule, loss, mixup, noise, augment, training, early_stopping, transfer, "
        "distill, logging, eval")


def test_cli_explains_without_a_workdir_and_refuses_an_unknown_section():
    def run(*flags):
        return subprocess.run(
            [sys.executable, "-m", "cv_jax.main", "--config=configs/cifar10.py:smoke", *flags],
            cwd=REPO, capture_output=True, text=True, timeout=120)

    result = run("--explain=schedule", "--config.schedule.warmup_epochs=0.5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("[schedule] the learning rate per train step")
    assert "schedule.warmup_epochs = 0.5  (default: 0.0)\n" in result.stdout
    assert "optimizer." not in result.stdout
    result = run("--explain=sched")
    assert result.returncode != 0
    assert "flag --explain=sched: value should be one of <all|top|dataset|model|" in result.stderr
    assert result.stdout == ""
