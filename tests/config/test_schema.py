"""The schema: one declaration per key (default, check, doc), and the checks derived from it."""

import ml_collections as mlc
import pytest
from conftest import load_config

from cv_jax.config import ConfigError, base_config, check_augment_keys, lookup, validate
from cv_jax.config.schema import (
    BAD_FILES_POLICIES,
    FILL_MODES,
    OPTIMIZERS,
    PADDING_MODES,
    SCHEMA,
    TOP,
    TYPES,
    declared_keys,
)
from cv_jax.config.validate import check_value
from cv_jax.data import augment, sources
from cv_jax.optim import chain


def leaves(section: mlc.ConfigDict, path: str = ""):
    for key, value in section.items():
        if isinstance(value, mlc.ConfigDict):
            yield from leaves(value, f"{path}{key}.")
        else:
            yield path + key


def test_every_key_of_the_base_config_has_a_doc_and_a_check():
    declared = declared_keys()
    assert sorted(leaves(base_config())) == sorted(declared)
    for key, spec in declared.items():
        assert spec.doc.strip() and "\n" not in spec.doc, f"{key} needs a one-line doc"
        # The check: a range check, a list of names, or (at least) the default's type.
        assert spec.ok or spec.choices or type(spec.default) in TYPES, f"{key} has no check"
        assert spec.describe(), f"{key} does not say what it allows"
    for name, section in SCHEMA.items():
        assert section.doc.strip() and "\n" not in section.doc, f"section {name} needs a doc"


def test_every_default_passes_its_own_check():
    for key, spec in declared_keys().items():
        check_value(key, spec.default, spec)  # raises ConfigError if not


def test_base_config_takes_its_defaults_from_the_schema():
    config = base_config()
    assert config.seed == SCHEMA[TOP].keys["seed"].default == 0
    assert config.optimizer.name == "sgd" and config.schedule.name == "cosine"
    assert config.dataset.mean == (0.4914, 0.4822, 0.4465)
    assert config.augment.erasing_area == (0.02, 0.33)
    assert config.training.num_epochs == 30.0 and isinstance(config.training.num_epochs, float)
    assert sorted(config) == sorted([
        "recipe", "recipe_reason", "seed", "data_seed", "model_init_examples", "dataset", "model",
        "optimizer", "schedule", "loss", "mixup", "noise", "augment", "training",
        "early_stopping", "transfer", "distill", "logging", "eval"])


# Messages as validate gave them before the checks were derived from the schema.
BAD_VALUES = [
    ("seed", -1, "config.seed=-1 is invalid: use an integer >= 0"),
    ("augment.padding_mode", "x",
     "config.augment.padding_mode='x' is invalid: use 'reflect', 'constant' or 'edge'"),
    ("augment.fill_mode", "x",
     "config.augment.fill_mode='x' is invalid: use 'constant', 'nearest', 'reflect' or 'wrap'"),
    ("training.compute_dtype", "x",
     "config.training.compute_dtype='x' is invalid: use 'float32', 'bfloat16' or 'float16'"),
    ("dataset.balance", "x",
     "config.dataset.balance='x' is invalid: use '', 'oversample' or 'undersample'"),
    ("dataset.bad_files", "x",
     "config.dataset.bad_files='x' is invalid: use 'strict' (stop, listing every bad file) or "
     "'skip' (leave them out and report them)"),
    ("transfer.mode", "x", "config.transfer.mode='x' is invalid: use one of 'linear_probe', "
                           "'finetune', 'discriminative', 'staged'"),
    ("optimizer.name", "sgdd",
     "config.optimizer.name='sgdd' is unknown; choose one of ['adadelta', 'adagrad', 'adam', "
     "'adamw', 'lamb', 'lars', 'lion', 'rmsprop', 'sam', 'schedule_free_adamw', "
     "'schedule_free_sgd', 'sgd']"),
    ("optimizer.name", 3, "config.optimizer.name=3 is invalid: use a string"),
    ("optimizer.freeze", "(", "config.optimizer.freeze='(' is not a valid regex: missing ), "
                              "unterminated subpattern at position 0"),
    ("optimizer.lr_multipliers", "bias=",
     "config.optimizer.lr_multipliers: cannot read 'bias='; write comma-separated REGEX=FACTOR "
     "pairs, e.g. 'bias$=2,head/=0.1'"),
    ("loss.activity_layers", "(",
     "config.loss.activity_layers='(' is invalid: use a regular expression over module paths"),
    ("augment.erasing_value", "300", "config.augment.erasing_value='300' is invalid: use a pixel "
                                     "value in 0..255 (e.g. '0') or 'random'"),
    ("augment.erasing_value", 0, "config.augment.erasing_value=0 is invalid: use a pixel value in "
                                 "0..255 written as text ('0') or 'random'"),
    ("schedule.boundaries", (2, 1), "config.schedule.boundaries=(2, 1) is invalid: use strictly "
                                    "increasing positive epochs, e.g. (30, 60, 80)"),
    ("augment.randaugment_magnitude", 31, "config.augment.randaugment_magnitude=31 is invalid: "
                                          "use an integer bin in [0, 30] (torchvision's 31 "
                                          "magnitude bins)"),
    ("training.checkpoint_every_steps", 1.5, "config.training.checkpoint_every_steps=1.5 is "
                                             "invalid: use an integer >= 0 (0: only at "
                                             "evaluations)"),
    ("early_stopping.monitor", "x", "config.early_stopping.monitor='x' is invalid: use '' or "
                                    "'<validation|test>[_ema]_<accuracy|balanced_accuracy|loss>'"),
]


@pytest.mark.parametrize("key,value,message", BAD_VALUES,
                         ids=[f"{key}={value!r}" for key, value, _ in BAD_VALUES])
def test_derived_checks_refuse_a_bad_value_with_the_same_message(key, value, message):
    config = load_config("smoke")
    parent, _, name = key.rpartition(".")
    section = lookup(config, parent) if parent else config
    with section.ignore_type():
        section[name] = value
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert str(error.value) == message


def test_keras_names_of_augment_keys_get_a_hint():
    with pytest.raises(ConfigError) as error:
        check_augment_keys({"horizontal_flip": True, "flip": False})
    assert str(error.value).startswith(
        "unknown augmentation key(s) ['horizontal_flip'] in config.augment ('horizontal_flip' is "
        "called flip); valid keys: auto_augment, brightness_range, ")
    assert check_augment_keys({"flip": False}) is True


def test_the_library_reads_the_allowed_names_from_the_config():
    assert sources.BAD_FILES_POLICIES is BAD_FILES_POLICIES
    # every optimizer name has an update rule in the chain (sam wraps one of them)
    assert set(chain._rules(base_config().optimizer, 0.1)) | {"sam"} == set(OPTIMIZERS)
    assert augment.FILL_MODES is FILL_MODES and augment.PADDING_MODES is PADDING_MODES


def test_a_section_missing_keys_says_where_to_start():
    config = load_config("smoke")
    config.noise = mlc.ConfigDict({"input_std": 0.0})
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert str(error.value) == ("config.noise lacks the key(s) ['weight_std']: start from "
                                "cv_jax.config.base_config() and override values")
