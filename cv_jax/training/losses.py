"""Classification losses: cross-entropy on soft targets, label smoothing, class weights, and the
penalties a researcher adds to the loss (L2 on weights, L1/L2 on activations).

Weight decay vs an L2 penalty: ``loss.l2_penalty = c`` adds ``c/2 * sum(w**2)`` over the decayed
kernels to the loss, so every optimizer sees the gradient ``c * w``. For plain SGD that is the
same update as ``optimizer.weight_decay = c`` (which adds ``c * w`` to the gradient). For adaptive
optimizers it is not: Adam divides that gradient by its running RMS, so heavily-updated weights
are decayed less; decoupled decay (``optimizer.name = 'adamw'``) shrinks every weight by
``lr * c`` regardless (Loshchilov & Hutter 2019, arXiv:1711.05101).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cv_jax.config import ConfigError


def smooth_labels(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    """One-hot targets mixed with the uniform distribution: (1 - s) * onehot + s / K."""
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return one_hot * (1.0 - smoothing) + smoothing / num_classes


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example ``-sum_k targets_k * log_softmax(logits)_k`` for probability-vector targets
    (smoothed, mixed up or cut-mixed)."""
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy against integer labels with label smoothing."""
    return soft_cross_entropy(logits, smooth_labels(labels, logits.shape[-1], smoothing))


def class_weights(spec: str, labels: np.ndarray, num_classes: int) -> tuple[float, ...] | None:
    """Per-class loss weights from ``loss.class_weights``.

    ``''``: none; ``'balanced'``: ``n / (K * n_k)`` from the training labels (scikit-learn's and
    Keras users' ``class_weight='balanced'``), so every class contributes equally in total;
    ``'w0,w1,...'``: one weight per class.
    """
    if not spec:
        return None
    if spec == "balanced":
        counts = np.bincount(np.asarray(labels), minlength=num_classes)
        if np.any(counts == 0):
            empty = np.flatnonzero(counts == 0).tolist()
            raise ConfigError(f"loss.class_weights='balanced': classes {empty} have no training "
                              "examples; give explicit weights instead")
        return tuple(float(w) for w in len(labels) / (num_classes * counts))
    try:
        weights = tuple(float(w) for w in spec.split(","))
    except ValueError:
        weights = ()
    if len(weights) != num_classes or min(weights) < 0:
        raise ConfigError(
            f"loss.class_weights={spec!r}: give 'balanced' or {num_classes} comma-separated "
            "non-negative numbers, one per class"
        )
    return weights


def example_weights(targets: jax.Array, weights: Sequence[float] | None) -> jax.Array | float:
    """Weight of each example: its target distribution dotted with the class weights (for a
    one-hot target, the weight of its class; Keras multiplies each example's loss by it)."""
    if weights is None:
        return 1.0
    return targets @ jnp.asarray(weights, jnp.float32)


def l2_penalty(params, mask) -> jax.Array:
    """``sum(w**2) / 2`` over the leaves where ``mask`` (a matching pytree of bools) is True."""
    leaves = jax.tree.leaves(jax.tree.map(
        lambda w, m: jnp.sum(jnp.square(w.astype(jnp.float32))) if m else 0.0, params, mask))
    return 0.5 * sum(leaves)


def activity_penalty(activations: Sequence[jax.Array], l1: float, l2: float) -> jax.Array:
    """Keras-style activity regularisation: per example ``l1 * sum|a| + l2 * sum a**2`` over the
    given layer outputs, averaged over the batch."""
    total = jnp.float32(0.0)
    for a in activations:
        a = a.astype(jnp.float32).reshape(a.shape[0], -1)
        total += jnp.mean(l1 * jnp.sum(jnp.abs(a), axis=1) + l2 * jnp.sum(a * a, axis=1))
    return total


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                      temperature: float) -> jax.Array:
    """Per-example ``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` (Hinton et al. 2015;
    the T^2 keeps its gradients on the scale of the hard-label loss as T changes)."""
    t = temperature
    teacher_log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t)
    student_log_p = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t)
    kl = jnp.sum(jnp.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1)
    return t * t * kl
