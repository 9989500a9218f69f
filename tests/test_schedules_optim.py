"""Schedules at chosen steps, and the optimizer chain's masks and freezing."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_config

from cv_jax import configlib, optim, schedules


def schedule_config(**schedule):
    config = configlib.base_config()
    config.optimizer.learning_rate = 1.0
    config.schedule.update(**schedule)
    return config


def values(config, steps, spe=10, total=100):
    fn = schedules.create_schedule(config, steps_per_epoch=spe, total_steps=total)
    return [float(fn(s)) for s in steps]


def test_piecewise_decays_at_epoch_boundaries():
    config = schedule_config(name="piecewise", boundaries=(3, 6), decay_factor=0.1)
    got = values(config, [0, 29, 30, 59, 60, 99])
    np.testing.assert_allclose(got, [1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def test_exponential_per_epoch_and_staircase():
    smooth = values(schedule_config(name="exponential", decay_factor=0.5), [0, 5, 10, 20])
    np.testing.assert_allclose(smooth, [1, 0.5**0.5, 0.5, 0.25], rtol=1e-6)
    stairs = values(schedule_config(name="exponential", decay_factor=0.5, staircase=True),
                    [9, 10, 19])
    np.testing.assert_allclose(stairs, [1, 0.5, 0.5], rtol=1e-6)


def test_cosine_with_warmup():
    config = schedule_config(name="cosine", warmup_epochs=2, warmup_init_factor=0.0,
                             end_factor=0.0)
    got = values(config, [0, 10, 20, 60, 100])
    # 20 warmup steps, then a half cosine over the remaining 80.
    np.testing.assert_allclose(got, [0, 0.5, 1, 0.5, 0], atol=1e-6)


def test_linear_one_cycle_triangle():
    config = schedule_config(name="linear", warmup_epochs=5, warmup_init_factor=0.2,
                             end_factor=0.1)
    got = values(config, [0, 25, 50, 75, 100])
    np.testing.assert_allclose(got, [0.2, 0.6, 1.0, 0.55, 0.1], rtol=1e-6)


def test_unknown_schedule_lists_names():
    with pytest.raises(configlib.ConfigError, match="cosine.*piecewise|constant"):
        schedules.create_schedule(schedule_config(name="cosin"), 10, 100)


class ConvBN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.Dense(3, name="head")(x.mean((1, 2)))


def params():
    return ConvBN().init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))["params"]


def test_decay_mask_selects_kernels_only():
    mask = optim.path_mask(configlib.base_config().optimizer.decay_mask)(params())
    flat = {optim.param_path(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert flat == {"conv/kernel": True, "conv/bias": False, "bn/scale": False,
                    "bn/bias": False, "head/kernel": True, "head/bias": False}


def test_weight_decay_applies_to_kernels_not_biases_or_bn():
    config = configlib.base_config()
    config.optimizer.update(name="sgd", momentum=0.0, nesterov=False, weight_decay=0.1)
    tx = optim.create_optimizer(config, 1.0)
    p = params()
    zero_grads = jax.tree.map(jnp.zeros_like, p)
    updates, _ = tx.update(zero_grads, tx.init(p), p)
    np.testing.assert_allclose(updates["conv"]["kernel"], -0.1 * p["conv"]["kernel"], rtol=1e-6)
    for path in (("conv", "bias"), ("bn", "scale"), ("bn", "bias"), ("head", "bias")):
        assert not np.any(updates[path[0]][path[1]]), path


def test_sgd_nesterov_matches_optax_reference():
    config = configlib.base_config()
    config.optimizer.update(name="sgd", momentum=0.9, nesterov=True, weight_decay=0.0)
    tx, ref = optim.create_optimizer(config, 0.1), optax.sgd(0.1, momentum=0.9, nesterov=True)
    p = params()
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), p)
    s, r = tx.init(p), ref.init(p)
    for _ in range(3):
        u, s = tx.update(grads, s, p)
        v, r = ref.update(grads, r, p)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), u, v)


def test_frozen_parameters_get_zero_updates_and_multipliers_scale():
    config = configlib.base_config()
    config.optimizer.update(name="sgd", momentum=0.0, nesterov=False, weight_decay=0.0,
                            freeze="^conv/", lr_multipliers="bias$=3")
    tx = optim.create_optimizer(config, 1.0)
    p = params()
    grads = jax.tree.map(jnp.ones_like, p)
    updates, _ = tx.update(grads, tx.init(p), p)
    assert not np.any(updates["conv"]["kernel"]) and not np.any(updates["conv"]["bias"])
    np.testing.assert_array_equal(updates["head"]["kernel"], -np.ones((4, 3)))
    np.testing.assert_array_equal(updates["head"]["bias"], -3 * np.ones(3))


def test_unknown_optimizer_and_bad_values_name_the_key():
    config = configlib.base_config()
    config.optimizer.name = "sgdd"
    with pytest.raises(configlib.ConfigError, match="optimizer.name='sgdd'.*adam"):
        optim.create_optimizer(config, 0.1)
    config = load_config("smoke")
    config.optimizer.learning_rate = -1.0
    with pytest.raises(configlib.ConfigError, match="optimizer.learning_rate=-1.0"):
        configlib.validate(config)
    config = load_config("smoke")
    config.schedule.boundaries = (5, 2)
    with pytest.raises(configlib.ConfigError, match="schedule.boundaries"):
        configlib.validate(config)
