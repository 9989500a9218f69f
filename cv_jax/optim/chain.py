"""The optax chain built from ``config.optimizer`` (and the reduce-on-plateau part of
``config.schedule``).

Order of the chain (each part optional; a key at its "off" value removes the part):

  [MultiSteps: accumulate ``accumulate_steps`` mini-batch gradients (mean) into one update]
    [freeze: parameters matching ``freeze`` get zero updates (``optax.set_to_zero``)]
      adaptive_grad_clip(agc_clip) -> clip_by_global_norm(grad_clip_norm)
      -> [L2-style weight decay] -> update rule(lr schedule) -> [reduce-on-plateau scale]
      -> per-group LR multipliers
  (sam wraps everything after the clipping, which acts on the gradients of both of its steps;
  schedule_free_* wrap the whole inner chain.) Parameters matching a regex of ``freeze_after``
  get zero updates from that many epochs on (:func:`freeze_after`, around the whole optimizer).
  With ``training.nonfinite='skip'`` the run's whole optimizer is wrapped in
  ``optax.apply_if_finite`` (:func:`skip_nonfinite`).

Update rules (``optimizer.name``): sgd (momentum, nesterov), adam, adamw, rmsprop, adagrad,
adadelta, lamb, lars, lion from optax; and three wrappers from ``optax.contrib``:

* ``sam``: Sharpness-Aware Minimisation (Foret et al., 2021) around ``optimizer.sam_base``, in
  optax's non-opaque mode (``optax.contrib.sam(..., sync_period=2)``): train steps alternate.
  An odd step (1st, 3rd, ...) is the *adversarial* step: it moves the weights uphill by
  ``sam_rho * g / ||g||`` (global norm). The next step takes the gradient at those perturbed
  weights, restores the clean weights and applies the base optimizer's update to them. So one
  SAM update costs two train steps (two mini-batches, two forward/backward passes); the two
  gradients come from consecutive mini-batches, not the same one. Weight decay, trust ratios
  (lars/lamb) and LR multipliers act on the clean weights. BatchNorm statistics are updated on
  both steps. Evaluation after an adversarial step uses the clean weights (:func:`eval_params`).
* ``schedule_free_sgd`` / ``schedule_free_adamw``: Schedule-Free (Defazio et al., 2024), built
  exactly as ``optax.contrib.schedule_free_sgd/adamw`` build it, with the rest of this chain
  (clipping, masked weight decay, multipliers) inside the wrapper. ``optimizer.b1`` is the
  interpolation constant (the base optimizer runs without momentum); use schedule 'constant'
  with warmup. The trained parameters are the *y* sequence; evaluation must use the averaged
  *x* sequence, which :func:`eval_params` computes with ``optax.contrib.schedule_free_eval_params``.

Weight decay is masked by a regex over parameter paths (default: conv/dense kernels only,
never biases or BatchNorm scales/offsets). For adamw, lamb, lars, lion and schedule_free_adamw
it is decoupled (Loshchilov & Hutter, 2019; optax multiplies it by the LR); for the other
optimizers it is added to the gradient before the update, which is what PyTorch's
``weight_decay`` argument and an L2 penalty of ``wd/2 * |w|^2`` do. lars also skips its trust
ratio on parameters outside the decay mask (biases, BatchNorm), as You et al. (2017) do.

Every learning rate in the chain (the schedule, per-update scaling, multipliers, transfer
groups, the plateau scale) comes from :mod:`cv_jax.optim.lr`, whose
:func:`~cv_jax.optim.lr.learning_rate` says what a parameter is updated with at a step.

:func:`run_optimizer` is a run's whole optimizer: with ``transfer.mode`` discriminative, staged
or linear_probe, the head and the backbone each get their own chain
(``optax.multi_transform``), and ``training.nonfinite='skip'`` wraps it all.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax
from optax import contrib

from cv_jax.config import ConfigError, check_optimizer, is_off
from cv_jax.optim import lr as lr_lib
from cv_jax.optim.plateau import plateau_scale

PyTree = Any

# Optimizers whose weight decay is decoupled (part of the rule, not added to the gradient).
DECOUPLED_DECAY = ("adamw", "lamb", "lars", "lion", "schedule_free_adamw")


def param_path(path: tuple) -> str:
    """'stage1/conv/kernel' for a tree path (dict keys joined by '/')."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def path_mask(pattern: str) -> Callable[[PyTree], PyTree]:
    """A mask function: True for the leaves whose path matches ``pattern`` (re.search)."""
    regex = re.compile(pattern)
    return lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: bool(regex.search(param_path(path))), params
    )


