"""python -m cv_jax.tools.schedules: a config's learning rate printed and plotted, per
parameter group, without training."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO


def test_schedules_cli_prints_and_plots_a_config(tmp_path):
    out = tmp_path / "lr.png"
    proc = subprocess.run(
        [sys.executable, "-m", "cv_jax.tools.schedules", "--config=configs/cifar10.py:cpu",
         f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    # 50000 / 256 = 195 steps per epoch; 7 epochs = 1365 steps; warmup 0.23 x 1365 = 313.95
    # -> 313 steps (rounded down, as airbench) = 1.605 epochs; airbench's peak LR at batch 256:
    # 11.5 * 256 / (1024 * (1 + 1 / 0.15)) = 0.375.
    assert "195 steps per epoch, 1365 steps (7 epochs)" in text
    assert re.search(r"^\s+0\s+0\.000\s+0\.075$", text, re.M)
    assert re.search(r"^\s+313\s+1\.605\s+0\.375$", text, re.M)
    assert "peak  0.375 at step 313 (epoch 1.605)" in text
    last = 0.375 * (0.07 + 0.93 * (1365 - 1364) / (1365 - 313))
    final = re.search(r"^final (\S+) at step 1364 \(the last update\)$", text, re.M)
    assert float(final.group(1)) == pytest.approx(last, rel=1e-5)
    assert out.stat().st_size > 1000
    # airbench's groups: the whitening filters and BatchNorm scales frozen, BatchNorm biases at
    # 64x, the whitening bias trained for 3 epochs.
    assert re.search(r"^  group1/conv1/kernel and \d+ more: .* LR 0.075 at step 0, max 0.375, ",
                     text, re.M)
    assert re.search(r"^  group1/norm1/bias and \d+ more: .* LR 4.8 at step 0, max 24, ", text,
                     re.M)
    assert re.search(r"^  whiten/bias: .* LR 0.075 at step 0, max 0.375, 0 at step 1364", text,
                     re.M)
    assert re.search(r"^  group1/norm1/scale and \d+ more: .* LR 0 at step 0, max 0, 0 at ", text,
                     re.M)
