"""The two primitives on the runtime's hot path (a checkpoint, an event), bound once to the running loop's own.

anyio's ``checkpoint()`` and ``Event()`` look the running backend up on every call; the runtime posts hundreds of
thousands of messages a second, so it binds the backend's own primitives when its system starts: for asyncio
``asyncio.sleep(0)`` and ``asyncio.Event`` (what anyio's asyncio backend uses), for trio
``trio.lowlevel.checkpoint`` and ``trio.Event``, anyio's for anything else. Cancellation still comes from anyio's
cancel scopes, which act on the task whatever it awaits.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

import anyio
import anyio.lowlevel


class Event(Protocol):
    """An event as the runtime uses one: set once, waited on by one task."""

    def set(self) -> object: ...

    def is_set(self) -> bool: ...

    def wait(self) -> Awaitable[object]: ...


class Primitives(NamedTuple):
    checkpoint: Callable[[], Awaitable[object]]
    event: Callable[[], Event]


ANYIO = Primitives(anyio.lowlevel.checkpoint, anyio.Event)


def current() -> Primitives:
    """The primitives of the event loop running this task."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return Primitives(functools.partial(asyncio.sleep, 0), asyncio.Event)
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return Primitives(trio.lowlevel.checkpoint, trio.Event)
    return ANYIO
