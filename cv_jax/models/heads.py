"""A model's head: the parameters whose shapes depend on the number of classes (the final
classifier, and GoogLeNet's auxiliary classifiers). Transfer learning replaces them and copies
the rest."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util


def head_paths(build: Callable[[int], nn.Module], num_classes: int,
               image_shape: tuple[int, ...]) -> frozenset[str]:
    """Paths ('fc/kernel', ...) of the parameters of ``build(num_classes)`` whose shapes change
    with the class count (found by building the model for one class more)."""

    def shapes(k: int) -> dict[str, tuple[int, ...]]:
        model = build(k)
        dummy = jnp.zeros((1, *image_shape), jnp.float32)
        key = jax.random.key_data(jax.random.key(0))
        params = jax.eval_shape(
            lambda: model.init({"params": key, "dropout": key}, dummy, train=False))["params"]
        flat = traverse_util.flatten_dict(dict(params))
        return {"/".join(map(str, path)): leaf.shape for path, leaf in flat.items()}

    one, other = shapes(num_classes), shapes(num_classes + 1)
    return frozenset(path for path in one if one[path] != other[path])
