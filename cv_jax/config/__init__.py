"""Config: every key with its default, allowed values and doc (``schema``), config-string
variants (``strings``), the ``config.model`` section (``model``), validation (``validate``),
readers of values the library shares (``values``) and ``--explain`` (``explain``)."""

import ml_collections as mlc

from cv_jax.config.errors import ConfigError
from cv_jax.config.explain import EXPLAIN_SECTIONS, explain
from cv_jax.config.model import model_kwargs, model_section
from cv_jax.config.schema import (
    AUTO_AUGMENT_POLICIES,
    BAD_FILES_POLICIES,
    FILL_MODES,
    OPTIMIZERS,
    PADDING_MODES,
    WRAPPERS,
    base_config,
)
from cv_jax.config.strings import apply_shortcuts, parse_arg
from cv_jax.config.validate import (
    check_augment_keys,
    check_monitor,
    check_optimizer,
    check_run_length,
    validate,
)
from cv_jax.config.values import is_off, lookup, parse_fill_value, parse_multipliers

__all__ = [
    "AUTO_AUGMENT_POLICIES",
    "BAD_FILES_POLICIES",
    "EXPLAIN_SECTIONS",
    "FILL_MODES",
    "OPTIMIZERS",
    "PADDING_MODES",
    "WRAPPERS",
    "ConfigError",
    "apply_shortcuts",
    "base_config",
    "check_augment_keys",
    "check_monitor",
    "check_optimizer",
    "check_run_length",
    "explain",
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
