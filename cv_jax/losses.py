"""Classification losses: cross-entropy on (optionally smoothed) one-hot targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def smooth_labels(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    """One-hot targets mixed with the uniform distribution: (1 - s) * onehot + s / K."""
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return one_hot * (1.0 - smoothing) + smoothing / num_classes


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy against integer labels with label smoothing."""
    targets = smooth_labels(labels, logits.shape[-1], smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
