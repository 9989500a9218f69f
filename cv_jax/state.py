"""The training state pytree and how it is created."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
    """flax's TrainState plus BatchNorm statistics and the run's base PRNG key.

    Per-step randomness is ``fold_in(rng, step)``, so a restored state replays the same
    augmentation and dropout as the run it came from.
    """

    batch_stats: Any
    rng: jax.Array


def init_variables(model: nn.Module, key: jax.Array, image_shape: tuple[int, int, int]) -> dict:
    """Model variables from a dummy batch of one image of ``image_shape`` (H, W, C)."""
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    return model.init({"params": key, "dropout": key}, dummy, train=False)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, variables: dict,
                       rng: jax.Array) -> TrainState:
    """A step-0 state from initialised variables."""
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=tx,
        rng=rng,
    )