def _rules(cfg: mlc.ConfigDict,
           lr: optax.ScalarOrSchedule) -> dict[str, Callable[[], optax.GradientTransformation]]:
    """The plain update rules, by name."""
    m = None if is_off(cfg.momentum) else cfg.momentum
    decay_mask = path_mask(cfg.decay_mask)
    return {
        "sgd": lambda: optax.sgd(lr, momentum=m, nesterov=cfg.nesterov),
        "adam": lambda: optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        "adamw": lambda: optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                     weight_decay=cfg.weight_decay, mask=decay_mask),
        "rmsprop": lambda: optax.rmsprop(lr, decay=cfg.rho, eps=cfg.eps, momentum=m,
                                         nesterov=cfg.nesterov),
        "adagrad": lambda: optax.adagrad(lr, eps=cfg.eps),
        "adadelta": lambda: optax.adadelta(lr, rho=cfg.rho, eps=cfg.eps),
        "lamb": lambda: optax.lamb(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                   weight_decay=cfg.weight_decay, mask=decay_mask),
        "lars": lambda: optax.lars(lr, weight_decay=cfg.weight_decay,
                                   weight_decay_mask=decay_mask,
                                   trust_coefficient=cfg.lars_trust, eps=cfg.eps,
                                   trust_ratio_mask=decay_mask, momentum=cfg.momentum,
                                   nesterov=cfg.nesterov),
        "lion": lambda: optax.lion(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                                   mask=decay_mask),
        # The base rules of optax.contrib.schedule_free_sgd/adamw (no momentum: the
        # schedule-free wrapper's interpolation replaces it).
        "schedule_free_sgd": lambda: optax.sgd(lr),
        "schedule_free_adamw": lambda: optax.chain(
            optax.scale_by_rms(decay=cfg.b2, eps=cfg.eps, eps_in_sqrt=False,
                               bias_correction=True),
            optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
            optax.scale_by_learning_rate(lr),
        ),
    }


def decay_by_path(weight_decay: float, mask: Callable[[PyTree], PyTree],
                  factor: Callable[[str], float]) -> optax.GradientTransformation:
    """``optax.add_decayed_weights`` with the coefficient ``weight_decay / factor(path)``
    (0 where the factor is 0): after the per-group LR multipliers (``factor``) scale the update,
    every group decays by the same amount per step, as airbench's ``bias_scaler`` does."""

    def coefficient(path: str) -> float:
        f = factor(path)
        return weight_decay / f if f else 0.0

    def update(updates, state, params):
        decayed = jax.tree_util.tree_map_with_path(
            lambda path, u, p, m: u + coefficient(param_path(path)) * p if m else u,
            updates, params, mask(params))
        return decayed, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _rule_with_decay(cfg: mlc.ConfigDict, name: str, lr: optax.ScalarOrSchedule,
                     factor: Callable[[str], float]) -> list[optax.GradientTransformation]:
    """[L2 weight decay,] the update rule ``name``; ``factor`` is the LR multiplier per path."""
    parts = []
    if not is_off(cfg.weight_decay) and name not in DECOUPLED_DECAY:
        mask = path_mask(cfg.decay_mask)
        parts.append(decay_by_path(cfg.weight_decay, mask, factor)
                     if cfg.decay_ignores_multipliers
                     else optax.add_decayed_weights(cfg.weight_decay, mask=mask))
    parts.append(_rules(cfg, lr)[name]())
    return parts


