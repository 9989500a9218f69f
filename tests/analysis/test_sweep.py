"""Sweeps and ablations: expanding points, checking them before any run, skipping finished runs,
reporting failed ones; the definitions in experiments/ all plan."""

import importlib.util
import json
import os
import sys
import textwrap
import threading

import pytest
from conftest import REPO

from cv_jax.analysis import sweep, sweep_definition
from cv_jax.analysis.sweep_definition import Point, Sweep, SweepError, axis, product, zip_
from cv_jax.training.results import read_results, save_config, write_results

SMOKE = f"{REPO}/configs/cifar10.py:smoke"


def write_definition(path, points, common=None, seeds=(), name="demo", config=SMOKE):
    """A definition file whose get_sweep() returns the given sweep."""
    path.write_text(textwrap.dedent(f"""
        from cv_jax.analysis.sweep_definition import Point, Sweep

        def get_sweep(arg=None):
            return Sweep(name={name!r}, config={config!r}, points={points!r},
                         common={common or {}!r}, seeds={tuple(seeds)!r})
    """))
    return str(path)


class FakeRunner:
    """Records the runs it is given; writes config.json and results.json like a finished run,
    or a traceback in log.txt and exit code 1 for the workdirs in ``crash``."""

    def __init__(self, crash=()):
        self.calls, self.crash = [], set(crash)

    def __call__(self, run):
        self.calls.append(run.workdir)
        os.makedirs(run.workdir, exist_ok=True)
        save_config(run.config, run.workdir)
        if run.workdir in self.crash:
            with open(os.path.join(run.workdir, "log.txt"), "w") as f:
                f.write("Traceback (most recent call last):\n  File \"x.py\"\n"
                        "FloatingPointError: the training loss is nan at step 3\n")
            return 1
        lr = run.config.optimizer.learning_rate
        write_results(run.workdir, {"test_accuracy": lr, "steps": 10, "epochs": 2.0,
                                    "best_step": 10, "device": "1 x cpu (cpu)"})
        return 0


def test_product_and_zip_expand_to_the_expected_override_sets():
    lrs = axis("optimizer.learning_rate", [0.1, 0.2])
    names = axis("optimizer.name", ["sgd", "adam"])
    assert product(lrs, names) == [
        {"optimizer.learning_rate": 0.1, "optimizer.name": "sgd"},
        {"optimizer.learning_rate": 0.1, "optimizer.name": "adam"},
        {"optimizer.learning_rate": 0.2, "optimizer.name": "sgd"},
        {"optimizer.learning_rate": 0.2, "optimizer.name": "adam"}]
    assert zip_(lrs, names) == [{"optimizer.learning_rate": 0.1, "optimizer.name": "sgd"},
                                {"optimizer.learning_rate": 0.2, "optimizer.name": "adam"}]
    nested = product(axis("seed", [0, 1]), zip_(lrs, names))
    assert len(nested) == 4 and nested[3] == {"seed": 1, "optimizer.learning_rate": 0.2,
                                              "optimizer.name": "adam"}
    with pytest.raises(SweepError, match=r"equal length, got lengths \[2, 3\]"):
        zip_(lrs, axis("training.batch_size", [1, 2, 3]))
    with pytest.raises(SweepError, match="key 'optimizer.name' is set twice"):
        product(names, axis("optimizer.name", ["lion"]))


def test_points_get_readable_unique_folder_names():
    s = Sweep("s", SMOKE, product(axis("optimizer.learning_rate", [0.1, 1e-3]),
                                  axis("model.name", ["a"]), axis("optimizer.name", ["sgd"]),
                                  axis("model.widths", [(8, 16)]), axis("config_arg", ["x=1"])))
    assert [p.name for p in sweep_definition.named_points(s)] == [
        "learning_rate=0.1,model.name=a,optimizer.name=sgd,widths=8-16,x=1",
        "learning_rate=0.001,model.name=a,optimizer.name=sgd,widths=8-16,x=1"]
    explicit = Sweep("s", SMOKE, [Point({"loss.label_smoothing": 0.0}, name="no_ls"), {}])
    assert [p.name for p in sweep_definition.named_points(explicit)] == ["no_ls", "base"]
    with pytest.raises(SweepError, match="both get the folder 'label_smoothing=0'"):
        sweep_definition.named_points(Sweep("s", SMOKE, [{"loss.label_smoothing": 0.0}] * 2))


