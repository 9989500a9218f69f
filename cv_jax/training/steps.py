"""Pure train and eval steps: ``(state, batch) -> (state, metrics)``.

Batches hold uint8 images; augmentation and normalisation happen here, on device.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax

from cv_jax.config import is_off
from cv_jax.data import augment, mixup
from cv_jax.optim import chain, opt_state
from cv_jax.optim.lookahead import Lookahead
from cv_jax.training import distill, losses
from cv_jax.training.state import TrainState, update_ema


@dataclasses.dataclass(frozen=True)
class Normalization:
    """How uint8 images become the network's input: ``(x/255 - mean) / std`` per channel, in
    the compute dtype (the same for training and evaluation)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype: Any

    @classmethod
    def from_config(cls, config: mlc.ConfigDict) -> Normalization:
        return cls(mean=tuple(config.dataset.mean), std=tuple(config.dataset.std),
                   dtype=jnp.dtype(config.training.compute_dtype))


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What the eval step and prediction need from the config, resolved once."""

    normalization: Normalization
    tta_flip: bool = False
    tta_translate: int = 0  # pixels; 0: no translated views

    @classmethod
    def from_config(cls, config: mlc.ConfigDict) -> EvalSettings:
        return cls(normalization=Normalization.from_config(config),
                   tta_flip=config.eval.tta_flip, tta_translate=config.eval.tta_translate)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What the train step needs from the config, resolved once."""

    normalization: Normalization
    label_smoothing: float
    aux_weight: float
    augment: mlc.ConfigDict
    schedule: optax.Schedule  # the learning rate the step logs (the optimizer holds its own)
    mixup: mlc.ConfigDict | None = None
    steps_per_epoch: int = 1
    class_weights: tuple[float, ...] | None = None
    l2_penalty: float = 0.0
    decay_mask: str = "kernel$"  # which parameters the L2 penalty and weight noise touch
    activity_l1: float = 0.0
    activity_l2: float = 0.0
    activity_layers: str = ""  # regex over module paths whose outputs are penalised
    input_noise_std: float = 0.0
    weight_noise_std: float = 0.0
    ema_decay: float = 0.0  # 0: no moving average of the weights
    lookahead: Lookahead | None = None

    @classmethod
    def from_config(cls, config: mlc.ConfigDict, schedule: optax.Schedule,
                    steps_per_epoch: int = 1,
                    class_weights: tuple[float, ...] | None = None,
                    total_steps: int = 0) -> TrainSettings:
        return cls(
            normalization=Normalization.from_config(config),
            label_smoothing=config.loss.label_smoothing,
            aux_weight=config.loss.aux_weight,
            augment=config.augment,
            schedule=schedule,
            mixup=config.mixup,
            steps_per_epoch=steps_per_epoch,
            class_weights=class_weights,
            l2_penalty=config.loss.l2_penalty,
            decay_mask=config.optimizer.decay_mask,
            activity_l1=config.loss.activity_l1,
            activity_l2=config.loss.activity_l2,
            activity_layers=config.loss.activity_layers,
            input_noise_std=config.noise.input_std,
            weight_noise_std=config.noise.weight_std,
            ema_decay=config.training.ema_decay,
            lookahead=Lookahead.from_config(config, total_steps),
        )


def normalize(images: jax.Array, normalization: Normalization) -> jax.Array:
    """uint8 [0, 255] -> (x/255 - mean) / std in the compute dtype."""
    x = images.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(normalization.mean)) / jnp.asarray(normalization.std)
    return x.astype(normalization.dtype)


def _add_weight_noise(params: Any, key: jax.Array, settings: TrainSettings) -> Any:
    """Gaussian noise on the masked weights for this step's forward and backward pass (the
    update itself applies to the clean weights)."""
    mask = chain.path_mask(settings.decay_mask)(params)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.tree.unflatten(treedef, list(jax.random.split(key, len(leaves))))
    return jax.tree.map(
        lambda w, m, k: w + settings.weight_noise_std * jax.random.normal(k, w.shape, w.dtype)
        if m else w,
        params, mask, keys)


def _captures(settings: TrainSettings):
    """``capture_intermediates`` filter: outputs of the modules whose path matches."""
    if not settings.activity_layers or (is_off(settings.activity_l1)
                                        and is_off(settings.activity_l2)):
        return False
    regex = re.compile(settings.activity_layers)
    return lambda module, method: (
        method == "__call__" and bool(regex.search("/".join(module.scope.path))))


ALTERNATING_FLIPS = 2  # fold of the run's key for the per-example flips of flip_mode='alternate'


