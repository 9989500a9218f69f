"""Non-finite losses and gradients: 'stop' names the step, the metric and the last good
checkpoint; 'skip' leaves that step's weights, optimizer state, BatchNorm statistics and EMA
as they were and counts it."""

from __future__ import annotations

import json
import os
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest
from conftest import convnet_config

from cv_jax.config import base_config
from cv_jax.optim import chain, opt_state
from cv_jax.training import divergence, runs, steps, train
from cv_jax.training.state import create_train_state
from cv_jax.workflows import members, vectorized


class TinyBN(nn.Module):
    """Dense -> BatchNorm -> Dense: weights and batch statistics a bad step could touch."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(4)(x.reshape(x.shape[0], -1))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
        return nn.Dense(3)(nn.relu(x))


def step_fn(std: float = 1.0):
    """The jitted train step without augmentation; ``std=0`` makes every input pixel inf."""
    settings = steps.TrainSettings(
        normalization=steps.Normalization(mean=(0.0, 0.0, 0.0), std=(std,) * 3,
                                          dtype=jnp.float32),
        label_smoothing=0.0, aux_weight=0.0,
        augment=mlc.ConfigDict(dict(crop_padding=0, padding_mode="constant", flip=False)),
        schedule=optax.constant_schedule(0.1), ema_decay=0.5)
    return jax.jit(lambda state, batch: steps.train_step(state, batch, settings))


def fresh_state(nonfinite: str = "skip"):
    """A step-0 state of TinyBN with EMA, its SGD wrapped as ``training.nonfinite`` says."""
    config = base_config()
    config.training.nonfinite = nonfinite
    model = TinyBN()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 3)), train=False)
    tx = chain.skip_nonfinite(config, optax.sgd(0.1, momentum=0.9))
    return create_train_state(model, tx, variables, jax.random.key_data(jax.random.key(1)),
                              ema=True)


BATCH = {"image": jnp.asarray(np.random.default_rng(0).integers(1, 256, (4, 2, 2, 3)),
                              jnp.uint8),
         "label": jnp.array([0, 1, 2, 1])}


def same_bits(a, b) -> bool:
    """Whether two trees hold bit-identical arrays."""
    return all(np.asarray(x).tobytes() == np.asarray(y).tobytes()
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_skip_keeps_the_state_of_a_nan_step_and_counts_it() -> None:
    good, nan = step_fn(), step_fn(std=0.0)
    first, m1 = good(fresh_state(), BATCH)
    bad, m2 = nan(first, BATCH)
    after, m3 = good(bad, BATCH)

    assert [bool(m["skipped"]) for m in (m1, m2, m3)] == [False, True, False]
    assert np.isnan(m2["loss"]) and np.isnan(m2["grad_norm"]) and np.isfinite(m3["grad_norm"])
    for part in ("params", "batch_stats", "ema"):
        assert same_bits(getattr(bad, part), getattr(first, part)), part
        assert not same_bits(getattr(after, part), getattr(bad, part)), part
    assert same_bits(bad.opt_state.inner_state, first.opt_state.inner_state)
    assert [int(s.step) for s in (first, bad, after)] == [1, 2, 3]
    counts = [(int(g.notfinite_count), int(g.total_notfinite))
              for g in map(opt_state.nonfinite_guard, (first.opt_state, bad.opt_state,
                                                   after.opt_state))]
    assert counts == [(0, 0), (1, 1), (0, 1)]
    assert opt_state.skipped_steps(after.opt_state) == 1


def test_stop_mode_has_no_guard_and_reports_the_gradient_norm() -> None:
    start, step = fresh_state("stop"), step_fn()
    state, metrics = step(start, BATCH)
    assert opt_state.nonfinite_guard(state.opt_state) is None and "skipped" not in metrics
    assert opt_state.skipped_steps(state.opt_state) == 0

    def loss(params):
        return step(start.replace(params=params), BATCH)[1]["loss"]

    expected = optax.tree.norm(jax.grad(loss)(start.params))
    np.testing.assert_allclose(metrics["grad_norm"], expected, rtol=1e-6)


class FakeCheckpoints:
    directory = "/runs/x/checkpoints"

    def __init__(self, latest):
        self.latest = latest

    def latest_step(self):
        return self.latest


def record(loss=1.0, grad_norm=2.0, skipped=None, accuracy=0.5):
    metrics = {"loss": np.float32(loss), "accuracy": np.float32(accuracy),
               "learning_rate": np.float32(0.1), "grad_norm": np.float32(grad_norm)}
    return metrics if skipped is None else {**metrics, "skipped": np.bool_(skipped)}


def guarded(in_a_row: int, total: int):
    """A state stand-in whose optimizer state holds apply_if_finite's counters."""
    return types.SimpleNamespace(opt_state=optax.ApplyIfFiniteState(
        notfinite_count=jnp.int32(in_a_row), last_finite=jnp.bool_(in_a_row == 0),
        total_notfinite=jnp.int32(total), inner_state=optax.EmptyState()))


