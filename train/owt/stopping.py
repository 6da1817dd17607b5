"""What ends a run early or on time: a signal (SIGINT/SIGTERM, finishing the step first) and
the wall clock of --max_time, both agreed over the ranks so every rank stops at the same step."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from owt import distributed
from owt.checkpointing import Progress, abandon_saves
from owt.distributed import World


class StopRequested(Exception):
    """Raised inside the loop after a SIGINT/SIGTERM, once the current step is complete."""


class GracefulStop:
    """While installed: the first SIGINT/SIGTERM asks the loop to finish its step, save and
    exit; a second one exits at once. `uninstall` puts the previous handlers back."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            abandon_saves()  # saves are atomic: the files they were replacing stay valid
            os._exit(128 + signum)
        self.signum = signum
        # os.write, not print: a handler that prints can re-enter a write in progress.
        name = signal.Signals(signum).name
        notice = f"\n{name}: finishing this step and saving; press Ctrl-C again to quit at once.\n"
        os.write(2, notice.encode())


class Clock:
    """Training time for --max_time, kept in `progress.elapsed_seconds` so a resumed run goes
    on with the same budget. Under torchrun all ranks use the slowest rank's time, so they
    agree on the learning rate and stop at the same step."""

    def __init__(self, max_time: float, world: World) -> None:
        self.max_time, self.world = max_time, world
        self.base, self.started = 0.0, time.perf_counter()

    def start(self, progress: Progress) -> None:
        self.base, self.started = progress.elapsed_seconds, time.perf_counter()

    def tick(self, progress: Progress) -> None:
        elapsed = self.base + time.perf_counter() - self.started
        if self.max_time:
            elapsed = distributed.max_over_ranks(elapsed, self.world)
        progress.elapsed_seconds = elapsed

    def left(self, progress: Progress) -> float | None:
        """Seconds of the time budget left (None without one)."""
        return max(0.0, self.max_time - progress.elapsed_seconds) if self.max_time else None
