"""Reports over synthetic run directories: grouping over seeds, mean ± std, provenance, failed
runs, dataset warnings, ablation deltas, the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from cv_jax.analysis import report
from cv_jax.config import base_config
from cv_jax.training import checkpoint
from cv_jax.training.results import save_config, write_results


def make_run(workdir, *, seed=0, lr=0.1, accuracy=None, data_dir="", parameters=1234567,
             device="1 x cpu (cpu)", train_time=10.0, images_per_sec=100.0, log=None,
             model=None):
    """A workdir as a run leaves it: config.json, metrics.jsonl and (when ``accuracy`` is given)
    results.json; ``log`` is written to log.txt; ``model`` replaces the config's section."""
    os.makedirs(workdir, exist_ok=True)
    config = base_config()
    if model is not None:
        config.model = model
    config.seed, config.optimizer.learning_rate = seed, lr
    config.dataset.data_dir = data_dir
    config.recipe_reason = f"reason {seed}"  # bookkeeping: never a column
    save_config(config, str(workdir))
    records = [{"step": s, "split": "train", "epoch": s / 50, "loss": 2.0 / s,
                "learning_rate": lr * (1 - s / 200)} for s in (50, 100, 150, 200)]
    records.append({"step": 200, "split": "test", "accuracy": accuracy or 0.0, "loss": 1.0})
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    if accuracy is not None:
        results = {"test_accuracy": accuracy, "test_examples": 10000, "steps": 200,
                   "epochs": 4.0, "best_step": 150, "train_time_s": train_time,
                   "images_per_sec": images_per_sec, "device": device, "jax_version": "0.10.2",
                   "parameters": parameters}
        write_results(str(workdir), {k: v for k, v in results.items() if v is not None})
    if log is not None:
        with open(os.path.join(workdir, "log.txt"), "w") as f:
            f.write(log)
    return str(workdir)


@pytest.fixture
def seeds_of_two_configs(tmp_path):
    """lr 0.1 over seeds 0-2 (80%, 82%, 87%) and lr 0.2 over seeds 0-1 (70%, 74%; a model of
    another size)."""
    dirs = [make_run(tmp_path / "a" / f"seed={s}", seed=s, accuracy=acc,
                     train_time=10.0 * (s + 1), images_per_sec=100.0 * (s + 1))
            for s, acc in enumerate([0.80, 0.82, 0.87])]
    dirs += [make_run(tmp_path / "b" / f"seed={s}", seed=s, lr=0.2, accuracy=acc,
                      parameters=50000) for s, acc in enumerate([0.70, 0.74])]
    return dirs


def test_rows_average_over_seeds_with_the_sample_std(tmp_path, seeds_of_two_configs):
    path = report.write_report(seeds_of_two_configs, str(tmp_path / "out"))
    text = open(path).read()
    # By hand: mean 83; deviations -3, -1, 4 -> sqrt((9 + 1 + 16) / 2) = 3.606.
    # mean 72; deviations -2, 2 -> sqrt(8 / 1) = 2.828. Best epoch: step 150 at 50 per epoch.
    assert np.isclose(np.std([80, 82, 87], ddof=1), 3.606, atol=1e-3)
    assert ("| run | `optimizer.learning_rate` | test acc. (%) | n | best epoch | train time (s) "
            "| images/s | parameters | status |") in text
    assert f"| {tmp_path}/a | 0.1 | 83.00 ± 3.61 | 3 | 3 | 20.0 | 200 | 1,234,567 | ok |" in text
    assert f"| {tmp_path}/b | 0.2 | 72.00 ± 2.83 | 2 | 3 | 10.0 | 100 | 50,000 | ok |" in text
    assert "sample standard deviation (ddof=1)" in text
    assert "Warning" not in text


