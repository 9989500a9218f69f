"""Config: config-string variants, the default config tree, and validation."""

import ml_collections as mlc

from cv_jax.config.errors import ConfigError
from cv_jax.config.model import model_kwargs, model_section
from cv_jax.config.schema import base_config
from cv_jax.config.strings import parse_arg
from cv_jax.config.validate import check_monitor, check_run_length, validate
from cv_jax.config.values import is_off, lookup, parse_multipliers

__all__ = [
    "ConfigError",
    "base_config",
    "check_monitor",
    "check_run_length",
    "is_off",
    "lookup",
    "mlc",
    "model_kwargs",
    "model_section",
    "parse_arg",
    "parse_multipliers",
    "validate",
]
