"""Reduce-on-plateau (``schedule.name='reduce_on_plateau'``): optax.contrib's rule, driven by
an evaluation metric after each scheduled evaluation, its LR scale applied in the optimizer
chain (:func:`plateau_scale`) and kept, with its patience counters, in the optimizer state (so
it is checkpointed and a resumed run continues with it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import jax
import ml_collections as mlc
import optax
from optax import contrib

from cv_jax.config import ConfigError
from cv_jax.optim.opt_state import find

PyTree = Any
log = logging.getLogger("cv_jax")


def _reduce_on_plateau(config: mlc.ConfigDict) -> optax.GradientTransformationExtraArgs:
    """optax's reduce-on-plateau rule with this config's settings (patience etc. in evals)."""
    s = config.schedule
    try:
        return contrib.reduce_on_plateau(
            factor=s.decay_factor, patience=s.plateau_patience, rtol=s.plateau_rtol, atol=0.0,
            cooldown=s.plateau_cooldown, accumulation_size=1, min_scale=s.end_factor)
    except ValueError as e:
        raise ConfigError(f"config.schedule (reduce_on_plateau): {e} "
                          "(decay_factor must be in (0, 1), plateau_rtol in (0, 1])") from None


def plateau_scale(config: mlc.ConfigDict) -> optax.GradientTransformation:
    """Multiplies the updates by the scale held in a ``ReduceLROnPlateauState``.

    The state is optax's (``optax.contrib.reduce_on_plateau``), so it is checkpointed with the
    rest of opt_state; it changes only in :func:`plateau_updater`, after an evaluation, because
    the train step has no eval metric to pass as optax's ``value`` argument.
    """
    rule = _reduce_on_plateau(config)

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: (state.scale * u).astype(u.dtype), updates), state

    return optax.GradientTransformation(rule.init, update)


def plateau_metric(config: mlc.ConfigDict) -> str:
    """The eval metric reduce_on_plateau watches: '<split>_<loss|accuracy>', where split is
    the model-selection split (validation when dataset.validation_size > 0, else test)."""
    split = "validation" if config.dataset.validation_size else "test"
    return f"{split}_{config.schedule.plateau_metric}"


def plateau_updater(config: mlc.ConfigDict) -> Callable | None:
    """``update(state, eval_metrics) -> state`` for schedule 'reduce_on_plateau', else None.

    Runs optax's reduce_on_plateau update once with the watched eval metric (for accuracy,
    the error rate 1 - accuracy: optax minimises, and its relative tolerance needs a positive
    value) and stores its new state, and so its LR scale, in
    ``state.opt_state``. Call it after each regular evaluation and before saving the
    checkpoint, so that a resumed run continues with the same scale and patience counters.
    """
    if config.schedule.name != "reduce_on_plateau":
        return None
    rule = _reduce_on_plateau(config)
    metric = plateau_metric(config)
    to_value = ((lambda v: 1.0 - v) if config.schedule.plateau_metric == "accuracy"
                else (lambda v: v))
    is_rop = lambda x: isinstance(x, contrib.ReduceLROnPlateauState)  # noqa: E731

    @jax.jit
    def step(opt_state, value):
        def one(node):
            return rule.update({}, node, value=value)[1] if is_rop(node) else node
        return jax.tree.map(one, opt_state, is_leaf=is_rop)

    def update(state, eval_metrics: dict):
        if metric not in eval_metrics:
            raise ConfigError(f"reduce_on_plateau watches {metric!r}, which the evaluation did "
                              f"not produce (it has {sorted(eval_metrics)})")
        old = find(state.opt_state, contrib.ReduceLROnPlateauState)
        new_opt_state = step(state.opt_state, to_value(eval_metrics[metric]))
        new_opt_state = jax.tree.map(lambda n, o: jax.device_put(n, o.sharding),
                                     new_opt_state, state.opt_state)
        new = find(new_opt_state, contrib.ReduceLROnPlateauState)
        if old and float(new[0].scale) != float(old[0].scale):
            log.info("reduce_on_plateau: %s = %.4f has not improved for %d evaluations; "
                     "LR scale %.4g -> %.4g", metric, eval_metrics[metric],
                     config.schedule.plateau_patience, float(old[0].scale),
                     float(new[0].scale))
        return state.replace(opt_state=new_opt_state)

    return update


def plateau_lr_scale(opt_state: PyTree) -> float | None:
    """The current reduce-on-plateau LR factor, or None without that schedule."""
    found = find(opt_state, contrib.ReduceLROnPlateauState)
    return float(found[0].scale) if found else None