def test_the_header_states_hardware_epochs_seeds_and_runs(tmp_path, seeds_of_two_configs):
    text = open(report.write_report(seeds_of_two_configs, str(tmp_path / "out"), title="LR",
                                    command="make report")).read()
    assert text.startswith("# LR\n")
    assert "by `make report`." in text
    assert "- **Runs**: 5 (5 finished) in 2 rows; seeds: 0, 1, 2" in text
    assert "- **Hardware**: 1 x cpu (cpu); jax 0.10.2" in text
    assert "- **Epochs**: 4 (steps: 200)" in text
    assert "- **Dataset**: cifar10 (located automatically); 10000 test images" in text


def test_runs_on_different_datasets_are_flagged(tmp_path):
    dirs = [make_run(tmp_path / "x", accuracy=0.5, data_dir="/data/cifar10"),
            make_run(tmp_path / "y", accuracy=0.6, data_dir="/data/cifar10-noisy",
                     device="1 x H100 (gpu)")]
    text = open(report.write_report(dirs, str(tmp_path / "out"))).read()
    assert ("> **Warning: these runs use different datasets** (cifar10 (/data/cifar10); "
            "cifar10 (/data/cifar10-noisy)). Their accuracies are not comparable") in text
    assert "> **Warning: these runs ran on different hardware** (1 x H100 (gpu), 1 x cpu (cpu))"\
        in text
    assert "| run | dataset | test acc. (%) |" in text
    assert f"| {tmp_path}/y | cifar10 (/data/cifar10-noisy) | 60.00 | 1 |" in text


def save_checkpoint(workdir, class_names):
    """A checkpoint whose signature holds a 3x4 kernel and a bias of 4 (16 parameters)."""
    params = {"dense": {"kernel": np.ones((3, 4), np.float32), "bias": np.zeros(4, np.float32)}}
    sig = checkpoint.signature({"name": "toy"}, params, class_names, (8, 8, 3))
    ckpt = checkpoint.Checkpoints(workdir, keep=1, best_metric="test_accuracy", best_mode="max")
    ckpt.save(5, {"params": params}, sig, metrics={"test_accuracy": 0.5})
    ckpt.wait()
    ckpt.close()


def test_class_names_are_compared_and_parameters_counted_from_the_checkpoint(tmp_path):
    dirs = [make_run(tmp_path / "old", accuracy=0.5, parameters=None),
            make_run(tmp_path / "new", accuracy=0.6, lr=0.2)]
    save_checkpoint(dirs[0], ("cat", "dog"))
    save_checkpoint(dirs[1], ("cat", "dog", "frog"))
    records = [report.load_record(d) for d in dirs]
    assert [r.parameters for r in records] == [16, 1234567]
    assert [r.gflops for r in records] == [None, None]  # no model named in their configs
    assert report.datasets_differ(records)
    text = report.markdown(records, "t", "c")
    assert "class names: cat, dog / cat, dog, frog)" in text
    assert f"| {tmp_path}/old | 0.1 | cifar10 (located automatically), 2 classes | 50.00 | 1 | 3 |"\
        in text


def test_runs_without_results_are_failed_or_unfinished(tmp_path):
    crashed = make_run(tmp_path / "crashed", log="step 1\nTraceback (most recent call last):\n"
                       '  File "train.py", line 3\nValueError: bad things\n')
    killed = make_run(tmp_path / "killed", log="step 1\n")
    running = make_run(tmp_path / "running")
    done = make_run(tmp_path / "done", lr=0.3, accuracy=0.9)
    records = [report.load_record(crashed), report.load_record(killed, exit_code=-9),
               report.load_record(running), report.load_record(done)]
    assert [(r.status, r.note) for r in records] == [
        ("failed", "ValueError: bad things"), ("failed", "exit code -9"),
        ("unfinished", "no results.json yet"), ("finished", "")]
    text = report.markdown(records, "t", "c")
    assert f"| {tmp_path}/{{crashed,killed,running}} | 0.1 | — | 0 | — | — | — | — | " \
           "2 failed, 1 unfinished |" in text
    assert (f"- `{crashed}`: **failed**: ValueError: bad things "
            f"(log: `{crashed}/log.txt`)") in text
    assert f"- `{running}`: **unfinished**: no results.json yet\n" in text
    assert "- **Runs**: 4 (1 finished, 2 failed, 1 unfinished) in 2 rows" in text