def _alternating_flips(state: TrainState, batch: dict,
                       settings: TrainSettings) -> jax.Array | None:
    """With ``augment.flip_mode='alternate'``: which examples of the batch to mirror at this
    step's epoch (``augment.alternating_flips``, from the batch's example indices); else None."""
    cfg = settings.augment
    if not (cfg.get("flip", True) and cfg.get("flip_mode", "random") == "alternate"):
        return None
    if "index" not in batch:
        raise ValueError("augment.flip_mode='alternate' needs the batch's example indices "
                         "(batch['index'])")
    epoch = state.step // settings.steps_per_epoch
    return augment.alternating_flips(jax.random.fold_in(state.rng, ALTERNATING_FLIPS),
                                     batch["index"], epoch)


def train_step(state: TrainState, batch: dict, settings: TrainSettings,
               teacher: distill.Teacher | None = None) -> tuple[TrainState, dict]:
    """One optimizer step on a batch {'image': uint8 [B,H,W,C], 'label': int [B]} (and
    'index' [B], the examples' indices in the training set, for alternating flips).

    Loss = class-weighted soft-target cross-entropy (smoothed, then mixed by mixup/cutmix)
    — with a ``teacher``, ``(1 - alpha)`` x that plus ``alpha`` x the distillation loss —
    + ``aux_weight`` x the cross-entropy of each auxiliary classifier (GoogLeNet's heads sow
    their logits into ``aux_logits`` in train mode) + the L2 weight penalty + activity penalties.
    With Lookahead the new state's weights and BatchNorm statistics are Lookahead's
    (``cv_jax.optim.lookahead``).
    """
    step_key = jax.random.fold_in(state.rng, state.step)
    aug_key, dropout_key = jax.random.split(step_key)
    # Keys for the optional regularisers come from a separate fold, so switching one on leaves
    # the augmentation and dropout streams of a run unchanged.
    extra_keys = jax.random.split(jax.random.fold_in(step_key, 1), 3)
    mix_key, input_noise_key, weight_noise_key = extra_keys
    # The named scopes name the step's phases in a profiler trace (cv_jax.training.profiling).
    with jax.named_scope("data"):
        images = augment.augment_batch(batch["image"], aug_key, settings.augment,
                                       _alternating_flips(state, batch, settings))
        x = normalize(images, settings.normalization)
        partner, lam = None, 1.0
        if settings.mixup is not None and mixup.enabled(settings.mixup):
            epoch = state.step / settings.steps_per_epoch
            x, partner, lam = mixup.mix_images(x, mix_key, settings.mixup, epoch)
    norm = settings.normalization
    teacher_logits = None
    if teacher is not None:
        with jax.named_scope("teacher"):
            teacher_logits = teacher.logits(x, norm.mean, norm.std)
    if not is_off(settings.input_noise_std):
        with jax.named_scope("data"):
            noise = jax.random.normal(input_noise_key, x.shape, jnp.float32)
            x = (x + settings.input_noise_std * noise).astype(x.dtype)
    capture = _captures(settings)

    def loss_fn(params):
        forward_params = params
        if not is_off(settings.weight_noise_std):
            forward_params = _add_weight_noise(params, weight_noise_key, settings)
        logits, updates = state.apply_fn(
            {"params": forward_params, "batch_stats": state.batch_stats}, x, train=True,
            mutable=["batch_stats", "aux_logits", "intermediates"],
            rngs={"dropout": dropout_key}, capture_intermediates=capture,
        )
        targets = losses.smooth_labels(batch["label"], logits.shape[-1], settings.label_smoothing)
        if partner is not None:
            targets = mixup.mix_targets(targets, partner, lam)
        weights = losses.example_weights(targets, settings.class_weights)
        per_example = losses.soft_cross_entropy(logits, targets)
        if teacher is not None:
            per_example = (1.0 - teacher.alpha) * per_example + teacher.alpha * (
                losses.distillation_loss(logits, teacher_logits, teacher.temperature))
        loss = jnp.mean(weights * per_example)
        for aux in jax.tree.leaves(updates.get("aux_logits", {})):
            aux_loss = jnp.mean(weights * losses.soft_cross_entropy(aux, targets))
            loss = loss + settings.aux_weight * aux_loss
        if not is_off(settings.l2_penalty):
            mask = chain.path_mask(settings.decay_mask)(params)
            loss = loss + settings.l2_penalty * losses.l2_penalty(params, mask)
        if capture:
            loss = loss + losses.activity_penalty(
                jax.tree.leaves(updates.get("intermediates", {})),
                settings.activity_l1, settings.activity_l2)
        return loss, (logits, updates)

    with jax.named_scope("forward_backward"):
        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            "learning_rate": settings.schedule(state.step),
            "grad_norm": optax.tree.norm(grads),  # of the loss gradients, before any clipping
        }
    with jax.named_scope("update"):
        new_state, metrics = _update(state, grads, updates, metrics, settings)
    return new_state, metrics


