"""The train step's loss with auxiliary heads; test-time augmentation of the evaluation path."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest

from cv_jax.config import base_config
from cv_jax.training import steps
from cv_jax.training.state import create_train_state

PLAIN = steps.Normalization(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), dtype=jnp.float32)


class TwoHeads(nn.Module):
    """A linear classifier that also sows an auxiliary head's logits in train mode."""

    @nn.compact
    def __call__(self, x, train: bool):
        features = x.reshape(x.shape[0], -1)
        if train:
            self.sow("aux_logits", "aux1", nn.Dense(3, name="aux_head")(features))
        return nn.Dense(3, name="main")(features)


def test_aux_logits_add_weighted_cross_entropy() -> None:
    model = TwoHeads()
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 2, 2, 3)), jnp.uint8)
    labels = jnp.array([0, 1, 2, 1])
    variables = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 3)), train=True)
    state = create_train_state(model, optax.sgd(0.0), variables, jax.random.key_data(
        jax.random.key(1)))
    settings = steps.TrainSettings(
        normalization=PLAIN, label_smoothing=0.0, aux_weight=0.3,
        augment=mlc.ConfigDict(dict(crop_padding=0, padding_mode="constant", flip=False)),
        schedule=optax.constant_schedule(0.0),
    )
    _, metrics = steps.train_step(state, {"image": images, "label": labels}, settings)

    x = steps.normalize(images, settings.normalization).reshape(4, -1)
    params = variables["params"]

    def ce(name: str) -> jax.Array:
        logits = x @ params[name]["kernel"] + params[name]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    np.testing.assert_allclose(metrics["loss"], ce("main") + 0.3 * ce("aux_head"), rtol=1e-6)
    assert not np.isclose(float(ce("aux_head")), 0.0)


class PositionalLinear(nn.Module):
    """Logits that depend on where each pixel is, so flips and shifts change them."""

    @nn.compact
    def __call__(self, x, train: bool):
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


def tta_settings(tta_flip: bool, tta_translate: int) -> steps.EvalSettings:
    return steps.EvalSettings(PLAIN, tta_flip=tta_flip, tta_translate=tta_translate)


@pytest.mark.parametrize("batch_views", [False, True])
@pytest.mark.parametrize("tta_flip", [False, True])
@pytest.mark.parametrize("tta_translate", [0, 1, 2])
def test_tta_averages_mirrored_and_translated_views(tta_flip, tta_translate,
                                                    batch_views) -> None:
    model = PositionalLinear()
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 6, 3)).astype(np.uint8)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 5, 6, 3)), train=False)
    state = create_train_state(model, optax.sgd(0.0), variables, jax.random.key_data(
        jax.random.key(1)))
    logits = steps.predict_logits(state, jnp.asarray(images),
                                  tta_settings(tta_flip, tta_translate), batch_views)

    kernel = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)
    bias = np.asarray(variables["params"]["Dense_0"]["bias"], np.float64)

    def linear(v):
        return v.reshape(len(v), -1) @ kernel + bias

    def view(v):  # one view, averaged with its mirror image when flipping
        return 0.5 * (linear(v) + linear(v[:, :, ::-1])) if tta_flip else linear(v)

    x = images / 255.0  # mean 0, std 1
    expected = view(x)
    if tta_translate:
        t = tta_translate
        padded = np.pad(x, ((0, 0), (t, t), (t, t), (0, 0)), mode="reflect")
        up_left, down_right = padded[:, :5, :6], padded[:, 2 * t:, 2 * t:]
        assert up_left[0, t, t, 0] == x[0, 0, 0, 0] and down_right[0, 0, 0, 0] == x[0, t, t, 0]
        expected = 0.5 * expected + 0.25 * (view(up_left) + view(down_right))
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    # with any TTA the views differ, so the average is not the plain logits
    assert np.allclose(logits, linear(x), rtol=1e-5, atol=1e-5) == (not (tta_flip or tta_translate))


def test_training_and_evaluation_normalise_alike_and_evaluation_needs_no_schedule() -> None:
    config = base_config()
    config.dataset.update(mean=(0.5, 0.25, 0.125), std=(2.0, 4.0, 8.0))
    config.training.compute_dtype = "bfloat16"
    config.eval.update(tta_flip=True, tta_translate=2)
    evaluation = steps.EvalSettings.from_config(config)
    assert evaluation == steps.EvalSettings(
        steps.Normalization((0.5, 0.25, 0.125), (2.0, 4.0, 8.0), jnp.bfloat16), True, 2)
    training = steps.TrainSettings.from_config(config, optax.constant_schedule(0.1))
    assert training.normalization == evaluation.normalization
    x = steps.normalize(jnp.full((1, 1, 1, 3), 255, jnp.uint8), evaluation.normalization)
    assert x.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(x, np.float32).ravel(), [0.25, 0.1875, 0.109375])
