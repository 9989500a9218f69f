"""Inception-v3: torchvision's parameter count, the auxiliary classifier (train mode only) and
the smallest inputs. Its logits against torchvision's are in test_torchvision_import.py."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cv_jax.models import create_model
from cv_jax.models.layers import InputTooSmall

KEY = jax.random.key(0, impl="rbg")
# torchvision docs: "num_params" of IMAGENET1K_V1 (1000 classes, with the auxiliary classifier).
TORCHVISION_COUNT = 27_161_264
# AuxLogits: conv0 768*128 + BN 2*128, conv1 5*5*128*768 + BN 2*768, fc 768*1000 + 1000.
AUX_COUNT = 768 * 128 + 2 * 128 + 25 * 128 * 768 + 2 * 768 + 768 * 1000 + 1000


def abstract(size: int, num_classes: int = 10, **kwargs):
    """(variables, logits) shapes of eval-mode ``init_with_output``: traced, nothing computed."""
    model = create_model("inception_v3", num_classes=num_classes, **kwargs)
    x = jnp.zeros((2, size, size, 3))
    run = functools.partial(model.init_with_output, {"params": KEY, "dropout": KEY}, x,
                            train=False)
    logits, variables = jax.eval_shape(run)
    return variables, logits


def count(variables: dict) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


def test_parameter_count_is_torchvisions() -> None:
    with_aux, logits = abstract(299, 1000, aux_logits=True)
    assert count(with_aux) == TORCHVISION_COUNT
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    without, _ = abstract(299, 1000)
    assert count(without) == TORCHVISION_COUNT - AUX_COUNT == 23_834_568
    assert "AuxLogits" not in without["params"]


def test_aux_logits_sown_in_train_mode_only() -> None:
    model = create_model("inception_v3", num_classes=10, aux_logits=True)
    variables, _ = abstract(299, aux_logits=True)
    assert set(variables) == {"params", "batch_stats"}  # nothing sown at init
    x = jnp.zeros((2, 299, 299, 3))

    def apply(variables: dict, train: bool):
        return model.apply(variables, x, train=train, rngs={"dropout": KEY},
                           mutable=["batch_stats", "aux_logits"])

    logits, state = jax.eval_shape(functools.partial(apply, train=True), variables)
    (aux,) = state["aux_logits"]["aux"]
    assert logits.shape == aux.shape == (2, 10) and aux.dtype == jnp.float32
    _, state = jax.eval_shape(functools.partial(apply, train=False), variables)
    assert "aux_logits" not in state


@pytest.mark.parametrize(
    ("size", "kwargs", "layer"),
    [
        (74, {}, "Mixed_7a/branch3x3_2/conv"),  # 75 is the smallest that works
        (298, {"aux_logits": True}, "AuxLogits/conv1/conv"),  # Mixed_6e at 16x16 < 17x17
    ],
)
def test_smallest_inputs(size: int, kwargs: dict, layer: str) -> None:
    assert abstract(size + 1, **kwargs)[1].shape == (2, 10)
    with pytest.raises(InputTooSmall, match=f"'{layer}'"):
        abstract(size, **kwargs)
