"""Readers of config values that validation and the library share."""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

import ml_collections as mlc

from cv_jax.config.errors import ConfigError


def lookup(config: mlc.ConfigDict, dotted: str) -> Any:
    """``lookup(config, 'training.batch_size')`` -> value."""
    value: Any = config
    for part in dotted.split("."):
        value = value[part]
    return value


def is_off(value: Any) -> bool:
    """Whether a config number switches its part of the step off (is 0). A traced value (one
    per member of a vectorised run, ``cv_jax.workflows.members``, which refuses 0s) is on."""
    return isinstance(value, numbers.Number) and value == 0


def parse_multipliers(spec: str, key: str = "optimizer.lr_multipliers",
                      number: str = "FACTOR") -> dict[str, float]:
    """``'bn.*/bias=64,head=0.1'`` -> ``{'bn.*/bias': 64.0, 'head': 0.1}`` (regex -> number);
    the error names the config ``key`` and what the ``number`` is."""
    result: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        pattern, sep, factor = item.rpartition("=")
        try:
            if not sep:
                raise ValueError
            re.compile(pattern)
            result[pattern] = float(factor)
        except (ValueError, re.error):
            raise ConfigError(
                f"config.{key}: cannot read {item!r}; "
                f"write comma-separated REGEX={number} pairs, e.g. 'bias$=2,head/=0.1'"
            ) from None
    return result


def parse_fill_value(value: str) -> str | float:
    """``erasing_value``: 'random', or a pixel value in 0..255 written as text ('0', '127')."""
    if str(value).strip().lower() == "random":
        return "random"
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 <= number <= 255:
        raise ConfigError(
            f"config.augment.erasing_value={value!r} is invalid: use a pixel value in 0..255 "
            "(e.g. '0') or 'random'"
        )
    return number
