"""Tasks that take jobs from a plain callback, without a new task per job.

The server starts a request's run from the gate's event callback. Starting a task there costs more than the
rest of what the server does for the request (an anyio task is a task, a cancel scope and an event); handing the
job to a worker that waits for one costs an event. :class:`Workers` keeps up to ``idle_limit`` workers waiting;
a job that finds none starts a new one, in the task group.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

Job = Callable[[], Awaitable[None]]


class _Slot:
    """An idle worker: the event that wakes it, and the job it is given."""

    __slots__ = ("event", "job")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.job: Job | None = None


class Workers:
    """Run jobs in ``task_group``: each on an idle worker, else on a new one; at most ``idle_limit`` wait idle.

    A job that raises ends its worker and, as any task in the group, the group. When the group is cancelled, an
    idle worker ends; a job handed to it that had not started does not run."""

    def __init__(self, task_group: anyio.abc.TaskGroup, *, idle_limit: int = 32) -> None:
        if idle_limit < 0:
            raise ValueError(f"idle_limit must not be negative, not {idle_limit}")
        self._tg = task_group
        self._idle: collections.deque[_Slot] = collections.deque()
        self.idle_limit = idle_limit
        #: workers started so far
        self.started = 0

    @property
    def idle(self) -> int:
        """Workers waiting for a job."""
        return len(self._idle)

    def submit(self, job: Job) -> None:
        """Run ``job`` (a plain call: from a callback)."""
        if self._idle:
            slot = self._idle.pop()  # the one that waited least: its stack is warm
            slot.job = job
            slot.event.set()
            return
        self.started += 1
        self._tg.start_soon(self._work, job)

    async def _work(self, job: Job) -> None:
        while True:
            await job()
            if len(self._idle) >= self.idle_limit:
                return
            slot = _Slot()
            self._idle.append(slot)
            try:
                await slot.event.wait()
            finally:
                if slot.job is None:  # cancelled while idle: no job may be handed to it any more
                    self._idle.remove(slot)
            assert slot.job is not None
            job = slot.job