def test_runs_repeat_each_point_over_the_seeds_with_the_main_command(tmp_path):
    s = Sweep("demo", SMOKE, axis("config_arg", ["model=lenet5"]),
              common={"training.num_steps": 2}, seeds=(0, 3))
    runs = sweep.expand(s, str(tmp_path))
    assert [r.workdir for r in runs] == [f"{tmp_path}/demo/model=lenet5/seed=0",
                                         f"{tmp_path}/demo/model=lenet5/seed=3"]
    assert runs[1].command() == [
        sys.executable, "-m", "cv_jax.main", f"--config={SMOKE},model=lenet5",
        f"--workdir={tmp_path}/demo/model=lenet5/seed=3", "--config.training.num_steps=2",
        "--config.seed=3"]
    planned = sweep.plan(s, str(tmp_path))
    assert planned[1].config.model.name == "lenet5" and planned[1].config.seed == 3
    assert planned[1].config.training.num_steps == 2


def test_an_ablation_is_the_full_recipe_and_one_point_per_ingredient():
    s = sweep_definition.ablation("abl", SMOKE, {"Label smoothing": {"loss.label_smoothing": 0.0},
                                      "crop + flip": {"augment.flip": False}})
    assert [(p.name, p.label, p.overrides) for p in sweep_definition.named_points(s)] == [
        ("full", "full recipe", {}),
        ("no_label_smoothing", "− Label smoothing", {"loss.label_smoothing": 0.0}),
        ("no_crop_flip", "− crop + flip", {"augment.flip": False})]
    assert s.seeds == (0, 1, 2) and s.baseline == "full"
    with pytest.raises(SweepError, match="at least 3 distinct seeds"):
        sweep_definition.ablation("abl", SMOKE, {}, seeds=(0, 1))


def test_an_unknown_key_fails_before_any_run_naming_it(tmp_path):
    points = [{"optimizer.learning_rate": 0.1}, {"optimizer.learnig_rate": 0.2}]
    definition = write_definition(tmp_path / "bad.py", points)
    runner = FakeRunner()
    with pytest.raises(SweepError, match=r"bad.py: point 'learnig_rate=0.2': unknown config key "
                       r"'optimizer.learnig_rate': optimizer has no 'learnig_rate'; did you "
                       r"mean learning_rate\?"):
        sweep.run_sweep(definition, str(tmp_path / "runs"), runner=runner)
    assert runner.calls == [] and not os.path.exists(tmp_path / "runs")
    invalid = write_definition(tmp_path / "invalid.py", [{"loss.label_smoothing": 1.5}])
    with pytest.raises(SweepError, match=r"config.loss.label_smoothing=1.5 is invalid"):
        sweep.run_sweep(invalid, str(tmp_path / "runs"), runner=runner)


def test_finished_runs_are_skipped_and_a_crashed_run_is_reported_failed(tmp_path):
    definition = write_definition(tmp_path / "lr.py",
                                  axis("optimizer.learning_rate", [0.5, 0.25]), seeds=(0, 1))
    root = str(tmp_path / "runs")
    crashed = f"{root}/demo/learning_rate=0.25/seed=1"
    first = FakeRunner(crash=[crashed])
    outcome = sweep.run_sweep(definition, root, runner=first, echo=lambda _: None)
    assert len(first.calls) == 4 and outcome.unfinished == [crashed]
    report = open(outcome.report).read()
    assert "| 50.00 ± 0.00 | 2 |" in report
    assert "| 25.00 | 1 | 2 | — | — | — | 1 finished, 1 failed |" in report
    assert (f"- `{crashed}`: **failed**: FloatingPointError: the training loss is nan at step 3"
            f" (log: `{crashed}/log.txt`)") in report

    again = FakeRunner()
    outcome = sweep.run_sweep(definition, root, runner=again, echo=lambda _: None)
    assert again.calls == [crashed] and outcome.unfinished == []
    assert "| 25.00 ± 0.00 | 2 |" in open(outcome.report).read()


