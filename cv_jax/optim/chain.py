"""The optax chain built from ``config.optimizer`` (and the reduce-on-plateau part of
``config.schedule``).

Order of the chain (each part optional; a key at its "off" value removes the part):

  [MultiSteps: accumulate ``accumulate_steps`` mini-batch gradients (mean) into one update]
    [freeze: parameters matching ``freeze`` get zero updates (``optax.set_to_zero``)]
      adaptive_grad_clip(agc_clip) -> clip_by_global_norm(grad_clip_norm)
      -> [L2-style weight decay] -> update rule(lr schedule) -> [reduce-on-plateau scale]
      -> per-group LR multipliers
  (sam wraps everything after the clipping, which acts on the gradients of both of its steps;
  schedule_free_* wrap the whole inner chain.) With ``training.nonfinite='skip'`` the run's
  whole optimizer is wrapped in ``optax.apply_if_finite`` (:func:`skip_nonfinite`).

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

The learning-rate schedule is always a function of the *train step* (one mini-batch): it is
what ``python -m cv_jax.optim.schedules`` plots and what the ``learning_rate`` metric logs. Wrappers
that make one optimizer update out of several train steps (``accumulate_steps`` = k, sam = 2,
both: 2k) feed the update rule ``schedule(n * steps_per_update)`` for its n-th update (n from 0),
i.e. the schedule's value at the first train step of the window of train steps that update uses.
Durations in epochs therefore stay epochs of data whatever k is.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax
from optax import contrib

from cv_jax.config import OPTIMIZERS as OPTIMIZERS  # re-exported: the optimizer names
from cv_jax.config import ConfigError, check_optimizer, is_off, parse_multipliers

PyTree = Any
log = logging.getLogger("cv_jax")

# Optimizers whose weight decay is decoupled (part of the rule, not added to the gradient).
DECOUPLED_DECAY = ("adamw", "lamb", "lars", "lion", "schedule_free_adamw")
SAM_SYNC_PERIOD = 2  # train steps per SAM update: one adversarial step, one descent step


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


def _rule_with_decay(cfg: mlc.ConfigDict, name: str,
                     lr: optax.ScalarOrSchedule) -> list[optax.GradientTransformation]:
    """[L2 weight decay,] the update rule ``name``."""
    parts = []
    if not is_off(cfg.weight_decay) and name not in DECOUPLED_DECAY:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=path_mask(cfg.decay_mask)))
    parts.append(_rules(cfg, lr)[name]())
    return parts


def scale_by_path(multipliers: dict[str, float]) -> optax.GradientTransformation:
    """Multiplies each update by the factor of the first regex matching its path (else 1)."""
    compiled = [(re.compile(p), f) for p, f in multipliers.items()]

    def factor(path: tuple) -> float:
        name = param_path(path)
        return next((f for regex, f in compiled if regex.search(name)), 1.0)

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(lambda p, u: u * factor(p), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


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


def _per_update(schedule: optax.ScalarOrSchedule, steps_per_update: int):
    """The schedule as the update rule sees it: its n-th update happens at train step
    n * steps_per_update (the first step of its window)."""
    if steps_per_update == 1 or not callable(schedule):
        return schedule
    return lambda count: schedule(count * steps_per_update)


def steps_per_update(config: mlc.ConfigDict) -> int:
    """Train steps (mini-batches) per optimizer update: accumulate_steps, times 2 for SAM."""
    sam = SAM_SYNC_PERIOD if config.optimizer.name == "sam" else 1
    return config.optimizer.accumulate_steps * sam


def create_optimizer(config: mlc.ConfigDict,
                     learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """The full optax chain of ``config.optimizer`` for a learning rate/schedule in train steps."""
    cfg = config.optimizer
    check_optimizer(cfg)
    if cfg.accumulate_steps < 1:
        raise ConfigError(f"config.optimizer.accumulate_steps={cfg.accumulate_steps} is invalid: "
                          "use an integer >= 1 (1: off)")
    lr = _per_update(learning_rate, steps_per_update(config))
    clipping = []
    if cfg.agc_clip > 0:
        clipping.append(optax.adaptive_grad_clip(cfg.agc_clip))
    if cfg.grad_clip_norm > 0:
        clipping.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    after = []
    if config.schedule.name == "reduce_on_plateau":
        after.append(plateau_scale(config))
    multipliers = parse_multipliers(cfg.lr_multipliers)
    if multipliers:
        after.append(scale_by_path(multipliers))

    if cfg.name == "sam":
        outer = optax.chain(*_rule_with_decay(cfg, cfg.sam_base, lr), *after)
        adversarial = optax.chain(contrib.normalize(), optax.sgd(cfg.sam_rho))
        tx = optax.chain(*clipping, contrib.sam(outer, adversarial,
                                                sync_period=SAM_SYNC_PERIOD))
    elif cfg.name.startswith("schedule_free"):
        inner = optax.chain(*clipping, *_rule_with_decay(cfg, cfg.name, lr), *after)
        tx = contrib.schedule_free(inner, learning_rate=lr, b1=cfg.b1)
    else:
        tx = optax.chain(*clipping, *_rule_with_decay(cfg, cfg.name, lr), *after)

    if cfg.freeze:
        frozen = path_mask(cfg.freeze)

        def labels(params: PyTree) -> PyTree:
            return jax.tree.map(lambda f: "frozen" if f else "trainable", frozen(params))

        tx = optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
    if cfg.accumulate_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.accumulate_steps).gradient_transformation()
    return tx


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


def nonfinite_guard(opt_state: PyTree) -> optax.ApplyIfFiniteState | None:
    """The counters of :func:`skip_nonfinite` in an optimizer state (``last_finite``: whether
    the last step was applied; ``notfinite_count``: skipped in a row; ``total_notfinite``),
    or None when the run stops at a non-finite step instead."""
    found = _find(opt_state, optax.ApplyIfFiniteState)
    return found[0] if found else None


def skipped_steps(opt_state: PyTree) -> int:
    """How many steps :func:`skip_nonfinite` has skipped so far (0 without it)."""
    guard = nonfinite_guard(opt_state)
    return 0 if guard is None else int(guard.total_notfinite)


# --- Evaluation parameters (schedule-free, SAM) -------------------------------------------

def _find(tree: PyTree, cls: type) -> list:
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
    for sf in _find(opt_state, contrib.ScheduleFreeState):
        # Inside multi_transform, z has MaskedNode at the frozen leaves: mask params alike.
        like_z = jax.tree.map(lambda z, p: z if _is_masked(z) else p, sf.z, params,
                              is_leaf=_is_masked)
        params = _fill_masked(contrib.schedule_free_eval_params(sf, like_z), params)
    for sam in _find(opt_state, contrib.SAMState):
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
    if not (_find(state.opt_state, contrib.ScheduleFreeState)
            or _find(state.opt_state, contrib.SAMState)):
        return state
    params = _eval_params_jit(state.opt_state, state.params)
    params = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding), params,
                          state.params)
    return state.replace(params=params)


# --- Reduce on plateau ----------------------------------------------------------------------

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
        old = _find(state.opt_state, contrib.ReduceLROnPlateauState)
        new_opt_state = step(state.opt_state, to_value(eval_metrics[metric]))
        new_opt_state = jax.tree.map(lambda n, o: jax.device_put(n, o.sharding),
                                     new_opt_state, state.opt_state)
        new = _find(new_opt_state, contrib.ReduceLROnPlateauState)
        if old and float(new[0].scale) != float(old[0].scale):
            log.info("reduce_on_plateau: %s = %.4f has not improved for %d evaluations; "
                     "LR scale %.4g -> %.4g", metric, eval_metrics[metric],
                     config.schedule.plateau_patience, float(old[0].scale),
                     float(new[0].scale))
        return state.replace(opt_state=new_opt_state)

    return update


def plateau_lr_scale(opt_state: PyTree) -> float | None:
    """The current reduce-on-plateau LR factor, or None without that schedule."""
    found = _find(opt_state, contrib.ReduceLROnPlateauState)
    return float(found[0].scale) if found else None