@pytest.mark.parametrize("history,message", [
    ([record(), record(loss=np.nan), record(loss=np.inf)],
     r"^the training loss is nan at step 9; training stopped\. Last good checkpoint: step 6 in "
     r"/runs/x/checkpoints\. Lower config\.optimizer\.learning_rate"),
    ([record(), record(), record(grad_norm=np.inf)],
     r"^the gradient norm \(grad_norm\) is inf at step 10; .*Last good checkpoint: step 6 "),
])
def test_stop_names_the_first_bad_step_and_metric(history, message) -> None:
    state = types.SimpleNamespace(opt_state=optax.EmptyState())
    with pytest.raises(divergence.TrainingDiverged, match=message):
        divergence.train_summary(history, state, 10, base_config(), FakeCheckpoints(6))


def test_skip_summary_averages_applied_steps_and_reports_the_count() -> None:
    history = [record(loss=1.0, skipped=False), record(loss=np.nan, accuracy=0.0, skipped=True),
               record(loss=3.0, accuracy=1.0, skipped=False)]
    summary = divergence.train_summary(history, guarded(0, 4), 12, base_config(),
                                       FakeCheckpoints(None))
    assert summary == {"loss": 2.0, "accuracy": 0.75, "learning_rate": pytest.approx(0.1),
                       "grad_norm": 2.0, "skipped_steps": 4}


def test_skip_stops_after_max_consecutive_skips() -> None:
    config = base_config()
    config.training.max_consecutive_skips = 3
    history = [record(loss=np.nan, skipped=True)] * 2
    assert divergence.train_summary(history, guarded(2, 2), 5, config,
                                    FakeCheckpoints(None))["skipped_steps"] == 2
    with pytest.raises(divergence.TrainingDiverged,
                       match=r"^the last 3 steps up to step 6 had non-finite gradients and were "
                             r"skipped \(config.training.max_consecutive_skips=3\); training "
                             r"stopped\. Last good checkpoint: none yet"):
        divergence.train_summary(history[:1], guarded(3, 3), 6, config, FakeCheckpoints(None))


def test_the_skip_counters_come_from_the_last_steps_metrics() -> None:
    """As the train step reports them, so a record needs no state (it is fetched later)."""
    config = base_config()
    config.training.max_consecutive_skips = 2
    history = [record(loss=1.0, skipped=False) | {"skipped_in_a_row": np.int32(0),
                                                   "skipped_steps": np.int32(3)},
               record(loss=np.nan, skipped=True) | {"skipped_in_a_row": np.int32(1),
                                                     "skipped_steps": np.int32(4)}]
    summary = divergence.train_summary(history, None, 8, config, FakeCheckpoints(None))
    assert summary == {"loss": 1.0, "accuracy": 0.5, "learning_rate": pytest.approx(0.1),
                       "grad_norm": 2.0, "skipped_steps": 4}
    history.append(record(loss=np.nan, skipped=True) | {"skipped_in_a_row": np.int32(2),
                                                         "skipped_steps": np.int32(5)})
    with pytest.raises(divergence.TrainingDiverged, match=r"^the last 2 steps up to step 9 "):
        divergence.train_summary(history, None, 9, config, FakeCheckpoints(None))