def test_parallel_runs_overlap(tmp_path):
    definition = write_definition(tmp_path / "p.py", axis("optimizer.learning_rate", [0.1, 0.2]))
    barrier, inner = threading.Barrier(2, timeout=20), FakeRunner()

    def runner(run):  # both runs must be inside at once, or the barrier breaks
        barrier.wait()
        return inner(run)

    sweep.run_sweep(definition, str(tmp_path / "runs"), parallel=2, runner=runner,
                    echo=lambda _: None)
    assert sorted(inner.calls) == sorted(f"{tmp_path}/runs/demo/learning_rate={lr}"
                                         for lr in ("0.1", "0.2"))


def test_a_workdir_of_another_config_is_refused(tmp_path):
    definition = write_definition(tmp_path / "d.py", [Point({"optimizer.learning_rate": 0.1},
                                                            name="lr")])
    other = write_definition(tmp_path / "e.py", [Point({"optimizer.learning_rate": 0.3},
                                                       name="lr")])
    sweep.run_sweep(definition, str(tmp_path), runner=FakeRunner(), echo=lambda _: None)
    with pytest.raises(SweepError, match=r"demo/lr holds a run with optimizer.learning_rate=0.1, "
                       r"but this sweep sets 0.3"):
        sweep.run_sweep(other, str(tmp_path), runner=FakeRunner(), echo=lambda _: None)


TINY = {"dataset.max_train_examples": 0, "dataset.max_eval_examples": 0,
        "model_init_examples": 64, "training.batch_size": 16, "training.num_steps": 2,
        "eval.batch_size": 16}


def test_a_crashing_subprocess_is_logged_and_reported_failed(tmp_path, cache_dir):
    """A real `python -m cv_jax.main` process (given the flags the sweep checked) that cannot
    find its data."""
    nowhere = tmp_path / "nowhere"
    definition = write_definition(
        tmp_path / "real.py", [Point({"dataset.data_dir": str(nowhere)}, name="no_data")],
        common={"dataset.cache_dir": cache_dir, **TINY})
    outcome = sweep.run_sweep(definition, str(tmp_path / "runs"), echo=lambda _: None)
    bad = f"{tmp_path}/runs/demo/no_data"
    assert outcome.unfinished == [bad]
    log = open(f"{bad}/log.txt").read()
    assert log.startswith(f"$ {sys.executable} -m cv_jax.main --config={SMOKE} --workdir={bad} "
                          f"--config.dataset.cache_dir={cache_dir}")
    assert f"DataError: config.dataset.data_dir='{nowhere}' does not exist" in log
    report = open(outcome.report).read()
    assert f"| {bad} | — | 0 | — | — | — | — | 1 failed |" in report
    assert (f"- `{bad}`: **failed**: cv_jax.data.dataset.DataError: "
            f"config.dataset.data_dir='{nowhere}' does not exist") in report


