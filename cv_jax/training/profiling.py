"""Tracing a run's train steps with the JAX profiler (``training.profile_steps``).

``training.profile_steps=(start, count)`` traces the calls of the train step that take steps
``start`` .. ``start + count - 1`` into ``workdir/profile/`` (steps numbered as metrics.jsonl
and the checkpoints number them: the first step is 1; every step runs compiled, the train
step being compiled ahead of the loop). The trace holds

* one step event ``train`` per call (``jax.profiler.StepTraceAnnotation``, ``step_num`` = the
  call's first step). With ``training.steps_per_call`` = k a call takes up to k steps and is
  one event (with ``steps=k``): the trace covers the calls that take any of the steps, so it
  may begin before ``start`` or end after its last step, and the log says which steps it holds;
* the named scopes of the compiled step (``jax.named_scope``, in the names of its ops):
  ``data`` (the batch gathered from the epoch's permutation, augmentation, normalisation,
  mixup, input noise), ``teacher`` (a distillation teacher's logits), ``forward_backward``
  (the loss and its gradients), ``update`` (the optimizer, Lookahead, EMA, a skipped step);
  an evaluation's ops are under ``eval``.

The host marks a call where it dispatches it; the devices run it after (dispatch is
asynchronous), and the trace ends once the last traced call has finished on the devices.
Only process 0 traces (its own devices).

Off (the default), nothing of this runs per step: the loop calls the step directly
(``cv_jax.training.loop.run`` without ``around``), and the named scopes only name the ops of
the compiled program (at trace time), which runs the same operations either way.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os

import jax
import ml_collections as mlc

from cv_jax.config import ConfigError
from cv_jax.training.loop import Loop

log = logging.getLogger("cv_jax")

PROFILE_DIR = "profile"  # in the workdir


def profile_window(config: mlc.ConfigDict, total_steps: int) -> tuple[int, int] | None:
    """The first and last step ``training.profile_steps`` traces in a run of ``total_steps``
    (its last step clamped to the run's), or None when it is off. A start after the run's last
    step is a ConfigError (the schema checks the rest)."""
    steps = tuple(config.training.profile_steps)
    if not steps:
        return None
    start, count = steps
    if start > total_steps:
        raise ConfigError(
            f"config.training.profile_steps=({start}, {count}) starts after the run's last "
            f"step ({total_steps}): use a start in 1..{total_steps}")
    return start, min(start + count - 1, total_steps)


class StepProfiler:
    """The ``around`` of the training loop (``cv_jax.training.loop.run``) that traces the calls
    taking any of the steps ``first`` .. ``last`` into ``directory``: it starts the trace
    before the first of them, annotates each, and after the last waits for the devices and
    stops the trace. Calls outside the window get a no-op context (made once)."""

    def __init__(self, directory: str, first: int, last: int):
        self.directory, self.first, self.last = directory, first, last
        self.tracing = False
        self.calls: list[tuple[int, int]] = []  # each traced call's first step and steps
        self.files: list[str] = []  # what the trace wrote, once it stopped
        self.idle = contextlib.nullcontext()

    @classmethod
    def from_config(cls, config: mlc.ConfigDict, workdir: str,
                    total_steps: int) -> StepProfiler | None:
        """The profiler of ``training.profile_steps`` for a run of ``total_steps`` in
        ``workdir``; None when it is off, or in a process other than 0."""
        window = profile_window(config, total_steps)
        if window is None or jax.process_index() != 0:
            return None
        return cls(os.path.join(workdir, PROFILE_DIR), *window)

    def __call__(self, loop: Loop) -> contextlib.AbstractContextManager:
        if loop.step + loop.steps < self.first or loop.step >= self.last:
            return self.idle
        return self.traced(loop)

    @contextlib.contextmanager
    def traced(self, loop: Loop):
        if not self.tracing:
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            self.tracing = True
        first, steps = loop.step + 1, loop.steps
        extra = {"steps": steps} if steps > 1 else {}
        with jax.profiler.StepTraceAnnotation("train", step_num=first, **extra):
            yield
        self.calls.append((first, steps))
        if first + steps - 1 >= self.last:
            jax.block_until_ready(loop.state)  # the call's new state: its steps are done
            self.stop()

    def close(self) -> None:
        """Stops a trace that a loop ending early left running."""
        if self.tracing:
            self.stop()

    def stop(self) -> None:
        jax.profiler.stop_trace()
        self.tracing = False
        runs = sorted(glob.glob(os.path.join(self.directory, "plugins", "profile", "*")),
                      key=os.path.getmtime)
        self.files = sorted(glob.glob(os.path.join(runs[-1], "*"))) if runs else []
        log.info("%s", self.describe())

    def describe(self) -> str:
        """Which steps the trace holds, where it is and how to open it."""
        if self.calls:
            first, last = self.calls[0][0], self.calls[-1][0] + self.calls[-1][1] - 1
            calls = (f" in {len(self.calls)} calls"
                     if any(steps > 1 for _, steps in self.calls) else "")
            what = f"train steps {first}-{last}{calls}"
        else:
            what = f"train step {self.first}, which did not finish"
        xplane = [f for f in self.files if f.endswith(".xplane.pb")]
        perfetto = [f for f in self.files if f.endswith("perfetto_trace.json.gz")]
        where = xplane[0] if xplane else self.directory
        text = (f"Profiled {what}: {where}. View it with "
                f"`xprof --port 8791 {self.directory}` (pip install xprof; then open "
                f"http://localhost:8791, Trace Viewer) or `tensorboard --logdir "
                f"{self.directory}` (pip install tensorboard tensorboard-plugin-profile; the "
                "Profile tab)")
        if perfetto:
            text += f", or open {perfetto[0]} in https://ui.perfetto.dev"
        return text + "."
