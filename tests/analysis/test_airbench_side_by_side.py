"""experiments/airbench94/side_by_side.py: reading both systems' results into one table."""

import importlib.util
import json

import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location(
    "side_by_side", REPO / "experiments" / "airbench94" / "side_by_side.py")
side_by_side = importlib.util.module_from_spec(spec)
spec.loader.exec_module(side_by_side)

HEAD = ("|  run     |  epoch  |  train_loss  |  train_acc  |  val_acc  |  tta_val_acc  |  "
        "total_time_seconds  |")


def airbench_log(val_acc: float, tta: float | None, seconds: float) -> str:
    rows = [HEAD, "|       0  |      0  |      1.5039  |     0.6426  |   0.6144  |               |"
                  "            232.2927  |",
            f"|          |      9  |      0.8000  |     0.9000  |   {val_acc:.4f}  |           "
            f"    |           {seconds - 10:.4f}  |"]
    if tta is not None:
        rows.append(f"|          |   eval  |      0.8000  |     0.9000  |   {val_acc:.4f}  |     "
                    f"{tta:.4f}  |           {seconds:.4f}  |")
    return "\n".join(rows) + "\n"


def test_report_reads_both_sides_and_skips_unfinished_runs(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "logs_seed0.txt").write_text(airbench_log(0.8982, 0.9036, 2115.0))
    (logs / "logs_seed1.txt").write_text(airbench_log(0.8990, 0.9040, 2000.0))
    (logs / "logs_seed2.txt").write_text(airbench_log(0.8990, None, 2000.0))  # still running
    for seed, acc in ((0, 0.9050), (1, 0.9010)):
        run = tmp_path / "runs" / f"seed_{seed}"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps(
            {"test_accuracy": acc, "train_time_s": 2437.12, "steps": 476}))
    (tmp_path / "runs" / "seed_0" / side_by_side.NO_TTA_FILE).write_text(json.dumps(
        {"accuracy": 0.8986, "correct": 4493, "examples": 5000, "checkpoint_step": 476}))
    assert side_by_side.airbench_result(str(logs / "logs_seed0.txt")) == {
        "test_accuracy": 0.9036, "no_tta_accuracy": 0.8982, "seconds": 2115.0}
    with pytest.raises(ValueError, match="no final 'eval' row"):
        side_by_side.airbench_result(str(logs / "logs_seed2.txt"))
    table = side_by_side.report(str(tmp_path / "runs"), str(logs))
    assert "| cv_jax headline | 0 | 90.50% | 89.86% | 2437 | 200 |" in table  # 476*1024/2437.12
    assert "| cv_jax headline | 1 | 90.10% |  | 2437 | 200 |" in table  # not evaluated
    assert "| airbench94 | 1 | 90.40% | 89.90% | 2000 | 244 |" in table
    assert "| airbench94 | 2 |" not in table
    assert "- airbench94: 90.38% ± 0.03% (n=2, standard error 0.02%)" in table
    assert "- cv_jax headline: 90.30% ± 0.28% (n=2, standard error 0.20%)" in table
    assert "  - without TTA: 89.86% (n=1); TTA adds +0.64% on average" in table
    assert ("  - without TTA: 89.86% ± 0.06% (n=2, standard error 0.04%); TTA adds +0.52% on "
            "average") in table  # airbench94: 89.82%, 89.90%; gains 0.54%, 0.50%
    assert ("- difference of the means (cv_jax - airbench94): -0.08%; airbench94's standard "
            "error 0.02%, the difference's 0.20%: short by more than airbench94's standard "
            "error") in table


def test_the_verdict_follows_the_issues_criterion():
    tie = side_by_side._difference([0.905, 0.907], [0.903, 0.911])  # -0.10%; SE 0.40% and 0.10%
    assert tie.endswith("-0.10%; airbench94's standard error 0.40%, the difference's 0.41%: "
                        "a tie (short by less than airbench94's standard error)")
    assert side_by_side._difference([0.91, 0.912], [0.903, 0.911]).endswith(
        "at or above airbench94's mean")


def test_the_evaluation_without_tta_is_the_runs_final_weights_on_one_view(
        trained_run, tiny_folder, tmp_path):
    import shutil

    from cv_jax.tools.evaluate import evaluate_run

    workdir = str(tmp_path / "seed_0")
    shutil.copytree(trained_run[0], workdir)
    written = side_by_side.evaluate_without_tta(workdir, str(tiny_folder))
    plain = evaluate_run(workdir, str(tiny_folder), tta_flip=False, tta_translate=0)
    assert written == {"accuracy": plain["accuracy"], "correct": plain["correct"],
                       "examples": 36, "checkpoint_step": 12}
    assert json.loads((tmp_path / "seed_0" / side_by_side.NO_TTA_FILE).read_text()) == written
    assert side_by_side.cv_jax_result(workdir)["no_tta_accuracy"] == plain["accuracy"]
