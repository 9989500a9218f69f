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
    # -> 314 steps = 1.61 epochs.
    assert "195 steps per epoch, 1365 steps (7 epochs)" in text
    assert re.search(r"^\s+0\s+0\.000\s+0\.2$", text, re.M)
    assert re.search(r"^\s+314\s+1\.610\s+1$", text, re.M)
    assert "peak  1 at step 314 (epoch 1.610)" in text
    last = 0.07 + 0.93 * (1365 - 1364) / (1365 - 314)
    final = re.search(r"^final (\S+) at step 1364 \(the last update\)$", text, re.M)
    assert float(final.group(1)) == pytest.approx(last, rel=1e-5)
    assert out.stat().st_size > 1000
    # airbench's groups: the whitening filters and BatchNorm scales frozen, biases at 8x.
    assert re.search(r"^  group1/conv1/kernel and \d+ more: .* LR 0.2 at step 0, max 1, ", text,
                     re.M)
    assert re.search(r"^  group1/norm1/bias and \d+ more: .* LR 1.6 at step 0, max 8, ", text,
                     re.M)
    assert re.search(r"^  group1/norm1/scale and \d+ more: .* LR 0 at step 0, max 0, 0 at ", text,
                     re.M)
