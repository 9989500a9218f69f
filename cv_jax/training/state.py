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
    # Exponential moving average {'params', 'batch_stats'} of the weights, or {} when off.
    ema: Any = None
    # Lookahead's slow copy {'params', 'batch_stats'} (cv_jax.optim.lookahead), or {} when off.
    slow: Any = None


def init_variables(model: nn.Module, key: jax.Array, image_shape: tuple[int, int, int]) -> dict:
    """Model variables from a dummy batch of one image of ``image_shape`` (H, W, C)."""
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    return model.init({"params": key, "dropout": key}, dummy, train=False)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, variables: dict,
                       rng: jax.Array, ema: bool = False, slow: bool = False) -> TrainState:
    """A step-0 state from initialised variables; with ``ema`` the average, and with ``slow``
    Lookahead's slow copy, start at them."""
    batch_stats = variables.get("batch_stats", {})
    weights = {"params": variables["params"], "batch_stats": batch_stats}
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=batch_stats,
        tx=tx,
        rng=rng,
        ema=weights if ema else {},
        slow=weights if slow else {},
    )


def update_ema(ema: dict, params: Any, batch_stats: Any, decay: float) -> dict:
    """``decay * ema + (1 - decay) * current`` for the weights and the BatchNorm statistics
    (as timm's ModelEmaV2, which averages buffers too)."""
    current = {"params": params, "batch_stats": batch_stats}
    return jax.tree.map(lambda e, c: decay * e + (1.0 - decay) * c, ema, current)


def ema_view(state: TrainState) -> TrainState:
    """The state with its averaged weights in place of the raw ones (for evaluation)."""
    return state.replace(params=state.ema["params"], batch_stats=state.ema["batch_stats"])
