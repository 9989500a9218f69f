"""Stop requests for the training loop: SIGTERM or SIGINT end a run after the call of the train
step in progress (one step, or ``training.steps_per_call``), with a checkpoint, instead of
killing it mid-step.

In a single process the first signal sets a flag and puts the previous handlers back, so a
second one acts as usual (Ctrl-C twice interrupts at once). In a multi-process run the
handlers are left to JAX's preemption service (started by ``jax.distributed.initialize``),
and every process stops at the step that service agrees on.
"""

from __future__ import annotations

import logging
import signal
import threading

import jax
from jax.experimental import multihost_utils

log = logging.getLogger("cv_jax")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """``install()`` before the training loop, ``requested(step)`` after each step,
    ``uninstall()`` after the loop."""

    def __init__(self):
        self.reason: str | None = None  # e.g. 'SIGTERM', once a stop is requested
        self._previous: dict[int, object] = {}
        self._checks = 0  # calls of requested(): the same sequence on every process

    def install(self) -> None:
        """Catches SIGTERM and SIGINT (single process, main thread only)."""
        single = jax.process_count() == 1
        if single and threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}

    def _handle(self, signum: int, frame) -> None:
        self.reason = signal.Signals(signum).name
        log.warning("Received %s: stopping after this step with a checkpoint (send it again "
                    "to stop at once).", self.reason)
        self.uninstall()

    def uninstall(self) -> None:
        """Puts back the handlers ``install`` replaced."""
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def requested(self, step: int) -> bool:
        """Whether the run should save a checkpoint at ``step`` and stop. Every process asks
        after each call of the train step; the preemption service counts the calls (a call of
        several steps would skip the step it agrees on, which must be met exactly)."""
        self._checks += 1
        if self.reason is None and jax.process_count() > 1:
            try:
                if multihost_utils.reached_preemption_sync_point(self._checks):
                    self.reason = "a preemption notice"
            except RuntimeError:  # the preemption service is off
                pass
        return self.reason is not None
