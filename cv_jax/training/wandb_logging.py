"""Weights & Biases (``logging.wandb=True``; the optional extra ``cv_jax[wandb]``).

A run sends W&B what metrics.jsonl gets (each train record and evaluation, as
``<split>/<metric>`` at its step), its config, and once finished its results as the W&B
run's summary. The W&B run's id is kept in ``workdir/wandb_id.txt``: a run resumed from its
workdir resumes that W&B run. W&B keeps its local files in ``workdir/wandb/`` (or
``$WANDB_DIR``); with ``logging.mode='offline'`` (or ``WANDB_MODE=offline``) nothing leaves the
machine, and ``wandb sync`` uploads the run later. Only process 0 talks to W&B.

A resumed run logs again the records after its checkpoint; those W&B already holds (steps
before the resumed W&B run's starting step, which W&B would refuse) are not sent again. An
offline W&B run does not know the steps it holds elsewhere, so it sends them all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import string
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections as mlc

from cv_jax.config import ConfigError

log = logging.getLogger("cv_jax")

INSTALL = "pip install 'cv_jax[wandb]'"
ID_FILE = "wandb_id.txt"  # in the workdir


def require(config: mlc.ConfigDict) -> Any:
    """The ``wandb`` module when ``logging.wandb`` is on, else None; a ConfigError naming
    the extra to install when the package is not installed."""
    if not config.logging.wandb:
        return None
    try:
        import wandb
    except ImportError as e:
        raise ConfigError(f"config.logging.wandb=True needs the wandb package, which is not "
                          f"installed: {INSTALL}") from e
    return wandb


def run_id(workdir: str) -> str:
    """The W&B run id of the run in ``workdir``: the one kept in ``workdir/wandb_id.txt``, or
    a new one (8 lowercase letters and digits, as W&B makes them), kept there."""
    path = os.path.join(workdir, ID_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    alphabet = string.ascii_lowercase + string.digits
    new = "".join(secrets.choice(alphabet) for _ in range(8))
    with open(path + ".tmp", "w") as f:
        f.write(new + "\n")
    os.replace(path + ".tmp", path)
    return new


class WandbRun:
    """A W&B run that a training run reports to."""

    def __init__(self, run: Any):
        self.run = run
        self.starting_step = int(getattr(run, "starting_step", 0) or 0)

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        """One record of metrics.jsonl (``MetricWriter.write``'s arguments)."""
        if step < self.starting_step:  # W&B holds it already (a resumed run)
            return
        self.run.log({f"{split}/{name}": value for name, value in metrics.items()}, step=step)

    def summarize(self, results: dict) -> None:
        """A finished run's results (results.json) as the W&B run's summary."""
        self.run.summary.update({k: v for k, v in results.items()
                                 if isinstance(v, (bool, int, float, str))})


@contextlib.contextmanager
def tracking(wandb: Any, config: mlc.ConfigDict, workdir: str) -> Iterator[WandbRun | None]:
    """The W&B run of a training run while it trains (``wandb``: :func:`require`'s module;
    None, or a process other than 0: no W&B run), finished when the block ends: failed when it
    raises."""
    if wandb is None or jax.process_index() != 0:
        yield None
        return
    cfg = config.logging
    run = wandb.init(
        id=run_id(workdir), resume="allow",
        project=cfg.project or None, entity=cfg.entity or None,
        name=cfg.name or os.path.basename(os.path.abspath(workdir)),
        tags=list(cfg.tags) or None, mode=cfg.mode or None,
        config=json.loads(config.to_json_best_effort()),
        dir=os.environ.get("WANDB_DIR") or workdir)  # read here: W&B reads it once a process
    log.info("Weights & Biases run %s (%s): %s", run.id, run.settings.mode,
             run.url or run.dir)
    failed = True
    try:
        yield WandbRun(run)
        failed = False
    finally:
        run.finish(exit_code=1 if failed else 0)