def scale_by_path(factor: Callable[[str], float]) -> optax.GradientTransformation:
    """Multiplies each update by ``factor(path)`` (:func:`cv_jax.optim.lr.multiplier`)."""

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(lambda p, u: u * factor(param_path(p)),
                                                updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def create_optimizer(config: mlc.ConfigDict,
                     learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """The optax chain of ``config.optimizer`` for one parameter group, whose learning rate
    (or schedule) is given in train steps."""
    cfg = config.optimizer
    check_optimizer(cfg)
    if cfg.accumulate_steps < 1:
        raise ConfigError(f"config.optimizer.accumulate_steps={cfg.accumulate_steps} is invalid: "
                          "use an integer >= 1 (1: off)")
    rule = cfg.sam_base if cfg.name == "sam" else cfg.name
    if cfg.decay_ignores_multipliers and rule in DECOUPLED_DECAY:
        raise ConfigError(f"config.optimizer.decay_ignores_multipliers=True needs L2-style "
                          f"weight decay; {rule!r} decouples it. Use sgd, adam, rmsprop, ... "
                          "or set it to False")
    lr = lr_lib.per_update(learning_rate, lr_lib.steps_per_update(config))
    clipping = []
    if cfg.agc_clip > 0:
        clipping.append(optax.adaptive_grad_clip(cfg.agc_clip))
    if cfg.grad_clip_norm > 0:
        clipping.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    after = []
    if config.schedule.name == "reduce_on_plateau":
        after.append(plateau_scale(config))
    factor = lr_lib.multiplier(config)
    if cfg.lr_multipliers:
        after.append(scale_by_path(factor))

    if cfg.name == "sam":
        outer = optax.chain(*_rule_with_decay(cfg, cfg.sam_base, lr, factor), *after)
        adversarial = optax.chain(contrib.normalize(), optax.sgd(cfg.sam_rho))
        tx = optax.chain(*clipping, contrib.sam(outer, adversarial,
                                                sync_period=lr_lib.SAM_SYNC_PERIOD))
    elif cfg.name.startswith("schedule_free"):
        inner = optax.chain(*clipping, *_rule_with_decay(cfg, cfg.name, lr, factor), *after)
        tx = contrib.schedule_free(inner, learning_rate=lr, b1=cfg.b1)
    else:
        tx = optax.chain(*clipping, *_rule_with_decay(cfg, cfg.name, lr, factor), *after)

    if cfg.freeze:
        frozen = path_mask(cfg.freeze)

        def labels(params: PyTree) -> PyTree:
            return jax.tree.map(lambda f: "frozen" if f else "trainable", frozen(params))

        tx = optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
    if cfg.accumulate_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.accumulate_steps).gradient_transformation()
    return tx


# --- Parameters frozen after a number of epochs ------------------------------------------

def freeze_after(inner: optax.GradientTransformation,
                 frozen_from: Callable[[str], int | None]) -> optax.GradientTransformation:
    """``inner``, with zero updates for each parameter from train step ``frozen_from(path)`` on
    (None: never), counted in this wrapper's own train steps. As PyTorch's
    ``requires_grad=False`` mid-run (airbench's whitening bias), the parameter stops changing;
    its optimizer state is left as it is."""

    def init(params):
        return FreezeAfterState(jnp.zeros([], jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        new_updates, inner_state = inner.update(updates, state.inner, params)

        def gate(path, u):
            start = frozen_from(param_path(path))
            return u if start is None else jnp.where(state.count < start, u, jnp.zeros_like(u))

        new_updates = jax.tree_util.tree_map_with_path(gate, new_updates)
        return new_updates, FreezeAfterState(state.count + 1, inner_state)

    return optax.GradientTransformation(init, update)


class FreezeAfterState(NamedTuple):
    count: jax.Array
    inner: Any


# --- Non-finite gradients -------------------------------------------------------------------

# optax.apply_if_finite applies a non-finite update after this many in a row; never, here: the
# training loop stops the run after training.max_consecutive_skips instead.
_NEVER = int(jnp.iinfo(jnp.int32).max)


def skip_nonfinite(config: mlc.ConfigDict,
                   tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` wrapped, for ``training.nonfinite='skip'``, in ``optax.apply_if_finite``: a step
    whose gradients are not all finite gives zero updates and leaves ``tx``'s state (moments,
    update count, schedule position) as it was; the wrapper counts such steps. So after k
    skipped steps the optimizer's LR schedule runs k steps behind the train step (and the
    logged ``learning_rate``).

    Wrap the whole optimizer of a run, once (one verdict for every parameter group).
    """
    if config.training.nonfinite != "skip":
        return tx
    return optax.apply_if_finite(tx, max_consecutive_errors=_NEVER)


# --- Transfer learning: the head and the backbone ----------------------------------------

class DelayedState(NamedTuple):
    count: jax.Array
    inner: Any


def delayed(inner: optax.GradientTransformation, start: int) -> optax.GradientTransformation:
    """Zero updates for the first ``start`` steps, then ``inner`` (whose state, and step count,
    start at that point: nothing is accumulated while frozen)."""

    def init(params):
        return DelayedState(jnp.zeros([], jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        def run(_):
            return inner.update(updates, state.inner, params)

        def hold(_):
            return jax.tree.map(jnp.zeros_like, updates), state.inner

        new_updates, new_inner = jax.lax.cond(state.count >= start, run, hold, None)
        return new_updates, DelayedState(state.count + 1, new_inner)

    return optax.GradientTransformation(init, update)


def group_optimizer(config: mlc.ConfigDict, schedule: optax.Schedule,
                    group: lr_lib.TransferGroup) -> optax.GradientTransformation:
    """The chain of one transfer group: zero updates when frozen, else
    :func:`create_optimizer` at the group's schedule, from its start step."""
    if group.frozen:
        return optax.set_to_zero()
    tx = create_optimizer(config, lr_lib.group_schedule(schedule, group))
    return delayed(tx, group.start) if group.delayed else tx


def backbone_labels(head: frozenset[str]) -> Callable[[Any], Any]:
    """A labelling function for ``optax.multi_transform``: 'head' or 'backbone' per leaf."""
    return lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: lr_lib.HEAD if param_path(path) in head else lr_lib.BACKBONE, params)


def run_optimizer(config: mlc.ConfigDict, schedule: optax.Schedule, head: frozenset[str],
                  steps_per_epoch: int) -> optax.GradientTransformation:
    """A run's optimizer: :func:`create_optimizer` at ``schedule``
    (:func:`cv_jax.optim.lr.schedule`), split into the new ``head`` (parameter paths) and the
    backbone when the transfer mode makes them learn differently, and skipping non-finite steps
    if the config says so."""
    if not lr_lib.splits_by_transfer(config):
        tx = create_optimizer(config, schedule)
    else:
        groups = {name: group_optimizer(config, schedule,
                                        lr_lib.transfer_group(config, name, steps_per_epoch))
                  for name in (lr_lib.HEAD, lr_lib.BACKBONE)}
        tx = optax.multi_transform(groups, backbone_labels(head))
    if config.optimizer.freeze_after:
        tx = freeze_after(tx, lr_lib.freeze_step(config, steps_per_epoch))
    return skip_nonfinite(config, tx)
