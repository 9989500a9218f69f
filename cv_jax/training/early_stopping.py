"""Early stopping on an eval metric, with Keras' EarlyStopping semantics.

After each scheduled evaluation, the monitored value improves when it beats the best so far
by more than ``min_delta`` (``value - min_delta > best`` for 'max', ``value + min_delta <
best`` for 'min'); otherwise ``wait`` grows, and training stops once ``wait >= patience``.
Evaluations before ``start_epoch`` are ignored. The tracker is rebuilt on resume by replaying
the run's logged eval metrics, so a resumed run stops at the same step as an unbroken one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import ml_collections as mlc

from cv_jax.training import checkpoint, curves


@dataclasses.dataclass
class EarlyStopping:
    monitor: str
    mode: str  # 'max' or 'min'
    patience: int
    min_delta: float = 0.0
    start_step: int = 0
    best: float = math.nan
    best_step: int | None = None
    wait: int = 0

    @classmethod
    def from_config(cls, config: mlc.ConfigDict, steps_per_epoch: int) -> EarlyStopping | None:
        """The tracker of ``config.early_stopping``, or None when ``patience`` is 0 (off)."""
        cfg = config.early_stopping
        if cfg.patience == 0:
            return None
        monitor, mode = checkpoint.selection(config)
        return cls(monitor, mode, cfg.patience, cfg.min_delta,
                   start_step=round(cfg.start_epoch * steps_per_epoch))

    def improved(self, value: float) -> bool:
        if math.isnan(self.best):
            return True
        if self.mode == "max":
            return value - self.min_delta > self.best
        return value + self.min_delta < self.best

    def update(self, step: int, metrics: dict) -> bool:
        """Takes the eval metrics of ``step``; returns True when training should stop."""
        if step < self.start_step:
            return False
        if self.monitor not in metrics:
            choices = sorted(k for k in metrics if k.endswith(("accuracy", "loss")))
            raise KeyError(f"config.early_stopping.monitor={self.monitor!r} is not an eval metric "
                           f"of this run; choose one of {choices}")
        value = float(metrics[self.monitor])
        if self.improved(value):
            self.best, self.best_step, self.wait = value, step, 0
            return False
        self.wait += 1
        return self.wait >= self.patience

    def replay(self, workdir: str, up_to_step: int, is_eval_step: Callable[[int], bool]) -> bool:
        """Feeds the eval metrics logged in ``workdir`` up to ``up_to_step`` (a restored
        checkpoint); returns True if they already called for a stop."""
        stop = False
        for step, metrics in eval_metrics_by_step(curves.read_metrics(workdir, up_to_step)):
            if is_eval_step(step):
                stop = self.update(step, metrics)
        return stop


def eval_metrics_by_step(records: Iterable[dict]) -> list[tuple[int, dict]]:
    """Logged records -> ``[(step, {'<split>_<metric>': value})]`` of the eval splits, the
    same flat names the training loop uses."""
    by_step: dict[int, dict] = {}
    for record in records:
        if record["split"] == "train":
            continue
        flat = {f"{record['split']}_{k}": v for k, v in record.items()
                if k not in ("step", "split")}
        by_step.setdefault(record["step"], {}).update(flat)
    return sorted(by_step.items())
