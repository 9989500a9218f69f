"""benchmarks/gpu_check.py dry-run on the CPU: every part runs at tiny sizes and the results
file holds what a GPU check reports."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import pytest
from conftest import REPO


@pytest.mark.slow
def test_gpu_check_dry_run_writes_one_results_file(tmp_path):
    out = tmp_path / "check" / "gpu_check.json"
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0",
           "JAX_PLATFORMS": "cpu"}
    # --minutes that are spent before the speed run: the warm-up and one seed still run
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry_run",
                    f"--out={out}", "--minutes=0.01"], check=True, env=env, cwd=tmp_path)
    results = json.loads(out.read_text())
    assert results["errors"] == {} and results["dry_run"]
    assert results["device"] == {"kind": "cpu", "platform": "cpu", "count": 1}
    assert results["versions"]["jax"] == jax.__version__ and results["date"][:2] == "20"
    assert {"bench", "vectorized", "speedrun", "total"} <= set(results["seconds"])

    run = results["speedrun"]
    assert run["warmup"] and run["seeds"] == [0] and run["accuracy"]["n"] == 1
    (seed,) = run["runs"]
    assert seed["seed"] == 0 and 0 <= seed["test_accuracy"] <= 1 and seed["timed_s"] > 0
    assert run["timed_s"]["mean"] == seed["timed_s"]

    bench = results["bench"]
    has_torch = importlib.util.find_spec("torch") is not None
    assert [r["framework"] for r in bench["rows"]] == ["cv_jax"] + ["pytorch"] * has_torch
    assert bench["model"] == "lenet5" and all(r["images_per_sec"] > 0 for r in bench["rows"])
    assert (bench["ratio"] is not None) == has_torch

    vectorized = results["vectorized"]["rows"]
    assert [(r["mode"], r["members"]) for r in vectorized] == [("plain", 1), ("vmap", 2)]
    assert vectorized[0]["vs_plain"] == 1 and vectorized[1]["images_per_sec_total"] > 0

    markdown = out.with_suffix(".md").read_text()
    assert "## (a) Speed run: smoke recipe" in markdown and "## (c) Seeds" in markdown
    assert "## (b) lenet5 train step" in markdown and "failed" not in markdown
