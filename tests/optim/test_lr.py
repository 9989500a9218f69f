"""cv_jax.optim.lr.learning_rate answers what a parameter is updated with at a step: checked
against the updates of the run's real optimizer (plain SGD, so that an update is -LR x the
gradient), through warmup, multipliers, freezing, accumulation, SAM windows and transfer
groups."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from cv_jax.config import ConfigError, validate
from cv_jax.optim import chain, lr

SPE, TOTAL = 4, 24
HEAD = frozenset({"head/kernel"})
PARAMS = {"body": {"kernel": jnp.ones(3), "bias": jnp.ones(2), "scale": jnp.ones(2)},
          "head": {"kernel": jnp.ones(4)}}


def plain_sgd(**optimizer):
    """The smoke recipe's schedule (linear one-cycle with warmup) on momentum-free SGD."""
    config = load_config("smoke")
    config.training.num_steps = TOTAL
    config.optimizer.update(dict(name="sgd", momentum=0.0, nesterov=False, weight_decay=0.0,
                                 freeze="", lr_multipliers="", learning_rate=0.4), **optimizer)
    return config


def observed_rates(config, steps=TOTAL):
    """{path: [-update / gradient at each train step]} of the run's optimizer."""
    schedule = lr.schedule(config, SPE, TOTAL)
    tx = chain.run_optimizer(config, schedule, HEAD, SPE)
    state = tx.init(PARAMS)
    rates = {}
    for step in range(steps):
        grads = jax.tree.map(lambda p, s=step: jnp.full_like(p, 1.0 + s), PARAMS)
        updates, state = tx.update(grads, state, PARAMS)
        flat = {chain.param_path(k): v for k, v in jax.tree_util.tree_flatten_with_path(
            jax.tree.map(lambda u, g: -u / g, updates, grads))[0]}
        for path, rate in flat.items():
            rates.setdefault(path, []).append(float(rate[0]))
    return rates


def predicted_rates(config):
    return {path: lr.learning_rate(config, SPE, TOTAL, path, np.arange(TOTAL), HEAD)
            for path in ("body/kernel", "body/bias", "body/scale", "head/kernel")}


def test_the_schedule_multipliers_and_frozen_groups_are_what_sgd_applies():
    config = plain_sgd(lr_multipliers=r"bias$=8,head/=0.5", freeze=r"scale$")
    observed, predicted = observed_rates(config), predicted_rates(config)
    for path in predicted:
        np.testing.assert_allclose(observed[path], predicted[path], rtol=1e-6, err_msg=path)
    schedule = lr.schedule(config, SPE, TOTAL)
    steps = np.arange(TOTAL)
    np.testing.assert_allclose(predicted["body/bias"], 8 * np.asarray(schedule(steps)), rtol=1e-6)
    assert not predicted["body/scale"].any()
    assert lr.learning_rate(config, SPE, TOTAL, "body/kernel", 0) == pytest.approx(0.2 * 0.4)


@pytest.mark.parametrize("optimizer", [{"accumulate_steps": 3},
                                       {"name": "sam", "sam_base": "sgd", "sam_rho": 1e-6}])
def test_an_update_of_several_train_steps_uses_the_lr_of_its_windows_first_step(optimizer):
    config = plain_sgd(**optimizer)
    every = lr.steps_per_update(config)
    observed = observed_rates(config)["body/kernel"]
    predicted = predicted_rates(config)["body/kernel"]
    schedule = lr.schedule(config, SPE, TOTAL)
    for last in range(every - 1, TOTAL, every):  # the step that applies each update
        window_start = last - every + 1
        assert predicted[last] == pytest.approx(float(schedule(window_start)), rel=1e-6)
        if "accumulate_steps" in optimizer:  # the mean gradient of the window, at that LR
            mean_grad = np.mean(np.arange(window_start, last + 1) + 1.0)
            assert observed[last] * (1.0 + last) / mean_grad == pytest.approx(
                predicted[last], rel=1e-5)
        else:  # SAM's descent step: -LR x the gradient at the perturbed weights
            assert observed[last] == pytest.approx(predicted[last], rel=1e-4)


