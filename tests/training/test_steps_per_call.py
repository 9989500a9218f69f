"""``training.steps_per_call``: k train steps in one call (a ``lax.scan`` of the step) train
the run of one step per call, with its records, evaluations and checkpoints at the same
steps; a run of k steps per call resumed is the run in one go.

XLA compiles the step inside the scan's loop with other fusions than the step alone, so the
float32 results differ from one step per call in the last bits (measured: at most 5e-7 in any
parameter, BatchNorm statistic or optimizer state after 18 steps); the tolerances below allow
four times that. Runs of the same calls are equal bit for bit.
"""

import json
import os

import jax
import numpy as np
import pytest
from conftest import TIMING, convnet_config

from cv_jax.config import model_section
from cv_jax.training import runs, train

TOLERANCE = {"rtol": 1e-5, "atol": 2e-6}


def config(tiny_folder, cache_dir, steps_per_call: int):
    """18 steps (6 an epoch) of a convnet with BatchNorm and momentum: records every 9 steps,
    evaluations at 10 and 18, checkpoints every 7, so the calls of 4 steps stop short of them
    (from 0 and 14 they take 4 steps, elsewhere one)."""
    c = convnet_config(tiny_folder, cache_dir, num_steps=18, log_every_steps=9,
                       eval_every_epochs=10 / 6, checkpoint_every_steps=7,
                       steps_per_call=steps_per_call, keep_checkpoints=10)
    c.model = model_section("convnet", layers="conv:8,pool:max:2", fc="", batch_norm=True)
    return c


def trained(tiny_folder, cache_dir, workdir, steps_per_call: int):
    return workdir, train.train_and_evaluate(config(tiny_folder, cache_dir, steps_per_call),
                                             str(workdir))


@pytest.fixture(scope="module")
def one_per_call(tiny_folder, cache_dir, tmp_path_factory):
    return trained(tiny_folder, cache_dir, tmp_path_factory.mktemp("one"), 1)


@pytest.fixture(scope="module")
def four_per_call(tiny_folder, cache_dir, tmp_path_factory):
    return trained(tiny_folder, cache_dir, tmp_path_factory.mktemp("four"), 4)


def checkpoint_steps(workdir) -> list[int]:
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def final_state(workdir):
    """The run's last state: params, batch_stats and opt_state, on the host."""
    state = runs.load_run(str(workdir)).state
    return jax.device_get((state.params, state.batch_stats, state.opt_state))


def records(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def untimed(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in TIMING}


def close(record: dict) -> dict:
    """``record`` with its numbers compared up to TOLERANCE's rtol."""
    return {k: v if isinstance(v, str) else pytest.approx(v, rel=TOLERANCE["rtol"])
            for k, v in record.items()}


def test_four_steps_per_call_train_the_run_of_one(one_per_call, four_per_call):
    (one, one_results), (four, four_results) = one_per_call, four_per_call
    assert checkpoint_steps(four) == checkpoint_steps(one) == [7, 10, 14, 18]
    assert [(r["step"], r["split"]) for r in records(four)] == [
        (7, "train"), (9, "train"), (10, "train"), (10, "test"), (14, "train"), (18, "train"),
        (18, "test")]
    assert records(four) == [close(r) for r in records(one)]
    a, b = final_state(four), final_state(one)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **TOLERANCE), a, b)
    assert four_results["test_correct"] == one_results["test_correct"]
    assert untimed(four_results) == close(untimed(one_results))


def test_a_run_of_four_steps_per_call_split_and_resumed_is_the_run_in_one_go(
        four_per_call, tiny_folder, cache_dir, tmp_path):
    four, results = four_per_call
    c = config(tiny_folder, cache_dir, 4)
    first = train.train_and_evaluate(c, str(tmp_path), max_steps_this_run=9)
    assert first["steps"] == 12  # rounded up to a multiple of 4
    assert checkpoint_steps(tmp_path) == [7, 10, 12]
    assert records(tmp_path)[:4] == records(four)[:4]  # up to the evaluation at 10
    resumed = train.train_and_evaluate(c, str(tmp_path))
    assert checkpoint_steps(tmp_path) == [7, 10, 12, 14, 18]
    for x, y in zip(jax.tree.leaves(final_state(tmp_path)), jax.tree.leaves(final_state(four)),
                    strict=True):
        np.testing.assert_array_equal(x, y)
    assert untimed(resumed) == untimed(results)
