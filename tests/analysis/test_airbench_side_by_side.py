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
    assert side_by_side.airbench_result(str(logs / "logs_seed0.txt")) == {
        "test_accuracy": 0.9036, "no_tta_accuracy": 0.8982, "seconds": 2115.0}
    with pytest.raises(ValueError, match="no final 'eval' row"):
        side_by_side.airbench_result(str(logs / "logs_seed2.txt"))
    table = side_by_side.report(str(tmp_path / "runs"), str(logs))
    assert "| cv_jax headline | 0 | 90.50% | 2437 | 200 |" in table  # 476 * 1024 / 2437.12
    assert "| airbench94 | 1 | 90.40% | 2000 | 244 |" in table
    assert "| airbench94 | 2 |" not in table
    assert "- airbench94: 90.38% ± 0.03% (n=2, standard error 0.02%)" in table
    assert "- cv_jax headline: 90.30% ± 0.28% (n=2, standard error 0.20%)" in table
    assert ("- difference of the means (cv_jax - airbench94): -0.08%; airbench94's standard "
            "error 0.02%, the difference's 0.20%: short by more than airbench94's standard "
            "error") in table


def test_the_verdict_follows_the_issues_criterion():
    tie = side_by_side._difference([0.905, 0.907], [0.903, 0.911])  # -0.10%; SE 0.40% and 0.10%
    assert tie.endswith("-0.10%; airbench94's standard error 0.40%, the difference's 0.41%: "
                        "a tie (short by less than airbench94's standard error)")
    assert side_by_side._difference([0.91, 0.912], [0.903, 0.911]).endswith(
        "at or above airbench94's mean")