def test_the_train_step_reports_the_skip_counters() -> None:
    _, metrics = step_fn(std=0.0)(fresh_state(), BATCH)
    assert (bool(metrics["skipped"]), int(metrics["skipped_in_a_row"]),
            int(metrics["skipped_steps"])) == (True, 1, 1)


# --- through train_and_evaluate -------------------------------------------------------------

BAD_STEP = 3


def nan_input_at(step: int):
    """``steps.train_step`` whose model input is NaN on the ``step``-th step (1-based), as a
    corrupt batch or an overflow would make it."""
    original = steps.train_step

    def train_step(state, batch, settings, teacher=None):
        bad = state.step == step - 1

        def apply_fn(variables, x, **kwargs):
            return state.apply_fn(variables, jnp.where(bad, jnp.nan, x), **kwargs)

        new_state, metrics = original(state.replace(apply_fn=apply_fn), batch, settings, teacher)
        return new_state.replace(apply_fn=state.apply_fn), metrics

    return train_step


def quick_config(tiny_folder, cache_dir, nonfinite: str) -> mlc.ConfigDict:
    """Six steps of a one-layer convnet, logged at each step, evaluated at the end."""
    return convnet_config(tiny_folder, cache_dir, num_steps=6, eval_every_epochs=1.0,
                          nonfinite=nonfinite)


def test_stop_run_names_the_step(tiny_folder, cache_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(steps, "train_step", nan_input_at(BAD_STEP))
    config = quick_config(tiny_folder, cache_dir, "stop")
    with pytest.raises(divergence.TrainingDiverged,
                       match=rf"^the training loss is nan at step {BAD_STEP}; training stopped\. "
                             r"Last good checkpoint: none yet"):
        train.train_and_evaluate(config, str(tmp_path))


def test_skip_run_counts_the_skipped_step(tiny_folder, cache_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(steps, "train_step", nan_input_at(BAD_STEP))
    config = quick_config(tiny_folder, cache_dir, "skip")
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["steps"] == 6 and results["skipped_steps"] == 1
    assert np.isfinite(results["test_loss"])
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    logged = [(r["step"], r["skipped_steps"], bool(np.isfinite(r["loss"])))
              for r in records if r["split"] == "train"]
    assert logged == [(1, 0, True), (2, 0, True), (3, 1, False), (4, 1, True), (5, 1, True),
                      (6, 1, True)]
    with open(os.path.join(tmp_path, "results.json")) as f:
        assert json.load(f)["skipped_steps"] == 1
    # The counter is part of the checkpointed optimizer state, so a resumed run keeps it.
    assert opt_state.skipped_steps(runs.load_run(str(tmp_path)).state.opt_state) == 1


@pytest.mark.parametrize("nonfinite", ["skip", "stop"])
def test_vectorized_members_skip_or_stop_like_single_runs(tiny_folder, cache_dir, tmp_path,
                                                          monkeypatch, nonfinite) -> None:
    """Both members of a vectorised run see the NaN step: 'skip' counts it for each (and their
    logs stay as a single run's), 'stop' names the member and the step."""
    monkeypatch.setattr(steps, "train_step", nan_input_at(BAD_STEP))
    config = quick_config(tiny_folder, cache_dir, nonfinite)
    if nonfinite == "stop":
        with pytest.raises(divergence.TrainingDiverged,
                           match=rf"^seed 0: the training loss is nan at step {BAD_STEP}"):
            vectorized.train_seeds(config, str(tmp_path), (0, 1))
        return
    results = vectorized.train_seeds(config, str(tmp_path), (0, 1))
    for seed, result in zip((0, 1), results, strict=True):
        assert result["steps"] == 6 and result["skipped_steps"] == 1
        assert np.isfinite(result["test_loss"])
        with open(os.path.join(members.member_dir(str(tmp_path), seed), "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        assert [(r["step"], r["skipped_steps"]) for r in records if r["split"] == "train"] == [
            (1, 0), (2, 0), (3, 1), (4, 1), (5, 1), (6, 1)]
