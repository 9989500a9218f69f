"""The training loop, once: advance a state step by step over the epochs' permutations of the
training set, and after every step let each hook (a periodic action, as in CLU) decide whether
it acts.

What a run does besides stepping (train records, evaluations, checkpoints, stop requests, early
stopping; an LR range test's recording, a timing) is a hook: ``train.train_and_evaluate``,
the vectorised run (``cv_jax.workflows.vectorized``), the LR range test
(``cv_jax.workflows.lr_find``) and the time-budget timing (``train.measure_timings``) each run
this loop with their own hooks.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Program:
    """What the loop runs: the train step over the training set on the devices.

    ``train_step(state, images, labels, permutation, index, teacher) -> (state, metrics)``
    trains on the ``index``-th batch of ``permutation``, ``permute(epoch)`` is that epoch's
    order of the examples."""

    train_step: Callable[..., tuple[Any, Any]]
    images: Any
    labels: Any
    permute: Callable[[int], Any]
    steps_per_epoch: int
    teacher: Any = None  # the distillation teacher (cv_jax.training.distill), or None


@dataclasses.dataclass
class Loop:
    """Where the loop is, as the hooks see it after a step: they may replace ``state`` or set
    ``stop``."""

    step: int  # steps done
    end: int  # the step the loop runs to
    state: Any  # the state after ``step`` steps
    metrics: Any = None  # the last step's metrics (on the devices)
    stop: str = ""  # why the loop ends after this step ('': it goes on)


class Hook(abc.ABC):
    """A periodic action: called after every step, it decides whether it acts at that step."""

    def __call__(self, loop: Loop) -> None:
        if self.due(loop):
            self.act(loop)

    @abc.abstractmethod
    def due(self, loop: Loop) -> bool:
        """Whether it acts after this step."""

    @abc.abstractmethod
    def act(self, loop: Loop) -> None:
        """What it does: may replace ``loop.state`` or set ``loop.stop``."""


class EveryStep(Hook):
    """A hook that acts after every step."""

    def due(self, loop: Loop) -> bool:
        return True


def run(program: Program, state: Any, start: int, end: int, hooks: Sequence[Hook],
        stop: str = "") -> Loop:
    """Advances ``state`` (after ``start`` steps) to step ``end``, or until a hook sets
    ``loop.stop``; ``stop`` given says why the loop does not start. After each step the hooks
    are called in order. Returns where the loop ended."""
    loop = Loop(step=start, end=end, state=state, stop=stop)
    spe, epoch, permutation = program.steps_per_epoch, -1, None
    while loop.step < end and not loop.stop:
        if loop.step // spe != epoch:
            epoch = loop.step // spe
            permutation = program.permute(epoch)
        loop.state, loop.metrics = program.train_step(
            loop.state, program.images, program.labels, permutation, loop.step % spe,
            program.teacher)
        loop.step += 1
        for hook in hooks:
            hook(loop)
    return loop