@pytest.mark.parametrize("mode", ["linear_probe", "discriminative", "staged"])
def test_transfer_groups_learn_as_learning_rate_says(mode):
    config = plain_sgd()
    config.transfer.update(init_from="a_source_run", mode=mode, backbone_lr_multiplier=0.1,
                           frozen_epochs=2.5)
    observed, predicted = observed_rates(config), predicted_rates(config)
    for path in ("body/kernel", "head/kernel"):
        np.testing.assert_allclose(observed[path], predicted[path], rtol=1e-6, err_msg=path)
    backbone = predicted["body/kernel"]
    if mode == "staged":  # 2.5 epochs of 4 steps frozen, then 0.1 x the schedule
        assert not backbone[:10].any() and backbone[10:].all()
    schedule = np.asarray(lr.schedule(config, SPE, TOTAL)(np.arange(TOTAL)))
    np.testing.assert_allclose(predicted["head/kernel"], schedule, rtol=1e-6)


def test_warmup_is_given_in_epochs_or_as_a_fraction_of_the_run_not_both():
    config = plain_sgd()
    config.schedule.update(warmup_fraction=0.25, warmup_epochs=0.0)
    assert lr.warmup_steps(config, SPE, TOTAL) == 6
    config.schedule.update(warmup_fraction=0.0, warmup_epochs=1.0)
    assert lr.warmup_steps(config, SPE, TOTAL) == 4
    config.schedule.warmup_fraction = 0.25
    with pytest.raises(ConfigError, match="both set the warmup"):
        validate(config)


def test_a_time_budget_scales_every_lr_duration_by_one_factor():
    config = plain_sgd()
    config.schedule.update(name="multistep", boundaries=(2.0, 4.0), warmup_fraction=0.0,
                           warmup_epochs=1.0, cycle_epochs=3.0)
    config.transfer.frozen_epochs = 2.0
    lr.scale_durations(config, 1.5)
    assert (config.schedule.warmup_epochs, config.schedule.cycle_epochs) == (1.5, 4.5)
    assert tuple(config.schedule.boundaries) == (3.0, 6.0)
    assert config.transfer.frozen_epochs == 3.0


def test_parameters_frozen_after_some_epochs_stop_changing_then():
    config = plain_sgd(freeze_after=r"bias$=1.5")  # 1.5 epochs = 6 train steps
    observed, predicted = observed_rates(config), predicted_rates(config)
    for path in predicted:
        np.testing.assert_allclose(observed[path], predicted[path], rtol=1e-6, err_msg=path)
    assert predicted["body/bias"][:6].all() and not predicted["body/bias"][6:].any()
    assert predicted["body/kernel"].all()


def test_warmup_fraction_rounds_down_as_airbench():
    config = plain_sgd()
    config.schedule.update(warmup_fraction=0.23, warmup_epochs=0.0)
    assert lr.warmup_steps(config, 195, 1365) == 313  # int(313.95), airbench's int()


def test_decay_can_ignore_the_lr_multipliers():
    """With decay_ignores_multipliers every group decays by the same amount per step (the
    multiplier scales the gradient's part of the update only), as airbench's bias_scaler."""
    config = plain_sgd(lr_multipliers=r"bias$=8", weight_decay=0.1, decay_mask=".*",
                       decay_ignores_multipliers=True)
    tx = chain.run_optimizer(config, lambda count: 0.4, HEAD, SPE)
    zero_grads = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zero_grads, tx.init(PARAMS), PARAMS)
    decay = {chain.param_path(k): float(v[0]) for k, v in
             jax.tree_util.tree_flatten_with_path(updates)[0]}
    assert decay["body/bias"] == pytest.approx(decay["body/kernel"]) == pytest.approx(-0.04)
    config.optimizer.decay_ignores_multipliers = False
    tx = chain.run_optimizer(config, lambda count: 0.4, HEAD, SPE)
    updates, _ = tx.update(zero_grads, tx.init(PARAMS), PARAMS)
    assert float(updates["body"]["bias"][0]) == pytest.approx(-0.32)
    config.optimizer.update(name="adamw", decay_ignores_multipliers=True)
    with pytest.raises(ConfigError, match="decay_ignores_multipliers=True needs L2-style"):
        chain.run_optimizer(config, lambda count: 0.4, HEAD, SPE)
