"""What a run's optimizer state holds besides the moments: the counters of skipped non-finite
steps, and the weights to evaluate when they are not the trained ones (schedule-free's
averaged sequence, SAM's clean weights after an adversarial step)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from optax import contrib

PyTree = Any


def nonfinite_guard(opt_state: PyTree) -> optax.ApplyIfFiniteState | None:
    """The counters of :func:`skip_nonfinite` in an optimizer state (``last_finite``: whether
    the last step was applied; ``notfinite_count``: skipped in a row; ``total_notfinite``),
    or None when the run stops at a non-finite step instead."""
    found = find(opt_state, optax.ApplyIfFiniteState)
    return found[0] if found else None


def skipped_steps(opt_state: PyTree) -> int:
    """How many steps :func:`skip_nonfinite` has skipped so far (0 without it)."""
    guard = nonfinite_guard(opt_state)
    return 0 if guard is None else int(guard.total_notfinite)


def find(tree: PyTree, cls: type) -> list:
    """Every node of type ``cls`` inside an optimizer state."""
    nodes = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, cls))
    return [n for n in nodes if isinstance(n, cls)]


def _is_masked(x) -> bool:
    return isinstance(x, optax.MaskedNode)


def _fill_masked(masked: PyTree, params: PyTree) -> PyTree:
    """``masked`` (a params-like tree from inside ``multi_transform``, MaskedNode for frozen
    leaves) with the frozen leaves taken from ``params``."""
    return jax.tree.map(lambda m, p: p if _is_masked(m) else m, masked, params,
                        is_leaf=_is_masked)


def eval_params(opt_state: PyTree, params: PyTree) -> PyTree:
    """The parameters to evaluate: ``params`` except for

    * schedule-free: the averaged sequence x, ``optax.contrib.schedule_free_eval_params``;
    * sam, after an adversarial step: the clean weights SAM keeps in its state.

    Frozen parameters (``optimizer.freeze``) are returned unchanged.
    """
    for sf in find(opt_state, contrib.ScheduleFreeState):
        # Inside multi_transform, z has MaskedNode at the frozen leaves: mask params alike.
        like_z = jax.tree.map(lambda z, p: z if _is_masked(z) else p, sf.z, params,
                              is_leaf=_is_masked)
        params = _fill_masked(contrib.schedule_free_eval_params(sf, like_z), params)
    for sam in find(opt_state, contrib.SAMState):
        # After the adversarial step (steps_since_sync == 1) the weights are perturbed and
        # SAM's cache holds the clean ones; after a descent step (0) the weights are clean.
        clean = jax.tree.map(
            lambda c, p, s=sam: c if _is_masked(c) else jnp.where(s.steps_since_sync != 0, c, p),
            sam.cache, params, is_leaf=_is_masked)
        params = _fill_masked(clean, params)
    return params


_eval_params_jit = jax.jit(eval_params)


def eval_state(state):
    """``state`` (a TrainState) with :func:`eval_params` as its params, on the same devices;
    the state itself when the optimizer keeps no separate evaluation weights."""
    if not (find(state.opt_state, contrib.ScheduleFreeState)
            or find(state.opt_state, contrib.SAMState)):
        return state
    params = _eval_params_jit(state.opt_state, state.params)
    params = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), params,
                          state.params)
    return state.replace(params=params)
