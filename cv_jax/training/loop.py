"""The training loop, once: advance a state over the epochs' permutations of the training set,
one step or ``steps_per_call`` steps per call, and after every call let each hook (a periodic
action, as in CLU) decide whether it acts.

What a run does besides stepping (train records, evaluations, checkpoints, stop requests, early
stopping; an LR range test's recording, a timing) is a hook: ``train.train_and_evaluate``,
the vectorised run (``cv_jax.workflows.vectorized``), the LR range test
(``cv_jax.workflows.lr_find``) and the time-budget timing (``train.measure_timings``) each run
this loop with their own hooks.

With ``steps_per_call`` = k > 1, a call of k steps starts at a multiple of k and passes no
step at which a hook may act (``Hook.next_due``) and no epoch's end; elsewhere the loop takes
single steps. So the hooks act at the steps they would with one step per call, and a run
resumed from a checkpoint makes the calls of the run in one go (every multiple of k and every
hook's step ends a call in both).

A call may be wrapped (``run``'s ``around``: the profiler's step annotations,
``cv_jax.training.profiling``); without it the loop calls the step directly.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class Stream(Protocol):
    """Batches streamed to the devices (``cv_jax.training.streamed``): ``batch(step)`` is
    step ``step``'s batch as the train step's data arguments, ``example()`` their shapes."""

    def batch(self, step: int) -> tuple[Any, ...]: ...

    def example(self) -> tuple[Any, ...]: ...


@dataclasses.dataclass(frozen=True)
class Program:
    """What the loop runs: the train step over the training set.

    Resident (``stream`` None): ``train_step(state, images, labels, permutation, index,
    teacher) -> (state, metrics)`` trains on the ``index``-th batch of ``permutation`` of the
    training set on the devices, ``permute(epoch)`` is that epoch's order of the examples.
    With ``steps_per_call`` = k > 1, ``train_steps`` (same arguments) trains on the batches
    ``index`` .. ``index + k - 1`` in one call and returns their metrics stacked on a leading
    axis. Streaming: ``train_step(state, *stream.batch(step), teacher)`` trains on the batch
    the stream gives (one step per call)."""

    train_step: Callable[..., tuple[Any, Any]]
    images: Any
    labels: Any
    permute: Callable[[int], Any] | None
    steps_per_epoch: int
    teacher: Any = None  # the distillation teacher (cv_jax.training.distill), or None
    steps_per_call: int = 1
    train_steps: Callable[..., tuple[Any, Any]] | None = None
    stream: Stream | None = None

    def __post_init__(self):
        if (self.steps_per_call > 1) != (self.train_steps is not None):
            raise ValueError("train_steps is given exactly when steps_per_call > 1")
        if self.stream is not None and self.steps_per_call > 1:
            raise ValueError("a streamed program takes one step per call")

    def data(self, step: int, permutation: Any) -> tuple[Any, ...]:
        """The train step's data arguments at ``step`` (``permutation``: its epoch's order,
        resident only): the one seam between the loop and the two pipelines."""
        if self.stream is not None:
            return self.stream.batch(step)
        return self.images, self.labels, permutation, step % self.steps_per_epoch

    def example_data(self) -> tuple[Any, ...]:
        """Data arguments to compile the train step with, consuming no batch."""
        if self.stream is not None:
            return self.stream.example()
        return self.images, self.labels, self.permute(0), 0


@dataclasses.dataclass
class Loop:
    """Where the loop is, as the hooks see it after a call: they may replace ``state`` or set
    ``stop``."""

    step: int  # steps done
    end: int  # the step the loop runs to
    state: Any  # the state after ``step`` steps
    metrics: Any = None  # the last call's metrics (on the devices): one step's, or stacked
    steps: int = 1  # the last call's steps (> 1: ``metrics`` are stacked on a leading axis)
    stop: str = ""  # why the loop ends after this call ('': it goes on)


class Hook(abc.ABC):
    """A periodic action: called after every call of the train step, it decides whether it
    acts at that step."""

    def __call__(self, loop: Loop) -> None:
        if self.due(loop):
            self.act(loop)

    @abc.abstractmethod
    def due(self, loop: Loop) -> bool:
        """Whether it acts after this call."""

    @abc.abstractmethod
    def act(self, loop: Loop) -> None:
        """What it does: may replace ``loop.state`` or set ``loop.stop``."""

    def next_due(self, loop: Loop) -> int:
        """The first step after ``loop.step`` at which it may act (a call of several steps
        ends there at the latest); by default the next one."""
        return loop.step + 1


class EveryStep(Hook):
    """A hook that acts after every step (the loop then takes one step per call)."""

    def due(self, loop: Loop) -> bool:
        return True


def call_steps(program: Program, loop: Loop, hooks: Sequence[Hook]) -> int:
    """How many steps the next call takes: ``program.steps_per_call`` from a multiple of it
    where no hook may act and no epoch ends before the last of them, else 1."""
    k = program.steps_per_call
    if k == 1 or loop.step % k:
        return 1
    spe = program.steps_per_epoch
    limit = min([loop.end, (loop.step // spe + 1) * spe, *(h.next_due(loop) for h in hooks)])
    return k if loop.step + k <= limit else 1


def run(program: Program, state: Any, start: int, end: int, hooks: Sequence[Hook],
        stop: str = "",
        around: Callable[[Loop], contextlib.AbstractContextManager] | None = None) -> Loop:
    """Advances ``state`` (after ``start`` steps) to step ``end``, or until a hook sets
    ``loop.stop``; ``stop`` given says why the loop does not start. After each call the hooks
    are called in order. Returns where the loop ended.

    ``around(loop)``, given, is entered before each call (``loop.step``: the steps done,
    ``loop.steps``: the call's) and left after it (``loop.state``: the call's new state)."""
    loop = Loop(step=start, end=end, state=state, stop=stop)
    spe, epoch, permutation = program.steps_per_epoch, -1, None
    while loop.step < end and not loop.stop:
        if loop.step // spe != epoch and program.permute is not None:
            epoch = loop.step // spe
            permutation = program.permute(epoch)
        loop.steps = call_steps(program, loop, hooks)
        train = program.train_step if loop.steps == 1 else program.train_steps
        arguments = (*program.data(loop.step, permutation), program.teacher)
        if around is None:
            loop.state, loop.metrics = train(loop.state, *arguments)
        else:
            with around(loop):
                loop.state, loop.metrics = train(loop.state, *arguments)
        loop.step += loop.steps
        for hook in hooks:
            hook(loop)
    return loop