def _update(state: TrainState, grads: Any, updates: dict, metrics: dict,
            settings: TrainSettings) -> tuple[TrainState, dict]:
    """The step's update from its gradients: the optimizer, then Lookahead, the EMA and, with
    training.nonfinite='skip', the old state kept for a skipped step (with its counters in
    ``metrics``)."""
    new_state = state.apply_gradients(
        grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats)
    )
    if settings.lookahead is not None:
        if not state.slow:
            raise ValueError("optimizer.lookahead_every > 0 needs Lookahead's slow copy in the "
                             "state: create it with create_train_state(..., slow=True)")
        fast = {"params": new_state.params, "batch_stats": new_state.batch_stats}
        fast, slow = settings.lookahead(fast, state.slow, new_state.step)
        new_state = new_state.replace(params=fast["params"], batch_stats=fast["batch_stats"],
                                      slow=slow)
    if not is_off(settings.ema_decay):
        new_state = new_state.replace(ema=update_ema(
            state.ema, new_state.params, new_state.batch_stats, settings.ema_decay))
    guard = opt_state.nonfinite_guard(new_state.opt_state)
    if guard is not None:  # training.nonfinite='skip': the step and the counters after it
        metrics["skipped"] = jnp.logical_not(guard.last_finite)
        metrics["skipped_in_a_row"] = guard.notfinite_count
        metrics["skipped_steps"] = guard.total_notfinite
        new_state = keep_if_skipped(state, new_state, metrics["skipped"])
    return new_state, metrics


def keep_if_skipped(old: TrainState, new: TrainState, skipped: jax.Array) -> TrainState:
    """``new``, with the weights, BatchNorm statistics and EMA of ``old`` when ``skipped``.

    A skipped step (non-finite gradients, ``optim.skip_nonfinite``) still advances the step
    counter, so the next step takes the next batch and a resumed run the same one; its
    optimizer state is the one optax kept, plus the wrapper's counters.
    """
    def keep(before, after):
        return jax.tree.map(lambda b, a: jnp.where(skipped, b, a), before, after)

    return new.replace(params=keep(old.params, new.params),
                       batch_stats=keep(old.batch_stats, new.batch_stats),
                       ema=keep(old.ema, new.ema), slow=keep(old.slow, new.slow))


def predict_logits(state: TrainState, images: jax.Array, settings: EvalSettings,
                   batch_views: bool = False) -> jax.Array:
    """Inference-mode logits (BatchNorm running averages), float32.

    Test-time augmentation as airbench does it: with ``eval.tta_flip`` each view's logits are
    averaged with its mirror image's; with ``eval.tta_translate = t`` the result is
    0.5 x the image's + 0.25 x each of two diagonal translations by t pixels (up-left and
    down-right, reflect-padded edges).

    With ``batch_views`` all views go through the network as one batch of (views x images): the
    same logits up to float rounding, and one application of the network in the traced program
    (an exported file holds it once).
    """
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def apply(x: jax.Array) -> jax.Array:
        return state.apply_fn(variables, x, train=False).astype(jnp.float32)

    x = normalize(images, settings.normalization)
    views = [x]  # the image, then its translations
    if settings.tta_translate:
        t = settings.tta_translate
        height, width = x.shape[1:3]
        padded = jnp.pad(x, ((0, 0), (t, t), (t, t), (0, 0)), mode="reflect")
        views += [padded[:, :height, :width], padded[:, 2 * t:, 2 * t:]]
    if settings.tta_flip:
        views += [view[:, :, ::-1, :] for view in views]  # and their mirror images
    if batch_views and len(views) > 1:
        stacked = apply(jnp.concatenate(views))
        stacked = stacked.reshape(len(views), x.shape[0], *stacked.shape[1:])
        logits = [stacked[i] for i in range(len(views))]
    else:
        logits = [apply(view) for view in views]
    if settings.tta_flip:
        half = len(views) // 2
        logits = [0.5 * (logits[i] + logits[half + i]) for i in range(half)]
    if settings.tta_translate:
        return 0.5 * logits[0] + 0.25 * (logits[1] + logits[2])
    return logits[0]


def eval_step(state: TrainState, batch: dict, settings: EvalSettings) -> dict:
    """Per-example predictions and cross-entropy (no smoothing) for a batch."""
    logits = predict_logits(state, batch["image"], settings)
    return {
        "prediction": jnp.argmax(logits, -1),
        "loss": losses.cross_entropy(logits, batch["label"]),
    }
