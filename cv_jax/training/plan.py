"""How long a run is, in steps: its steps per epoch, total steps, evaluation and checkpoint
steps."""

from __future__ import annotations

import dataclasses
import math

import ml_collections as mlc

from cv_jax.config import ConfigError


@dataclasses.dataclass
class Plan:
    """How long the run is, in steps."""

    steps_per_epoch: int
    total_steps: int
    eval_every_steps: int
    checkpoint_every_steps: int = 0  # between evaluations; 0 = only at evaluations

    @classmethod
    def from_config(cls, config: mlc.ConfigDict, num_train: int) -> Plan:
        t = config.training
        spe = num_train // t.batch_size
        if spe == 0:
            raise ConfigError(
                f"config.training.batch_size={t.batch_size} is larger than the training set "
                f"({num_train} examples); lower it"
            )
        total = t.num_steps or math.ceil(t.num_epochs * spe)
        return cls(spe, total, max(1, round(t.eval_every_epochs * spe)), t.checkpoint_every_steps)

    def is_eval_step(self, step: int) -> bool:
        return step % self.eval_every_steps == 0 or step == self.total_steps

    def is_checkpoint_step(self, step: int) -> bool:
        every = self.checkpoint_every_steps
        return self.is_eval_step(step) or bool(every and step % every == 0)

    def next_eval_step(self, step: int) -> int:
        """The first evaluation step after ``step`` (past the end: the next multiple)."""
        following = next_multiple(step, self.eval_every_steps)
        return min(following, self.total_steps) if step < self.total_steps else following

    def next_checkpoint_step(self, step: int) -> int:
        """The first checkpoint step after ``step``."""
        every = self.checkpoint_every_steps
        following = self.next_eval_step(step)
        return min(following, next_multiple(step, every)) if every else following


def next_multiple(step: int, every: int) -> int:
    """The first multiple of ``every`` after ``step``."""
    return (step // every + 1) * every
