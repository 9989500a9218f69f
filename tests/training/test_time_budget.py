"""Training to a time budget: the epochs that fit, the scaled recipe, and a budgeted run equal
to the run of its scaled config."""

import json
import math
import os
import time

import pytest
from conftest import convnet_config, load_config

from cv_jax.config import ConfigError, validate
from cv_jax.training import datasets, sharding, time_budget, train
from cv_jax.training.time_budget import Timings


def test_fit_epochs_takes_the_most_tenths_whose_steps_and_evaluations_fit():
    timings = Timings(elapsed=10.0, compile=5.0, step=0.5, evaluation=2.0)
    # (115 - 10) * 0.88 - 5 = 87.4 s; 10 steps per epoch; an evaluation every 10 steps and at
    # the end: 12.2 epochs = 122 steps (61 s) + 13 evaluations (26 s) = 87 s.
    assert time_budget.fit_epochs(115.0, timings, 10, 1.0) == 12.2
    cost = 123 * 0.5 + time_budget.evaluations(123, 10) * 2.0  # 12.3 epochs: 87.5 s
    assert cost > 87.4
    # evaluating every 5 epochs leaves room for more steps: 15.8 epochs = 79 + 4 * 2 = 87 s;
    # 15.9 epochs = 79.5 + 8 = 87.5 s is over.
    assert time_budget.fit_epochs(115.0, timings, 10, 5.0) == 15.8


def test_evaluations_counts_every_eval_step_and_the_last():
    assert [time_budget.evaluations(n, 10) for n in (9, 10, 11, 20, 21)] == [1, 1, 2, 2, 3]


def test_a_budget_too_small_for_a_tenth_of_an_epoch_is_an_error():
    timings = Timings(elapsed=50.0, compile=5.0, step=1.0, evaluation=1.0)
    with pytest.raises(ConfigError, match=(
            r"config.training.time_budget_minutes=1 leaves 3.8 s for training after 50.0 s of "
            r"loading and timing and 5.0 s of compiling, less than a tenth of an epoch \(21.0 s "
            r"here\): raise the budget")):
        time_budget.fit_epochs(60.0, timings, 200, 1.0)


def test_scale_run_scales_every_duration_in_epochs_and_clears_the_budget():
    config = load_config("cpu,minutes=14")
    assert config.training.time_budget_minutes == 14.0 and config.training.num_epochs == 7.0
    config.schedule.update(name="exponential", decay_factor=0.5, boundaries=(2.0, 5.0),
                           warmup_fraction=0.0, warmup_epochs=0.23 * 7.0)
    config.mixup.off_epoch = 6.0
    scaled = time_budget.scale_run(config, 21.0)
    assert scaled.training.num_epochs == 21.0 and scaled.training.time_budget_minutes == 0.0
    assert scaled.schedule.warmup_epochs == pytest.approx(3 * 0.23 * 7.0, rel=1e-12)
    assert scaled.schedule.boundaries == (6.0, 15.0) and scaled.mixup.off_epoch == 18.0
    assert scaled.schedule.decay_factor ** 21 == pytest.approx(0.5 ** 7, rel=1e-12)
    assert config.training.num_epochs == 7.0 and config.schedule.boundaries == (2.0, 5.0)


def test_the_cpu15_recipe_trains_to_15_minutes_unless_a_length_is_named():
    config = load_config("cpu15")
    validate(config)
    assert config.training.time_budget_minutes == 15.0 and config.model.widths == (64, 128, 128)
    assert load_config("cpu15,epochs=3").training.time_budget_minutes == 0.0
    steps = load_config("cpu15,steps=5")
    validate(steps)
    assert steps.training.time_budget_minutes == 0.0 and steps.training.num_steps == 5
    both = load_config("cpu,epochs=7,minutes=14").training
    assert (both.time_budget_minutes, both.num_epochs) == (14.0, 7.0)


def test_a_budget_and_num_steps_cannot_both_set_the_length():
    config = load_config("smoke,minutes=2,steps=10")
    with pytest.raises(ConfigError, match=(
            r"config.training.time_budget_minutes=2 and config.training.num_steps=10 both set "
            r"the run's length: set num_steps=0")):
        validate(config)


def test_a_budgeted_run_is_the_run_of_its_scaled_config_and_resumes_its_plan(
        tiny_folder, cache_dir, tmp_path, monkeypatch):
    # 6 steps per epoch; 60 s * 0.88 = 52.8 s at 5.5 s per step: 1.5 epochs = 9 steps (49.5
    # s), where 1.6 epochs = 10 steps would take 55 s.
    config = convnet_config(tiny_folder, cache_dir, num_epochs=2.0, time_budget_minutes=1.0)
    config.schedule.update(warmup_epochs=0.5, warmup_fraction=0.0, name="cosine")
    monkeypatch.setattr(train, "measure_timings",
                        lambda *args: Timings(elapsed=0.0, compile=0.0, step=5.5, evaluation=0.0))
    budgeted = str(tmp_path / "budgeted")
    results = train.train_and_evaluate(config, budgeted)
    with open(os.path.join(budgeted, time_budget.FILE)) as f:
        plan = json.load(f)
    assert plan["epochs"] == 1.5 and plan["configured_epochs"] == 2.0
    assert results["steps"] == results["planned_steps"] == 9

    scaled = time_budget.scale_run(config, 1.5)
    assert scaled.schedule.warmup_epochs == 0.375
    plain = str(tmp_path / "plain")
    expected = train.train_and_evaluate(scaled, plain)
    for key in ("test_loss", "test_correct", "steps"):
        assert results[key] == expected[key]
    with open(os.path.join(budgeted, "config.json")) as a, \
            open(os.path.join(plain, "config.json")) as b:
        assert json.load(a) == json.load(b)

    def no_timing(*args):
        raise AssertionError("a resumed run keeps its plan")

    monkeypatch.setattr(train, "measure_timings", no_timing)
    assert train.train_and_evaluate(config, budgeted)["test_loss"] == results["test_loss"]
    config.training.time_budget_minutes = 2.0
    with pytest.raises(ConfigError, match=(
            r"time_budget.json planned this workdir's run for "
            r"config.training.time_budget_minutes=1, not 2: use that budget")):
        train.train_and_evaluate(config, budgeted)


def test_measure_timings_compiles_and_times_the_run(tiny_folder, cache_dir):
    config = convnet_config(tiny_folder, cache_dir)
    started = time.perf_counter()
    data = datasets.load_datasets(config)
    mesh = sharding.make_mesh(config.training.num_devices)
    timings = train.measure_timings(config, data, mesh, started, min_steps=3, min_seconds=0.0)
    assert 0 < timings.compile < timings.elapsed <= time.perf_counter() - started
    assert timings.step > 0 and timings.evaluation > 0
    assert math.isfinite(timings.step + timings.evaluation)
