"""The ``config.model`` section: a registered model's name and every field of it."""

from __future__ import annotations

from typing import Any

import ml_collections as mlc

from cv_jax import models
from cv_jax.config.errors import ConfigError


def model_section(name: str, **overrides: Any) -> mlc.ConfigDict:
    """The ``config.model`` section for a registered model: its name and every tunable field.

    Fields come from the model's dataclass, so each one can be overridden from the command
    line (``--config.model.widths=(32,64,64)``) without listing it by hand.
    """
    defaults = models.model_fields(name)
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigError(
            f"model {name!r} has no field(s) {unknown}; its fields are {sorted(defaults)}"
        )
    return mlc.ConfigDict({"name": name, **defaults, **overrides})


def model_kwargs(model_config: mlc.ConfigDict) -> dict[str, Any]:
    """Keyword arguments for ``models.create_model`` from a ``config.model`` section."""
    kwargs = model_config.to_dict()
    kwargs.pop("name")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
