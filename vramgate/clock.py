"""Injected clocks. Everything that needs the time asks a :class:`Clock`; nothing reads the wall clock itself.

* :class:`MonotonicClock` - real time, in seconds since the clock was created (anyio's monotonic time).
* :class:`ManualClock` - virtual time that moves only when told to; sleepers wake when it passes their deadline.
  Tests, the simulator and replays use it so that runs are deterministic.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Protocol, runtime_checkable

import anyio


@runtime_checkable
class Clock(Protocol):
    """A source of time in seconds, and a way to wait for it to pass."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """Real monotonic time, counted from when the clock was created."""

    def __init__(self) -> None:
        import time

        self._time = time.monotonic
        self._origin = time.monotonic()

    def now(self) -> float:
        return self._time() - self._origin

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


class ManualClock:
    """Virtual time. ``advance``/``set`` move it; ``sleep`` returns once the time reaches the deadline."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._counter = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._counter), event))
        await event.wait()

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleeper whose deadline has come."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        self.set(self._now + seconds)

    def set(self, when: float) -> None:
        """Move time forward to ``when`` and wake every sleeper whose deadline has come."""
        if when < self._now:
            raise ValueError("time cannot go backwards")
        self._now = when
        while self._sleepers and self._sleepers[0][0] <= when:
            _, _, event = heapq.heappop(self._sleepers)
            event.set()

    def next_deadline(self) -> float | None:
        """The earliest deadline any sleeper waits for, or ``None``."""
        return self._sleepers[0][0] if self._sleepers else None
