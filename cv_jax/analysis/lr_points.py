"""Sweep points trained at the learning rate an LR range test suggests
(``cv_jax.workflows.lr_find``).

    "adam": {"optimizer.name": "adam", "optimizer.learning_rate": LRFind()}

Before a sweep's first run, each point holding an :class:`LRFind` value gets one range test:
``python -m cv_jax.workflows.lr_find`` on the point's config (common and point overrides, the
sweep's
first seed), written to ``<point folder>/lr_find.{png,json}`` with its output in
``lr_find.log``. Its suggestion (the LR at the smoothed-loss minimum / 10) becomes the point's
value for every seed. A finished test is reused, so rerunning the sweep trains at the same LR;
the point's folder keeps the name ``learning_rate=lr_find``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from cv_jax.analysis.sweep_definition import (
    CONFIG_ARG,
    SEED,
    Point,
    Sweep,
    SweepError,
    extend_spec,
    flag_value,
    named_points,
)


@dataclasses.dataclass(frozen=True)
class LRFind:
    """A point's value to be replaced by the range test's suggested learning rate; the
    fields are ``cv_jax.workflows.lr_find``'s flags (fastai's defaults)."""

    steps: int = 100
    min_lr: float = 1e-7
    max_lr: float = 10.0

    def __str__(self) -> str:  # the point's folder name reads learning_rate=lr_find
        return "lr_find"


Finder = Callable[[Sequence[str], str], int]  # (command, log path) -> exit code


def subprocess_finder(command: Sequence[str], log_path: str) -> int:
    """Runs a range test's command with its output in ``log_path``; the exit code."""
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        return subprocess.run(list(command), stdout=log, stderr=subprocess.STDOUT).returncode


def needs_range_tests(sweep: Sweep) -> bool:
    """Whether any point of ``sweep`` takes its learning rate from a range test."""
    return any(isinstance(v, LRFind) for p in named_points(sweep) for v in p.overrides.values())


def range_test_command(sweep: Sweep, point: Point, key: str, test: LRFind,
                       folder: str) -> list[str]:
    """The ``cv_jax.workflows.lr_find`` command of ``point`` (its ``key`` holds ``test``)."""
    overrides = {**sweep.common, **point.overrides}
    spec = extend_spec(sweep.config, str(overrides.pop(CONFIG_ARG, "")))
    overrides.pop(key)
    if sweep.seeds:
        overrides[SEED] = sweep.seeds[0]
    return [sys.executable, "-m", "cv_jax.workflows.lr_find", f"--config={spec}",
            *(f"--config.{k}={flag_value(v)}" for k, v in overrides.items()),
            f"--steps={test.steps}", f"--min_lr={test.min_lr!r}", f"--max_lr={test.max_lr!r}",
            f"--out={os.path.join(folder, 'lr_find.png')}"]


def suggested_lr(folder: str) -> float | None:
    """The suggestion of the finished range test in ``folder`` (None: none there)."""
    path = os.path.join(folder, "lr_find.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return float(json.load(f)["suggested_lr"])


def resolve(sweep: Sweep, root: str, run_tests: bool, finder: Finder = subprocess_finder,
            echo: Callable[[str], None] = print) -> Sweep:
    """``sweep`` with each :class:`LRFind` value replaced by its point's suggested LR.

    A test already in the point's folder is reused; otherwise it runs when ``run_tests``, and
    without ``run_tests`` (planning, dry runs) the test's ``min_lr`` stands in. Points keep
    their folder names. Raises SweepError, naming the log, when a test fails.
    """
    points = []
    for point in named_points(sweep):
        overrides: dict[str, Any] = dict(point.overrides)
        folder = os.path.join(root, sweep.name, point.name)
        for key, value in point.overrides.items():
            if not isinstance(value, LRFind):
                continue
            lr = suggested_lr(folder)
            if lr is None and run_tests:
                os.makedirs(folder, exist_ok=True)
                log_path = os.path.join(folder, "lr_find.log")
                echo(f"LR range test: {folder} ({value.steps} steps, {value.min_lr:g} to "
                     f"{value.max_lr:g})")
                code = finder(range_test_command(sweep, point, key, value, folder), log_path)
                lr = suggested_lr(folder)
                if code != 0 or lr is None:
                    raise SweepError(f"point {point.name!r}: the LR range test failed (exit "
                                     f"{code}); see {log_path}")
                echo(f"  suggested {key}={lr:.3g}")
            if lr is None:
                echo(f"LR range test to run: {folder} (planned with {key}={value.min_lr:g} "
                     "until then)")
            overrides[key] = value.min_lr if lr is None else lr
        points.append(dataclasses.replace(point, overrides=overrides))
    return dataclasses.replace(sweep, points=points)
