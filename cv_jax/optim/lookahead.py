"""Lookahead (Zhang et al. 2019, arXiv:1907.08610) as airbench94 uses it.

The run keeps a slow copy of the model state. Every ``every`` train steps the slow copy moves
toward the current ("fast") state, ``slow <- slow + (1 - d) * (fast - slow)``, and the fast
state is reset to it. The decay ramps over the run, ``d(t) = decay * (t / T) ** power``
(airbench: ``0.95**5 * (t / T)**3``), so early on the pull is negligible and near the end it
averages strongly. After the run's last step the fast state is set to the slow copy, which is
what gets evaluated.

Written here rather than taken from ``optax.lookahead`` because airbench's version differs in
two ways optax does not offer: its slow step size follows a schedule, and the slow copy holds
the BatchNorm running statistics as well as the weights (airbench averages the whole
``state_dict``). So it acts on the train state after the optimizer's update
(``cv_jax.training.steps.train_step``), not inside the optax chain.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc


@dataclasses.dataclass(frozen=True)
class Lookahead:
    """Lookahead's settings for a run of ``total_steps`` train steps."""

    every: int
    decay: float
    power: float
    total_steps: int

    @classmethod
    def from_config(cls, config: mlc.ConfigDict, total_steps: int) -> Lookahead | None:
        """The run's Lookahead, or None when ``optimizer.lookahead_every`` is 0."""
        cfg = config.optimizer
        if not cfg.lookahead_every:
            return None
        return cls(cfg.lookahead_every, cfg.lookahead_decay, cfg.lookahead_power,
                   max(total_steps, 1))

    def decay_at(self, count: jax.Array) -> jax.Array:
        """The slow copy's decay at a sync after ``count`` train steps."""
        return self.decay * (count / self.total_steps) ** self.power

    def __call__(self, fast: Any, slow: Any, count: jax.Array) -> tuple[Any, Any]:
        """``(fast, slow)`` after train step number ``count`` (1-based: steps done)."""
        sync = count % self.every == 0
        weight = 1.0 - self.decay_at(count)
        slow = jax.tree.map(
            lambda s, f: jnp.where(sync, s + (weight * (f - s)).astype(s.dtype), s), slow, fast)
        reset = jnp.logical_or(sync, count >= self.total_steps)
        fast = jax.tree.map(lambda s, f: jnp.where(reset, s, f), slow, fast)
        return fast, slow
