"""Several seeds trained as one program (vmapped or unrolled) equal the same seeds trained
one by one."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import tiny_config

from cv_jax.config import ConfigError, model_section
from cv_jax.optim import plateau
from cv_jax.training import curves, datasets, evaluation, runs, setup, sharding, steps, train
from cv_jax.training.results import read_results
from cv_jax.workflows import members, vectorized

SEEDS = (3, 5)


def tiny(tiny_folder, cache_dir):
    """A small BatchNorm + dropout convnet (quick to compile) on the tiny config's data and
    augmentation: 12 steps, examples ordered by seed 7, evaluated every 3 steps, the LR halved
    after each evaluation whose test accuracy did not improve (so it can differ by member)."""
    config = tiny_config(tiny_folder, cache_dir, eval_every_epochs=0.5)
    config.model = model_section(
        "convnet", layers="conv:8,pool:max:2,dropout:0.2,conv:8", fc="16", fc_dropout=0.3,
        batch_norm=True)
    config.optimizer.update(freeze="", lr_multipliers="")
    config.schedule.update(name="reduce_on_plateau", plateau_metric="accuracy",
                           plateau_patience=0, decay_factor=0.5)
    config.data_seed = 7
    return config


@pytest.fixture(scope="module")
def vmapped(tiny_folder, cache_dir, tmp_path_factory):
    """The seeds trained together on 8 devices (batch split, members replicated): 12 steps,
    stopped after 5 and resumed. Returns the workdir, the first and the final results."""
    workdir = str(tmp_path_factory.mktemp("vmapped"))
    config = tiny(tiny_folder, cache_dir)
    first = vectorized.train_seeds(config, workdir, SEEDS, max_steps_this_run=5)
    return workdir, first, vectorized.train_seeds(config, workdir, SEEDS)


@pytest.fixture(scope="module")
def separate(tiny_folder, cache_dir, tmp_path_factory):
    """The same seeds trained one by one with train.train_and_evaluate."""
    out = {}
    for seed in SEEDS:
        config = tiny(tiny_folder, cache_dir)
        config.seed = seed
        workdir = str(tmp_path_factory.mktemp(f"single_{seed}"))
        out[seed] = workdir, train.train_and_evaluate(config, workdir)
    return out


def predictions(workdir, dataset):
    run = runs.load_run(workdir)
    settings = steps.EvalSettings.from_config(run.config)
    evaluator = evaluation.Evaluator(dataset, 16, settings, sharding.make_mesh())
    return run.state, evaluator.predictions(run.state)["prediction"]


def assert_members_match(workdir, results, separate, test):
    """Each member's weights, test predictions and results against its separate run.

    Same mesh and batch sharding as the single runs. vmap batches the convolutions and
    matmuls over the members (and XLA fuses an unrolled program differently), so float32
    products are summed in another order; the round-off grows over 12 steps to ~5e-7 on
    weights of order 1 here (~7e-6 with the airbench net), and weights near 0 make a relative
    bound alone meaningless: rtol=1e-5, atol=5e-6. A wrong key or batch order moves weights
    by ~1e-2. Predictions must be identical.
    """
    params, lr_scales = [], []
    for seed, result in zip(SEEDS, results, strict=True):
        single_dir, single = separate[seed]
        state, predicted = predictions(members.member_dir(workdir, seed), test)
        single_state, single_predicted = predictions(single_dir, test)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-6),
                     jax.device_get(state.params), jax.device_get(single_state.params))
        np.testing.assert_array_equal(predicted, single_predicted)
        for key in ("test_accuracy", "test_correct", "test_examples", "steps", "parameters"):
            assert result[key] == single[key], key
        np.testing.assert_allclose(result["test_loss"], single["test_loss"], rtol=1e-5)
        params.append(jax.device_get(state.params))
        lr_scales.append(plateau.plateau_lr_scale(state.opt_state))
        assert lr_scales[-1] == plateau.plateau_lr_scale(single_state.opt_state)
    assert not np.allclose(params[0]["head"]["kernel"], params[1]["head"]["kernel"])
    assert lr_scales[0] != lr_scales[1]  # reduce-on-plateau decided per member


def test_members_equal_separate_runs(vmapped, separate, tiny_folder, cache_dir):
    workdir, _, results = vmapped
    test = datasets.load_datasets(tiny(tiny_folder, cache_dir)).test
    assert_members_match(workdir, results, separate, test)


def test_unrolled_members_equal_separate_runs(separate, tiny_folder, cache_dir, tmp_path):
    config = tiny(tiny_folder, cache_dir)
    results = vectorized.train_seeds(config, str(tmp_path), SEEDS, mode="unroll")
    test = datasets.load_datasets(config).test
    assert_members_match(str(tmp_path), results, separate, test)


def test_members_trained_three_steps_per_call_equal_separate_runs(separate, tiny_folder,
                                                                  cache_dir, tmp_path):
    """Evaluated and logged every 3 steps: every call takes 3 steps (a scan of the vmapped
    step)."""
    config = tiny(tiny_folder, cache_dir)
    config.training.update(steps_per_call=3, log_every_steps=3)
    results = vectorized.train_seeds(config, str(tmp_path), SEEDS)
    test = datasets.load_datasets(config).test
    assert_members_match(str(tmp_path), results, separate, test)
    records = curves.read_metrics(members.member_dir(str(tmp_path), SEEDS[0]))
    assert [r["step"] for r in records if r["split"] == "train"] == [3, 6, 9, 12]


def test_each_member_is_a_complete_run(vmapped, separate):
    workdir, _, results = vmapped
    single_keys = set(separate[SEEDS[0]][1])
    for seed, result in zip(SEEDS, results, strict=True):
        member = members.member_dir(workdir, seed)
        assert set(result) == single_keys | {"vectorized_seeds", "vectorized_vary"}
        assert result["vectorized_seeds"] == list(SEEDS) and result["finished"]
        assert result["vectorized_vary"] == {}
        with open(os.path.join(member, "results.json")) as f:
            assert json.load(f) == result
        saved = runs.read_config(member)
        assert (saved.seed, saved.data_seed) == (seed, 7)
        records = curves.read_metrics(member)
        assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 13))
        assert [r["step"] for r in records if r["split"] == "test"] == [3, 5, 6, 9, 12]
    first, second = (curves.series(curves.read_metrics(members.member_dir(workdir, s)),
                                   "train", "loss")[1] for s in SEEDS)
    assert not np.allclose(first, second)


def test_stopped_run_resumes_and_finished_run_reports(vmapped, tiny_folder, cache_dir):
    """The fixture's run stopped after 5 steps and resumed (test_members_equal_separate_runs
    checks what it resumed to); a rerun of the finished run trains and logs nothing."""
    workdir, first, results = vmapped
    assert [(r["steps"], r["finished"]) for r in first] == [(5, False), (5, False)]
    metrics = os.path.join(members.member_dir(workdir, SEEDS[0]), "metrics.jsonl")
    lines = len(open(metrics).readlines())
    config = tiny(tiny_folder, cache_dir)
    assert vectorized.train_seeds(config, workdir, SEEDS) == results
    assert len(open(metrics).readlines()) == lines


def test_member_that_lost_its_results_is_evaluated_again(vmapped, tiny_folder, cache_dir,
                                                         tmp_path):
    """A crash after the last checkpoint but before results.json: the rerun evaluates that
    member from its checkpoint and keeps the other member's results."""
    workdir, _, results = vmapped
    copy = shutil.copytree(workdir, tmp_path / "copy")
    os.remove(copy / f"seed_{SEEDS[1]}" / "results.json")
    again = vectorized.train_seeds(tiny(tiny_folder, cache_dir), str(copy), SEEDS)
    assert again[0] == results[0]
    assert again[1]["images_per_sec"] is None  # nothing was trained
    for key in ("test_correct", "test_loss", "best_step", "steps", "finished"):
        assert again[1][key] == results[1][key], key
    assert read_results(str(copy / f"seed_{SEEDS[1]}")) == again[1]