def definition_variants():
    """``experiments/x.py:variant`` for each sweep definition (other files there are configs of
    other workflows) and each of its VARIANTS."""
    for path in sorted((REPO / "experiments").glob("*.py")):
        if "def get_sweep(" not in path.read_text():
            continue
        spec = importlib.util.spec_from_file_location("definition", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for variant in getattr(module, "VARIANTS", ("",)):
            yield f"experiments/{path.name}" + (f":{variant}" if variant else "")


@pytest.mark.parametrize("spec", list(definition_variants()))
def test_every_experiment_definition_plans(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    outcome = sweep.run_sweep(spec, str(tmp_path), dry_run=True, echo=lambda _: None)
    assert outcome.report is None and outcome.unfinished
    assert not os.listdir(tmp_path)


def test_the_smoke_ablation_is_three_seeds_of_four_points(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    lines = []
    sweep.run_sweep("experiments/ablation_smoke.py", str(tmp_path), dry_run=True,
                    echo=lines.append)
    assert lines[0].startswith("experiments/ablation_smoke.py: 4 points x 3 seeds = 12 runs")
    assert json.dumps(lines).count("--config.seed=2") == 4


# --- points at the LR range test's suggestion (cv_jax.analysis.lr_points) ---

def write_lr_find_definition(path, config=SMOKE, common=None, steps=5):
    """Adam at the range test's LR and SGD at 0.1, seeds 3 and 4."""
    path.write_text(textwrap.dedent(f"""
        from cv_jax.analysis.lr_points import LRFind
        from cv_jax.analysis.sweep_definition import Sweep

        def get_sweep(arg=None):
            return Sweep(name="demo", config={config!r}, common={common or {}!r}, seeds=(3, 4),
                         points=[{{"optimizer.name": "adam",
                                   "optimizer.learning_rate": LRFind(steps={steps})}},
                                 {{"optimizer.name": "sgd", "optimizer.learning_rate": 0.1}}])
    """))
    return str(path)


class FakeFinder:
    """Records range-test commands; writes the suggestion ``lr`` where ``--out`` points."""

    def __init__(self, lr=0.0123, code=0):
        self.commands, self.lr, self.code = [], lr, code

    def __call__(self, command, log_path):
        self.commands.append(list(command))
        out = next(a.split("=", 1)[1] for a in command if a.startswith("--out="))
        if self.code == 0:
            with open(os.path.splitext(out)[0] + ".json", "w") as f:
                json.dump({"suggested_lr": self.lr}, f)
        return self.code


def test_lr_find_points_train_at_the_suggestion_of_one_range_test(tmp_path):
    definition, root = write_lr_find_definition(tmp_path / "lr.py"), str(tmp_path / "runs")
    adam = f"{root}/demo/name=adam,learning_rate=lr_find"
    finder, runner = FakeFinder(), FakeRunner()
    sweep.run_sweep(definition, root, dry_run=True, finder=finder, echo=lambda _: None)
    assert finder.commands == []  # planning runs no test

    sweep.run_sweep(definition, root, runner=runner, finder=finder, echo=lambda _: None)
    assert finder.commands == [[
        sys.executable, "-m", "cv_jax.workflows.lr_find", f"--config={SMOKE}",
        "--config.optimizer.name=adam", "--config.seed=3", "--steps=5", "--min_lr=1e-07",
        "--max_lr=10.0", f"--out={adam}/lr_find.png"]]
    assert sorted(runner.calls) == sorted(
        [f"{adam}/seed=3", f"{adam}/seed=4", f"{root}/demo/name=sgd,learning_rate=0.1/seed=3",
         f"{root}/demo/name=sgd,learning_rate=0.1/seed=4"])
    for seed in (3, 4):
        assert read_results(f"{adam}/seed={seed}")["test_accuracy"] == 0.0123

    again_finder, again = FakeFinder(lr=0.5), FakeRunner()
    sweep.run_sweep(definition, root, runner=again, finder=again_finder, echo=lambda _: None)
    assert again_finder.commands == [] and again.calls == []  # the test and the runs are kept


def test_a_failed_range_test_stops_the_sweep_naming_its_log(tmp_path):
    definition, root = write_lr_find_definition(tmp_path / "lr.py"), str(tmp_path / "runs")
    runner = FakeRunner()
    with pytest.raises(SweepError, match=r"point 'name=adam,learning_rate=lr_find': the LR range "
                       r"test failed \(exit 3\); see .*/lr_find.log"):
        sweep.run_sweep(definition, root, runner=runner, finder=FakeFinder(code=3),
                        echo=lambda _: None)
    assert runner.calls == []


def test_the_range_test_command_runs(tmp_path, tiny_folder, cache_dir):
    """The real ``python -m cv_jax.workflows.lr_find`` process accepts the command and writes its
    suggestion, which the runs then get."""
    common = {"dataset.data_dir": str(tiny_folder), "dataset.cache_dir": cache_dir, **TINY}
    definition = write_lr_find_definition(tmp_path / "lr.py", common=common, steps=3)
    runner = FakeRunner()
    sweep.run_sweep(definition, str(tmp_path / "runs"), runner=runner, echo=lambda _: None)
    folder = tmp_path / "runs" / "demo" / "name=adam,learning_rate=lr_find"
    suggested = json.loads((folder / "lr_find.json").read_text())["suggested_lr"]
    assert 1e-7 <= suggested <= 10 and (folder / "lr_find.png").exists()
    assert read_results(str(folder / "seed=4"))["test_accuracy"] == suggested
