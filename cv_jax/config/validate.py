"""``validate``: every key known and present, of its default's type and in the range its
schema entry allows (cv_jax/config/schema.py), and the combinations of keys that cannot work
together."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import ml_collections as mlc

from cv_jax import models
from cv_jax.config.errors import ConfigError
from cv_jax.config.schema import (
    AUGMENT_KEY_HINTS,
    SCHEMA,
    TYPES,
    WORKFLOW_SECTIONS,
    WRAPPERS,
    Key,
    base_config,
    declared_keys,
)
from cv_jax.config.values import is_off, lookup
from cv_jax.models import pretrained
from cv_jax.models.torchvision_import import SUPPORTED


def check_value(key: str, value: Any, spec: Key) -> None:
    """Raises ConfigError unless ``value`` has the type of ``spec.default`` and passes its
    check (``key`` is the dotted name the message gives)."""
    has_type, type_words = TYPES.get(type(spec.default), (lambda v: True, ""))
    typed = has_type(value)
    try:
        good = typed and (value in spec.choices if spec.choices
                          else spec.ok is None or bool(spec.ok(value)))
    except TypeError:
        good = False
    except re.error as e:
        raise ConfigError(f"config.{key}={value!r} is not a valid regex: {e}") from None
    if good:
        return
    if typed and spec.choices:
        raise ConfigError(f"config.{key}={value!r} is unknown; choose one of {list(spec.choices)}")
    raise ConfigError(f"config.{key}={value!r} is invalid: use {spec.allowed or type_words}")


def _check_keys(section: Any, defaults: mlc.ConfigDict, path: str) -> None:
    """Unknown and missing keys of one section (``path`` '' for the top level), recursively."""
    where = f"config.{path}" if path else "the config"
    if not isinstance(section, mlc.ConfigDict):
        raise ConfigError(f"{where}={section!r} is invalid: use a section with the keys "
                          f"{sorted(defaults)}")
    unknown = sorted(set(section) - set(defaults) - set(() if path else WORKFLOW_SECTIONS))
    if unknown and path == "augment":
        check_augment_keys(section)  # its message maps Keras names to these keys
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: "
                          f"{', '.join(sorted(defaults))}")
    missing = sorted(set(defaults) - set(section))
    if missing:
        raise ConfigError(f"{where} lacks the key(s) {missing}: start from "
                          "cv_jax.config.base_config() and override values")
    for key, default in defaults.items():
        if isinstance(default, mlc.ConfigDict) and key != "model":  # see check_model
            _check_keys(section[key], default, f"{path}.{key}".lstrip("."))


def check_augment_keys(section: Mapping[str, Any] | mlc.ConfigDict) -> bool:
    """True if every key of an augment section is known; else ConfigError listing valid ones."""
    valid = sorted(base_config().augment)
    unknown = sorted(set(section.keys()) - set(valid))
    if unknown:
        hints = [f"{k!r} is called {AUGMENT_KEY_HINTS[k]}" for k in unknown
                 if k in AUGMENT_KEY_HINTS]
        raise ConfigError(
            f"unknown augmentation key(s) {unknown} in config.augment"
            + (f" ({'; '.join(hints)})" if hints else "")
            + f"; valid keys: {', '.join(valid)}"
        )
    return True


def check_optimizer(cfg: mlc.ConfigDict) -> None:
    """The optimizer names are known and SAM wraps a plain rule; nesterov has momentum."""
    names = SCHEMA["optimizer"].keys["name"]
    check_value("optimizer.name", cfg.name, names)
    plain = [n for n in names.choices if n not in WRAPPERS]
    if cfg.name == "sam" and cfg.sam_base not in plain:
        raise ConfigError(
            f"config.optimizer.sam_base={cfg.sam_base!r} cannot be wrapped by SAM; "
            f"choose one of {plain}"
        )
    rule = cfg.sam_base if cfg.name == "sam" else cfg.name
    if cfg.nesterov and is_off(cfg.momentum) and rule in ("sgd", "rmsprop", "lars"):
        raise ConfigError("config.optimizer.nesterov=True needs config.optimizer.momentum > 0")
    if cfg.name.startswith("schedule_free") and cfg.b1 <= 0:
        raise ConfigError(f"config.optimizer.b1={cfg.b1} is invalid for {cfg.name}: "
                          "schedule-free needs an interpolation constant b1 in (0, 1)")


def check_model(model: mlc.ConfigDict) -> None:
    """``config.model`` names a registered model and holds only its fields, with their types."""
    if model.name not in models.model_names():
        raise ConfigError(f"config.model.name={model.name!r} is unknown; choose one of "
                          f"{', '.join(models.model_names())}")
    fields = {"name": model.name, **models.model_fields(model.name)}
    unknown = sorted(set(model) - set(fields))
    if unknown:
        raise ConfigError(f"model {model.name!r} has no field(s) {unknown} in config.model; its "
                          f"fields are {sorted(fields)}")
    for key in model:
        check_value(f"model.{key}", model[key], Key(fields[key], f"a field of {model.name}"))


def check_run_length(config: mlc.ConfigDict) -> None:
    """One key sets the run's length (a time budget or num_steps), and durations in epochs
    must fit in a run given in epochs (``num_steps`` runs, whose length in epochs depends on
    the data, clamp the warmup instead)."""
    t = config.training
    if t.time_budget_minutes and t.num_steps:
        raise ConfigError(
            f"config.training.time_budget_minutes={t.time_budget_minutes:g} and "
            f"config.training.num_steps={t.num_steps} both set the run's length: set "
            "num_steps=0 to train to the budget, or time_budget_minutes=0")
    if not t.num_steps and config.schedule.warmup_epochs > t.num_epochs:
        raise ConfigError(
            f"config.schedule.warmup_epochs={config.schedule.warmup_epochs} is longer than the "
            f"run (config.training.num_epochs={t.num_epochs}): use a warmup <= num_epochs")
    if config.schedule.warmup_epochs and config.schedule.warmup_fraction:
        raise ConfigError(
            f"config.schedule.warmup_epochs={config.schedule.warmup_epochs:g} and "
            f"config.schedule.warmup_fraction={config.schedule.warmup_fraction:g} both set the "
            "warmup: set one of them to 0")
    if t.num_steps:
        return
    periodic = [name for name, on in (
        ("config.early_stopping.patience > 0", config.early_stopping.patience),
        ("config.schedule.name='reduce_on_plateau'", config.schedule.name == "reduce_on_plateau"),
    ) if on]
    if periodic and t.eval_every_epochs >= t.num_epochs:
        raise ConfigError(
            f"config.training.eval_every_epochs={t.eval_every_epochs} leaves only the final "
            f"evaluation of a {t.num_epochs}-epoch run, but {periodic[0]} acts on evaluations "
            "during the run: use eval_every_epochs < num_epochs")


def validate(config: mlc.ConfigDict) -> None:
    """Raises ConfigError naming the first key whose value cannot work: an unknown or missing
    key, a value of the wrong type or out of range, or an inconsistent combination."""
    _check_keys(config, base_config(), "")
    for key, spec in declared_keys().items():
        if not key.startswith("model."):  # see check_model
            check_value(key, lookup(config, key), spec)
    if config.training.num_epochs == 0 and config.training.num_steps == 0:
        raise ConfigError(
            "config.training.num_epochs and config.training.num_steps are both 0: "
            "set one of them to say how long to train"
        )
    check_monitor(config)
    check_transfer(config.transfer)
    if config.training.best_by_ema and not config.training.ema_decay:
        raise ConfigError("config.training.best_by_ema=True needs config.training.ema_decay > 0 "
                          "(e.g. 0.999)")
    check_run_length(config)
    d = config.dataset
    if len(d.mean) != len(d.std):
        raise ConfigError(f"config.dataset.mean={tuple(d.mean)} and config.dataset.std="
                          f"{tuple(d.std)} differ in length: give one value per channel in each")
    check_optimizer(config.optimizer)
    check_model(config.model)
    check_streaming(config)


def check_streaming(config: mlc.ConfigDict) -> None:
    """What ``dataset.pipeline='streaming'`` cannot do (a resident run can)."""
    if config.dataset.pipeline != "streaming":
        return
    refused = {
        "training.steps_per_call": (config.training.steps_per_call, 1,
                                    "one streamed batch per call"),
        "dataset.normalization": (config.dataset.normalization, "given",
                                  "featurewise statistics would read the whole split; give "
                                  "config.dataset.mean/std"),
        "dataset.pseudo_labels": (config.dataset.pseudo_labels, "",
                                  "pseudo-labelled examples are added to resident arrays"),
    }
    for key, (value, needed, why) in refused.items():
        if value != needed:
            raise ConfigError(f"config.{key}={value!r} does not work with "
                              f"config.dataset.pipeline='streaming' ({why}): set "
                              f"config.{key}={needed!r} or config.dataset.pipeline='resident'")


def check_transfer(transfer: mlc.ConfigDict) -> None:
    """A mode other than finetune needs weights; ``torchvision:NAME`` must name a model whose
    weights convert."""
    if transfer.mode != "finetune" and not transfer.init_from:
        raise ConfigError(f"config.transfer.mode={transfer.mode!r} needs the weights to start "
                          "from: set config.transfer.init_from to a run's workdir, a .msgpack "
                          "file or torchvision:NAME")
    if pretrained.is_spec(transfer.init_from):
        name, _ = pretrained.parse(transfer.init_from)
        if name not in SUPPORTED:
            raise ConfigError(
                f"config.transfer.init_from={transfer.init_from!r} names no model whose "
                f"torchvision weights cv_jax converts; use torchvision:NAME with NAME one of "
                f"{', '.join(SUPPORTED)} (optionally .WEIGHTS, e.g. torchvision:resnet50."
                "IMAGENET1K_V2)")


def check_monitor(config: mlc.ConfigDict) -> None:
    """``early_stopping.monitor`` must name a split and weights the run evaluates."""
    monitor = config.early_stopping.monitor
    if monitor.startswith("validation") and not config.dataset.validation_size:
        raise ConfigError(f"config.early_stopping.monitor={monitor!r} needs a validation split: "
                          "set config.dataset.validation_size (e.g. 5000)")
    if "_ema_" in monitor and not config.training.ema_decay:
        raise ConfigError(f"config.early_stopping.monitor={monitor!r} needs "
                          "config.training.ema_decay > 0 (e.g. 0.999)")
