"""Mixup/CutMix, soft targets, class weights, L2 and activity penalties, input/weight noise."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest

from cv_jax.config import ConfigError, base_config, validate
from cv_jax.data import mixup
from cv_jax.optim import chain
from cv_jax.training import losses, steps
from cv_jax.training.state import create_train_state

KEY = jax.random.key(0)


def mix_config(**overrides) -> mlc.ConfigDict:
    cfg = base_config().mixup
    cfg.update(overrides)
    return cfg


def distinct_batch(n: int = 8, side: int = 6) -> jax.Array:
    """Float images whose every pixel names its image: image i is constant i + 1."""
    return jnp.broadcast_to(jnp.arange(1.0, n + 1)[:, None, None, None], (n, side, side, 3))


def test_mixup_is_the_stated_convex_combination() -> None:
    images = jax.random.normal(KEY, (8, 6, 6, 3))
    mixed, partner, lam = mixup.mix_images(images, KEY, mix_config(mixup_alpha=1.0), 0.0)
    assert 0 < float(lam) < 1
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[partner], rtol=1e-6)
    targets = mixup.mix_targets(losses.smooth_labels(jnp.arange(8), 8, 0.0), partner, lam)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    moved = np.asarray(partner) != np.arange(8)
    np.testing.assert_allclose(np.diag(targets)[moved], lam, rtol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_cutmix_label_weight_is_the_pasted_area(seed: int) -> None:
    images = distinct_batch()
    key = jax.random.key(seed)
    mixed, partner, lam = mixup.mix_images(images, key, mix_config(cutmix_alpha=1.0), 0.0)
    from_partner = np.asarray(mixed == images[partner]) & np.asarray(mixed != images)
    from_self = np.asarray(mixed == images)
    assert np.all(from_partner | from_self)  # every pixel is copied, none blended
    moved = np.asarray(partner) != np.arange(8)
    area = from_partner[moved].mean(axis=(1, 2, 3))
    np.testing.assert_allclose(area, 1 - float(lam), rtol=1e-6)  # one box for the batch


def test_switch_probability_and_off_switches() -> None:
    images = distinct_batch()
    both = {"mixup_alpha": 1.0, "cutmix_alpha": 1.0}
    cut, partner, lam = mixup.mix_images(images, KEY, mix_config(**both, switch_prob=1.0), 0.0)
    assert set(np.unique(np.asarray(cut))) <= set(np.arange(1.0, 9))  # CutMix: no blending
    blend, partner, lam = mixup.mix_images(images, KEY, mix_config(**both, switch_prob=0.0), 0.0)
    np.testing.assert_allclose(blend, lam * images + (1 - lam) * images[partner], rtol=1e-6)
    for cfg, epoch in ((mix_config(**both, prob=0.0), 0.0),
                       (mix_config(**both, off_epoch=3.0), 3.0)):
        same, _, lam = mixup.mix_images(images, KEY, cfg, epoch)
        np.testing.assert_array_equal(same, images)
        assert float(lam) == 1.0
    _, _, lam = mixup.mix_images(images, KEY, mix_config(**both, off_epoch=3.0), 2.9)
    assert float(lam) < 1.0


def test_soft_cross_entropy_with_smoothing_is_the_closed_form() -> None:
    logits = jnp.array([[2.0, -1.0, 0.5]])
    targets = losses.smooth_labels(jnp.array([0]), 3, 0.3)
    np.testing.assert_allclose(targets, [[0.8, 0.1, 0.1]], rtol=1e-6)
    log_p = np.log(np.exp([2.0, -1.0, 0.5]) / np.exp([2.0, -1.0, 0.5]).sum())
    expected = -(0.8 * log_p[0] + 0.1 * log_p[1] + 0.1 * log_p[2])
    np.testing.assert_allclose(losses.soft_cross_entropy(logits, targets), [expected], rtol=1e-6)


def test_class_weights() -> None:
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    np.testing.assert_allclose(losses.class_weights("balanced", labels, 3),
                               [10 / 18, 10 / 9, 10 / 3])
    assert losses.class_weights("", labels, 3) is None
    assert losses.class_weights("1,2,0.5", labels, 3) == (1.0, 2.0, 0.5)
    with pytest.raises(ConfigError, match="loss.class_weights='1,2'.*3 comma-separated"):
        losses.class_weights("1,2", labels, 3)
    with pytest.raises(ConfigError, match=r"classes \[3\] have no training examples"):
        losses.class_weights("balanced", labels, 4)
    targets = losses.smooth_labels(jnp.array([0, 2]), 3, 0.0)
    np.testing.assert_allclose(losses.example_weights(targets, (1.0, 2.0, 0.5)), [1.0, 0.5])


class TinyNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        h = nn.relu(nn.Dense(5, name="hidden")(x.reshape(x.shape[0], -1)))
        return nn.Dense(3, name="head")(h)


def step_setup(**config_overrides):
    """A TinyNet state, a batch and TrainSettings built from a base config with overrides."""
    config = base_config()
    config.augment.update(crop_padding=0, flip=False)
    config.dataset.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    for dotted, value in config_overrides.items():
        section, key = dotted.split(".")
        config[section][key] = value
    schedule = optax.constant_schedule(0.1)
    tx = chain.create_optimizer(config, schedule)
    model = TinyNet()
    variables = model.init(KEY, jnp.zeros((1, 2, 2, 3)), train=False)
    state = create_train_state(model, tx, variables, jax.random.key_data(jax.random.key(1)))
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (4, 2, 2, 3)), jnp.uint8),
             "label": jnp.array([0, 1, 2, 1])}
    settings = steps.TrainSettings.from_config(config, schedule, 1)
    return state, batch, settings


def test_l2_penalty_equals_coupled_weight_decay_for_sgd() -> None:
    common = {"optimizer.momentum": 0.9, "optimizer.nesterov": False}
    state, batch, penalty = step_setup(**common, **{"optimizer.weight_decay": 0.0,
                                                     "loss.l2_penalty": 0.05})
    decay_state, _, decay = step_setup(**common, **{"optimizer.weight_decay": 0.05})
    by_penalty, metrics = steps.train_step(state, batch, penalty)
    by_decay, plain = steps.train_step(decay_state, batch, decay)  # its state holds its optax chain
    assert not np.allclose(by_decay.params["head"]["kernel"],
                           steps.train_step(state, batch, decay)[0].params["head"]["kernel"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 by_penalty.params, by_decay.params)
    kernels = [state.params[n]["kernel"] for n in ("hidden", "head")]
    extra = 0.05 * 0.5 * sum(float(jnp.sum(k**2)) for k in kernels)
    np.testing.assert_allclose(metrics["loss"], plain["loss"] + extra, rtol=1e-6)


def test_activity_penalty_adds_the_keras_formula() -> None:
    state, batch, plain = step_setup()
    _, _, regularised = step_setup(**{"loss.activity_l1": 0.01, "loss.activity_l2": 0.1,
                                      "loss.activity_layers": "^hidden$"})
    _, base = steps.train_step(state, batch, plain)
    _, metrics = steps.train_step(state, batch, regularised)
    x = steps.normalize(batch["image"], plain.normalization).reshape(4, -1)
    params = state.params["hidden"]
    hidden = x @ params["kernel"] + params["bias"]  # the Dense output, before the ReLU
    per_example = 0.01 * jnp.abs(hidden).sum(1) + 0.1 * (hidden**2).sum(1)
    np.testing.assert_allclose(metrics["loss"], base["loss"] + per_example.mean(), rtol=1e-5)


def test_class_weights_scale_each_examples_loss() -> None:
    state, batch, plain = step_setup()
    weighted = steps.TrainSettings(**{**plain.__dict__, "class_weights": (1.0, 3.0, 0.0)})
    _, base = steps.train_step(state, batch, plain)
    _, metrics = steps.train_step(state, batch, weighted)
    x = steps.normalize(batch["image"], plain.normalization)
    logits = state.apply_fn({"params": state.params}, x, train=False)
    per_example = losses.cross_entropy(logits, batch["label"])
    np.testing.assert_allclose(base["loss"], per_example.mean(), rtol=1e-6)
    expected = jnp.mean(jnp.array([1.0, 3.0, 0.0, 3.0]) * per_example)
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-6)


def test_noise_changes_the_step_reproducibly() -> None:
    state, batch, plain = step_setup()
    _, base = steps.train_step(state, batch, plain)
    for key in ("noise.input_std", "noise.weight_std"):
        _, _, noisy = step_setup(**{key: 0.5})
        first, m1 = steps.train_step(state, batch, noisy)
        second, m2 = steps.train_step(state, batch, noisy)
        assert float(m1["loss"]) == float(m2["loss"]) != float(base["loss"])
        jax.tree.map(np.testing.assert_array_equal, first.params, second.params)


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("mixup.mixup_alpha", -1.0, ">= 0"),
    ("mixup.prob", 1.5, r"\[0, 1\]"),
    ("loss.activity_layers", "(", "regular expression"),
    ("noise.weight_std", -0.1, ">= 0"),
])
def test_bad_regulariser_values_name_the_key(key: str, value, allowed: str) -> None:
    config = base_config()
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=rf"{key}.*{allowed}"):
        validate(config)


def test_ema_update_is_the_formula() -> None:
    config_state, batch, settings = step_setup(**{"training.ema_decay": 0.9})
    model = TinyNet()
    variables = model.init(KEY, jnp.zeros((1, 2, 2, 3)), train=False)
    state = create_train_state(model, config_state.tx, variables, config_state.rng, ema=True)
    p0 = state.params
    first, _ = steps.train_step(state, batch, settings)
    second, _ = steps.train_step(first, batch, settings)
    expected = jax.tree.map(lambda a, b, c: 0.9 * (0.9 * a + 0.1 * b) + 0.1 * c,
                            p0, first.params, second.params)
    jax.tree.map(lambda e, x: np.testing.assert_allclose(e, x, rtol=1e-6),
                 second.ema["params"], expected)
    assert not np.allclose(second.ema["params"]["head"]["kernel"], second.params["head"]["kernel"])
    off, _ = steps.train_step(config_state, batch, step_setup()[2])
    assert off.ema == {}


def test_best_by_ema_needs_ema() -> None:
    config = base_config()
    config.training.best_by_ema = True
    with pytest.raises(ConfigError, match="best_by_ema=True needs config.training.ema_decay"):
        validate(config)
