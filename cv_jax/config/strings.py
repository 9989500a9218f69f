"""Config-string variants.

A config file's ``get_config(arg)`` receives the text after ``:`` in
``--config=configs/cifar10.py:cpu,model=resnet20,epochs=30``. ``parse_arg`` splits it
into a recipe name (a bare word) and typed ``key=value`` shortcuts, big_vision style.
"""

from __future__ import annotations

from typing import Any

import ml_collections as mlc

from cv_jax.config.errors import ConfigError


def parse_arg(arg: str | None, *, recipes: tuple[str, ...], **shortcuts: Any) -> mlc.ConfigDict:
    """Parses ``'cpu,model=resnet20,epochs=30'`` into ``{recipe, model, epochs, ...}``.

    Each shortcut's default fixes its type; a bare word must name one of ``recipes``.
    The result has ``recipe=None`` when no recipe word was given.
    """
    parsed: dict[str, Any] = {"recipe": None, **shortcuts}
    for token in filter(None, (t.strip() for t in (arg or "").split(","))):
        if "=" not in token:
            if token not in recipes:
                raise ConfigError(
                    f"unknown recipe {token!r} in config string {arg!r}; "
                    f"choose one of {', '.join(recipes)}"
                )
            parsed["recipe"] = token
            continue
        key, value = (s.strip() for s in token.split("=", 1))
        if key not in shortcuts:
            raise ConfigError(
                f"unknown config-string key {key!r} in {arg!r}; valid keys: "
                f"{', '.join(sorted(shortcuts))} (or use --config.<section>.<key>=value)"
            )
        parsed[key] = _cast_like(shortcuts[key], value, key)
    return mlc.ConfigDict(parsed)


def _cast_like(default: Any, value: str, key: str) -> Any:
    """Casts ``value`` to the type of ``default`` (str when the default is None)."""
    if default is None or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        return type(default)(value)
    except ValueError:
        raise ConfigError(
            f"config-string key {key!r} expects a {type(default).__name__}, got {value!r}"
        ) from None


def apply_shortcuts(config: mlc.ConfigDict, arg: mlc.ConfigDict) -> None:
    """Applies the shortcuts ``epochs``, ``steps``, ``minutes``, ``batch_size`` (the learning
    rate scaled with it), ``lr``, ``dtype``, ``seed`` and ``data_dir`` of a parsed config
    string (those set; ``seed`` always) to ``config``, after its recipe."""
    if arg.epochs or arg.steps:  # a length named in the config string, not a time budget
        config.training.time_budget_minutes = 0.0
    if arg.epochs:
        config.training.num_epochs = arg.epochs
    if arg.steps:
        config.training.num_steps = arg.steps
    if arg.minutes:
        config.training.time_budget_minutes = arg.minutes
    if arg.batch_size:
        config.optimizer.learning_rate *= arg.batch_size / config.training.batch_size
        config.training.batch_size = arg.batch_size
    if arg.lr:
        config.optimizer.learning_rate = arg.lr
    if arg.dtype:
        config.training.compute_dtype = arg.dtype
    config.seed = arg.seed
    config.dataset.data_dir = arg.data_dir or config.dataset.data_dir