def test_the_ablation_table_gives_the_change_against_the_full_recipe(tmp_path):
    full = [make_run(tmp_path / "full" / f"seed={s}", seed=s, accuracy=a)
            for s, a in enumerate([0.80, 0.82, 0.84])]
    ablated = [make_run(tmp_path / "no_x" / f"seed={s}", seed=s, lr=0.0, accuracy=a)
               for s, a in enumerate([0.70, 0.73, 0.73])]
    records = [report.load_record(d) for d in full + ablated]
    text = report.markdown(records, "t", "c",
                           ablation=[("full recipe", full), ("− x", ablated)])
    assert "| ablation | test acc. (%) | Δ vs full recipe (points) | n | status |" in text
    assert "| full recipe | 82.00 ± 2.00 | — | 3 | ok |" in text
    assert "| − x | 72.00 ± 1.73 | -10.00 | 3 | ok |" in text


def test_find_runs_expands_folders_of_runs(tmp_path, seeds_of_two_configs):
    os.makedirs(tmp_path / "empty")
    assert report.find_runs([str(tmp_path)]) == sorted(seeds_of_two_configs)
    assert report.find_runs([seeds_of_two_configs[3], str(tmp_path / "b")]) == \
        seeds_of_two_configs[3:]
    with pytest.raises(FileNotFoundError, match="empty holds no run"):
        report.find_runs([str(tmp_path / "empty")])
    with pytest.raises(FileNotFoundError, match="missing is not a directory"):
        report.find_runs([str(tmp_path / "missing")])


def test_the_cli_writes_the_report_and_its_plots(tmp_path, seeds_of_two_configs):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "cv_jax.analysis.report", str(tmp_path / "a"),
                           str(tmp_path / "b"), f"--out={out}", "--title=Two LRs"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# Two LRs\n")
    assert f"by `python -m cv_jax.analysis.report {tmp_path / 'a'} {tmp_path / 'b'} --out={out} " \
           "--title=Two LRs`" in done.stdout
    assert sorted(os.listdir(out)) == ["accuracy.png", "accuracy_vs_parameters.png",
                                       "curves.png", "lr.png", "report.md"]
    assert "![lr](lr.png)" in (out / "report.md").read_text()


def test_accuracy_against_parameters_is_plotted_only_for_models_of_different_sizes(tmp_path):
    same = [make_run(tmp_path / name, lr=lr, accuracy=0.5) for name, lr in [("p", 0.1), ("q", 0.2)]]
    records = [report.load_record(d) for d in same]
    groups = report.group_records(records, report.diff_keys(records))
    assert report.write_plots(groups, str(tmp_path / "out")) == [
        "curves.png", "lr.png", "accuracy.png"]


@pytest.mark.parametrize("labels, names", [
    (["runs/sweeps/s/constant/seed=0", "runs/sweeps/s/step/seed=0"], ["constant", "step"]),
    (["runs/sweeps/o/sgd", "runs/sweeps/o/adam"], ["sgd", "adam"]),
    (["runs/a/seed=0", "runs/a/seed=1"], ["seed=0", "seed=1"]),  # the seeds tell rows apart
    (["runs/x/seed_3"], ["x"]),
    (["w/lr=0.2/seed_0", "w/lr=0.4/seed_0"], ["lr=0.2", "lr=0.4"]),
    (["runs/a/{x,y}", "runs/b"], ["a/{x,y}", "b"]),
])
def test_plot_legends_name_rows_by_what_tells_them_apart(labels, names):
    assert report.plot_names(labels) == dict(zip(labels, names, strict=True))
