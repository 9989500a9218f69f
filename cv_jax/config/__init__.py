"""Config: config-string variants, the default config tree, and validation."""

import ml_collections as mlc

from cv_jax.config.errors import ConfigError
from cv_jax.config.model import model_kwargs, model_section
from cv_jax.config.schema import BAD_FILES_POLICIES, OPTIMIZERS, WRAPPERS, base_config
from cv_jax.config.strings import parse_arg
from cv_jax.config.validate import (
    check_augment_keys,
    check_monitor,
    check_optimizer,
    check_run_length,
    validate,
)
from cv_jax.config.values import is_off, lookup, parse_fill_value, parse_multipliers

__all__ = [
    "BAD_FILES_POLICIES",
    "OPTIMIZERS",
    "WRAPPERS",
    "ConfigError",
    "base_config",
    "check_augment_keys",
    "check_monitor",
    "check_optimizer",
    "check_run_length",
    "is_off",
    "lookup",
    "mlc",
    "model_kwargs",
    "model_section",
    "parse_arg",
    "parse_fill_value",
    "parse_multipliers",
    "validate",
]
