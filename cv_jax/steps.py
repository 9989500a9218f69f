"""Pure train and eval steps: ``(state, batch) -> (state, metrics)``.

Batches hold uint8 images; augmentation and normalisation happen here, on device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax

from cv_jax import augment, losses
from cv_jax.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """What the steps need from the config, resolved once."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype: Any
    label_smoothing: float
    aux_weight: float
    augment: mlc.ConfigDict
    schedule: optax.Schedule
    tta_flip: bool

    @classmethod
    def from_config(cls, config: mlc.ConfigDict, schedule: optax.Schedule) -> StepSettings:
        return cls(
            mean=tuple(config.dataset.mean),
            std=tuple(config.dataset.std),
            dtype=jnp.dtype(config.training.compute_dtype),
            label_smoothing=config.loss.label_smoothing,
            aux_weight=config.loss.aux_weight,
            augment=config.augment,
            schedule=schedule,
            tta_flip=config.eval.tta_flip,
        )


def normalize(images: jax.Array, settings: StepSettings) -> jax.Array:
    """uint8 [0, 255] -> (x/255 - mean) / std in the compute dtype."""
    x = images.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(settings.mean)) / jnp.asarray(settings.std)
    return x.astype(settings.dtype)


def train_step(state: TrainState, batch: dict, settings: StepSettings) -> tuple[TrainState, dict]:
    """One optimizer step on a batch {'image': uint8 [B,H,W,C], 'label': int [B]}.

    Auxiliary classifiers (GoogLeNet's) sow their logits into the ``aux_logits`` collection in
    train mode; each adds ``aux_weight`` times its cross-entropy to the loss.
    """
    aug_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
    images = augment.augment_batch(batch["image"], aug_key, settings.augment)
    x = normalize(images, settings)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, x, train=True,
            mutable=["batch_stats", "aux_logits"], rngs={"dropout": dropout_key},
        )
        loss = losses.cross_entropy(logits, batch["label"], settings.label_smoothing).mean()
        for aux in jax.tree.leaves(updates.get("aux_logits", {})):
            aux_loss = losses.cross_entropy(aux, batch["label"], settings.label_smoothing).mean()
            loss = loss + settings.aux_weight * aux_loss
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
        "learning_rate": settings.schedule(state.step),
    }
    new_state = state.apply_gradients(
        grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats)
    )
    return new_state, metrics


def predict_logits(state: TrainState, images: jax.Array, settings: StepSettings) -> jax.Array:
    """Inference-mode logits (BatchNorm running averages), averaged with the mirror image
    when ``eval.tta_flip`` is on."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    x = normalize(images, settings)
    logits = state.apply_fn(variables, x, train=False)
    if settings.tta_flip:
        logits = 0.5 * (logits + state.apply_fn(variables, x[:, :, ::-1, :], train=False))
    return logits.astype(jnp.float32)


def eval_step(state: TrainState, batch: dict, settings: StepSettings) -> dict:
    """Per-example predictions and cross-entropy (no smoothing) for a batch."""
    logits = predict_logits(state, batch["image"], settings)
    return {
        "prediction": jnp.argmax(logits, -1),
        "loss": losses.cross_entropy(logits, batch["label"]),
    }
