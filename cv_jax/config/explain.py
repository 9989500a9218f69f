"""``--explain``: the keys of a config section, each with its value in a config, its default,
the values it accepts and its doc, as the schema declares them."""

from __future__ import annotations

import textwrap

import ml_collections as mlc

from cv_jax import models
from cv_jax.config.errors import ConfigError
from cv_jax.config.schema import SCHEMA, TOP, TYPES, Key
from cv_jax.config.values import lookup

# What --explain takes: a section, or 'all' of them.
EXPLAIN_SECTIONS = ("all", *SCHEMA)
_INDENT = "    "
_WIDTH = 100


def explain(config: mlc.ConfigDict, section: str) -> str:
    """Every key of ``section`` ('all': of every section) as text: value in ``config``, default,
    allowed values and doc. A model section lists the chosen model's fields too."""
    if section not in EXPLAIN_SECTIONS:
        raise ConfigError(f"unknown config section {section!r} to explain; choose one of "
                          f"{', '.join(EXPLAIN_SECTIONS)}")
    names = list(SCHEMA) if section == "all" else [section]
    return "\n\n".join(_explain_section(config, name) for name in names)


def _explain_section(config: mlc.ConfigDict, name: str) -> str:
    keys = {(key if name == TOP else f"{name}.{key}"): spec
            for key, spec in SCHEMA[name].keys.items()}
    if name == "model":
        keys.update(_model_fields(config.model))
    lines = textwrap.wrap(f"[{name}] {SCHEMA[name].doc}", _WIDTH, subsequent_indent=_INDENT)
    for dotted, spec in keys.items():
        lines.append(f"{dotted} = {_value(config, dotted)}  (default: {spec.default!r})")
        lines += _wrapped(f"allowed: {spec.describe()}")
        lines += _wrapped(spec.doc)
    return "\n".join(lines)


def _model_fields(model: mlc.ConfigDict) -> dict[str, Key]:
    """The fields of the model ``model.name`` names, as keys (none for an unknown model)."""
    if model.name not in models.model_names():
        return {}
    return {f"model.{field}": Key(default, f"a field of model {model.name!r}",
                                  TYPES.get(type(default), (None, "any value"))[1])
            for field, default in models.model_fields(model.name).items()}


def _value(config: mlc.ConfigDict, dotted: str) -> str:
    try:
        return repr(lookup(config, dotted))
    except (KeyError, TypeError):
        return "(missing)"


def _wrapped(text: str) -> list[str]:
    return textwrap.wrap(text, _WIDTH, initial_indent=_INDENT, subsequent_indent=_INDENT * 2)