def test_member_config_shares_the_data_order(tiny_folder, cache_dir):
    config = tiny_config(tiny_folder, cache_dir)
    config.seed, config.data_seed = 4, -1
    configs = [members.member_config(config, s) for s in (0, 1)]
    assert [(m.seed, m.data_seed) for m in configs] == [(0, 4), (1, 4)]
    assert config.seed == 4 and config.data_seed == -1  # the given config is unchanged
    keys = [jax.random.key_data(setup.shuffle_key(m)) for m in configs]
    np.testing.assert_array_equal(keys[0], keys[1])
    np.testing.assert_array_equal(keys[0], jax.random.key_data(setup.shuffle_key(config)))


def test_seeds_are_parsed_and_checked(tiny_folder, cache_dir, tmp_path):
    assert members.parse_seeds("0, 1,2") == (0, 1, 2)
    assert members.parse_seeds(["4", "2"]) == (4, 2)
    for bad in ("1,1", "", "a,b"):
        with pytest.raises(ConfigError, match="--seeds"):
            members.parse_seeds(bad)
    config = tiny_config(tiny_folder, cache_dir)
    with pytest.raises(ConfigError, match="mode='pmap'"):
        vectorized.train_seeds(config, str(tmp_path), (0, 1), mode="pmap")
    config.early_stopping.patience = 2
    with pytest.raises(ConfigError, match="early_stopping"):
        vectorized.train_seeds(config, str(tmp_path), (0, 1))


@pytest.mark.parametrize("key, value, message", [
    ("dataset.resample_seed", 3, "leave resample_seed at -1"),
    ("dataset.normalization", "featurewise", "statistics of their own sample"),
    ("loss.class_weights", "balanced", "statistics of their own sample"),
])
def test_bootstrap_members_refuse_what_one_program_cannot_draw(tiny_folder, cache_dir, tmp_path,
                                                                key, value, message):
    config = tiny(tiny_folder, cache_dir)
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=message):
        vectorized.train_seeds(config, str(tmp_path), SEEDS, bootstrap=True)
