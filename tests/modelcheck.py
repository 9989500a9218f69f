"""Checks shared by the model tests: sizes without computing, and one real train step."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cv_jax.models import create_model

# The "rbg" PRNG compiles much faster than threefry on CPU.
KEY = jax.random.key(0, impl="rbg")


def _init(model, input_shape: tuple[int, int, int]) -> dict:
    return model.init({"params": KEY, "dropout": KEY}, jnp.zeros((1, *input_shape)), train=False)


def param_count(name: str, input_shape=(32, 32, 3), num_classes: int = 10, **kwargs) -> int:
    """Number of trainable parameters of model ``name``, from shapes only (nothing computed)."""
    model = create_model(name, num_classes=num_classes, **kwargs)
    variables = jax.eval_shape(functools.partial(_init, model, input_shape))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


def output_shape(
    name: str, input_shape=(32, 32, 3), num_classes: int = 10, batch: int = 2, **kwargs
) -> tuple[tuple[int, ...], jnp.dtype]:
    """Shape and dtype of the eval-mode logits, from shapes only."""
    model = create_model(name, num_classes=num_classes, **kwargs)

    def forward():
        variables = _init(model, input_shape)
        return model.apply(variables, jnp.zeros((batch, *input_shape)), train=False)

    out = jax.eval_shape(forward)
    return out.shape, out.dtype


def train_step_check(
    name: str, input_shape=(32, 32, 3), num_classes: int = 10, batch: int = 4, **kwargs
) -> tuple[float, float]:
    """One SGD step of ``name`` (train mode: batch statistics, dropout) on random data.

    Asserts that the logits are finite and that every parameter gets a finite gradient that is
    not all zero (an unused or disconnected layer fails). Returns the loss before and after the
    step on the same batch, evaluated in train mode with the same dropout key.
    """
    model = create_model(name, num_classes=num_classes, **kwargs)
    # numpy inputs and checks: eager JAX ops would each compile once per shape.
    x = np.random.default_rng(1).normal(size=(batch, *input_shape)).astype(np.float32)
    labels = np.arange(batch) % num_classes

    @jax.jit
    def run():
        variables = _init(model, input_shape)
        params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}

        def loss_fn(p):
            logits, _ = model.apply(
                {"params": p, **rest}, x, train=True, rngs={"dropout": KEY},
                mutable=["batch_stats"],
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        new_params = jax.tree.map(lambda p, g: p - 0.01 * g, params, grads)
        return loss, loss_fn(new_params)[0], logits, grads

    loss, new_loss, logits, grads = jax.device_get(run())
    assert logits.shape == (batch, num_classes) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        where = jax.tree_util.keystr(path)
        assert np.all(np.isfinite(grad)), f"non-finite gradient at {where}"
        assert np.any(grad != 0), f"zero gradient at {where}"
    return float(loss), float(new_loss)
