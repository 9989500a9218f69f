"""A run's clock, as CIFAR-10 speed runs (airbench) time a run: it runs during the
data-dependent init (``setup.build_state``) and the training loop, and is paused while a
checkpoint is saved; compilation, the transfer of the training set to the devices and the
model's random init happen while it is stopped. ``results.json``'s ``timed_s`` is its total.
Whoever stops it synchronises with the devices first.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

now = time.perf_counter  # the time source (a test may replace it)


class Clock:
    """Adds up the seconds between each ``start()`` and the following ``stop()``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._since: float | None = None

    @property
    def running(self) -> bool:
        return self._since is not None

    def start(self) -> None:
        if self._since is None:
            self._since = now()

    def stop(self) -> None:
        if self._since is not None:
            self.seconds += now() - self._since
            self._since = None

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        """Runs the clock during the ``with`` block."""
        self.start()
        try:
            yield
        finally:
            self.stop()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leaves the ``with`` block off the clock (it runs on afterwards if it was running)."""
        was_running = self.running
        self.stop()
        try:
            yield
        finally:
            if was_running:
                self.start()
