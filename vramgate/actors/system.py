"""The actor system: one task group that runs every actor, in order, and stops them in reverse."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from vramgate._version import __version__
from vramgate.actors._backend import Primitives, current
from vramgate.actors._cell import ActorFactory, Cell
from vramgate.actors._post import Mailbox, Post
from vramgate.actors.actor import Actor
from vramgate.actors.envelope import ActorStatistics, DeadLetter, RestartPolicy, SystemStatistics
from vramgate.actors.recorder import Recorder
from vramgate.actors.ref import ActorRef
from vramgate.clock import Clock, MonotonicClock
from vramgate.errors import ActorStopped
from vramgate.messages import LogHeader
from vramgate.messages.log import CoreSpec

log = logging.getLogger("vramgate.actors")


class UnknownActor(ActorStopped, LookupError):
    """No actor of that name was spawned in this system."""


class ActorSystem:
    """Runs actors in one task group.

    ``spawn`` actors (before or after starting), then ``async with system:``. Actors start in spawn order and
    stop in reverse. Leaving the block normally is a graceful :meth:`stop` (every mailbox is drained first);
    an exception or a cancellation of the enclosing scope stops every actor at once. An actor that crashes
    more often than its :class:`RestartPolicy` allows stops the system with
    :class:`~vramgate.errors.ActorCrashed`, which ``async with`` raises. Asks still pending when their actor or
    the system stops fail with :class:`~vramgate.errors.ActorStopped`.

    ``clock`` stamps every envelope (default: :class:`~vramgate.clock.MonotonicClock`); ``recorder`` gets
    every message sent, for replay. ``note`` and ``config`` go into the recorded :class:`LogHeader`.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        recorder: Recorder | None = None,
        dead_letter_capacity: int = 1000,
        note: str = "",
        config: dict[str, Any] | None = None,
    ) -> None:
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self._recorder = recorder
        self._note = note
        self._config = dict(config or {})
        self._cells: dict[str, Cell] = {}
        self._order: list[Cell] = []
        self._post = Post(
            self.clock.now, recorder, mailbox_of=self._mailbox_of, dead_letter_capacity=dead_letter_capacity
        )
        self._tg: TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self._state = "new"

    # ------------------------------------------------------------------ public API

    def spawn(
        self,
        actor: Actor[Any] | ActorFactory,
        *,
        name: str,
        mailbox_size: int = 1024,
        supervision: RestartPolicy | None = None,
    ) -> ActorRef[Any]:
        """Add an actor (an instance, or a factory called again for a fresh instance on every restart).

        Before the system starts, the actor starts with it; afterwards it starts at once. ``mailbox_size``
        bounds its mailbox; ``supervision`` defaults to ``RestartPolicy()`` (3 restarts a minute).
        """
        if self._state not in ("new", "running"):
            raise ActorStopped(f"cannot spawn {name!r}: the actor system is {self._state}")
        if not name or name in self._cells:
            raise ValueError(f"actor name {name!r} is empty or already used")
        cell = Cell(
            name,
            actor,
            mailbox_size,
            supervision if supervision is not None else RestartPolicy(),
            post=self._post,
            clock=self.clock,
            lookup=self.ref,
            start_soon=self.start_soon,
        )
        self._cells[name] = cell
        self._order.append(cell)
        if self._state == "running":
            cell.open()
            self.start_soon(cell.run)
        return cell.ref

    def ref(self, name: str | ActorRef[Any]) -> ActorRef[Any]:
        """The ref of the actor called ``name``; raises :class:`UnknownActor` if there is none."""
        if isinstance(name, ActorRef):
            return name
        cell = self._cells.get(name)
        if cell is None:
            raise UnknownActor(f"no actor named {name!r} (known: {', '.join(self._cells) or 'none'})")
        return cell.ref

    @property
    def state(self) -> str:
        """``new``, ``running``, ``stopping`` or ``stopped``."""
        return self._state

    @property
    def primitives(self) -> Primitives:
        """The running event loop's own checkpoint and event (anyio's before the system starts), for tasks that
        wait on the system's messages."""
        return self._post.primitives

    @property
    def dead_letters(self) -> tuple[DeadLetter, ...]:
        """The most recent dead letters (bounded; :meth:`statistics` has the total)."""
        return tuple(self._post.dead)

    def statistics(self) -> SystemStatistics:
        """A snapshot of the system and each actor."""
        post = self._post
        return SystemStatistics(
            state=self._state,
            actors=tuple(cell.statistics() for cell in self._order),
            last_seq=post.seq,
            in_flight=post.in_flight,
            pending_asks=len(post.pending),
            late_replies=post.late_replies,
            dead_letters=post.dead_total,
        )

    def actor_statistics(self, name: str) -> ActorStatistics:
        """A snapshot of one actor."""
        return self.ref(name).statistics()

    def header(self) -> LogHeader:
        """The log header describing this system: its note, config and the sans-io cores of its actors."""
        cores: list[CoreSpec] = []
        for cell in self._order:
            describe = getattr(cell.actor, "core_spec", None)
            if describe is not None:
                cores.append(describe(cell.name))
        return LogHeader(vramgate_version=__version__, note=self._note, cores=tuple(cores), config=self._config)

    async def wait_idle(self) -> None:
        """Wait until every mailbox is empty and no actor is handling a message (timers may still be pending).

        Call it from outside the actors.
        """
        await self._post.wait_idle()

    def start_soon(self, func: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``func`` as a task of the system's task group (it is cancelled when the system stops at once)."""
        if self._tg is None:
            raise ActorStopped("the actor system is not running")
        self._tg.start_soon(func)

    async def __aenter__(self) -> ActorSystem:
        if self._state != "new":
            raise RuntimeError(f"an actor system runs once; this one is {self._state}")
        stack = AsyncExitStack()
        await stack.enter_async_context(self._running())
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        stack = self._stack
        assert stack is not None
        self._stack = None
        return bool(await stack.__aexit__(exc_type, exc, tb))

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        """The system's lifetime: its task group, the actors started in order, a graceful stop at the end."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._state = "running"
                self._post.primitives = current()
                try:
                    if self._recorder is not None:
                        self._recorder.start(self.header())
                    for cell in self._order:
                        cell.open()
                    for cell in list(self._order):
                        await tg.start(cell.run)
                    yield
                except BaseException:
                    tg.cancel_scope.cancel()
                    raise
                await self.stop()
        except BaseException as group:
            single = _single_error(group)
            if single is not None and single is not group:
                raise single from single.__cause__
            raise
        finally:
            self._closed()

    async def stop(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Stop gracefully: cancel timers, let every mailbox drain, then stop actors in reverse start order.

        Call it from outside the actors (an actor waiting for its own system to go idle would wait forever).
        With ``timeout`` (real seconds), whatever is still running after it is cancelled.
        """
        if self._state != "running":
            return
        self._state = "stopping"
        for cell in self._order:
            cell.cancel_timers()
        with anyio.move_on_after(timeout) as scope:
            await self.wait_idle()
            for cell in reversed(self._order):
                cell.close_mailbox()
                await cell.finished.wait()
        if scope.cancelled_caught and self._tg is not None:
            self._tg.cancel_scope.cancel()
        self._post.fail_asks(lambda slot: True, ActorStopped("the actor system stopped"))

    # ------------------------------------------------------------------ runtime internals

    def _mailbox_of(self, name: str) -> Mailbox | None:
        cell = self._cells.get(name)
        return cell.mailbox if cell is not None else None

    def _closed(self) -> None:
        self._state = "stopped"
        self._post.fail_asks(lambda slot: True, ActorStopped("the actor system stopped"))
        unfinished: list[int] = []
        for cell in self._order:
            unfinished.extend(cell.unfinished())
            cell.mailbox.stop()
        if self._recorder is not None:
            self._recorder.close(sorted(unfinished))


def _single_error(exc: BaseException) -> BaseException | None:
    """The one real error inside (nested) exception groups, ignoring cancellations; else ``None``."""
    cancelled = anyio.get_cancelled_exc_class()
    found: list[BaseException] = []

    def walk(e: BaseException) -> None:
        inner = getattr(e, "exceptions", None)
        if isinstance(inner, tuple):
            for sub in inner:
                walk(sub)
        elif not isinstance(e, cancelled):
            found.append(e)

    walk(exc)
    return found[0] if len(found) == 1 else None
