"""The train step's loss: auxiliary classifier outputs add aux_weight x their cross-entropy."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax

from cv_jax import steps
from cv_jax.state import create_train_state


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
    settings = steps.StepSettings(
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), dtype=jnp.float32, label_smoothing=0.0,
        aux_weight=0.3, augment=mlc.ConfigDict(dict(crop_padding=0, padding_mode="constant",
                                                    flip=False)),
        schedule=optax.constant_schedule(0.0), tta_flip=False,
    )
    _, metrics = steps.train_step(state, {"image": images, "label": labels}, settings)

    x = steps.normalize(images, settings).reshape(4, -1)
    params = variables["params"]

    def ce(name: str) -> jax.Array:
        logits = x @ params[name]["kernel"] + params[name]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    np.testing.assert_allclose(metrics["loss"], ce("main") + 0.3 * ce("aux_head"), rtol=1e-6)
    assert not np.isclose(float(ce("aux_head")), 0.0)
