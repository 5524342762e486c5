"""The actor system: one task group that runs every actor, in order, and stops them in reverse."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup
from anyio.lowlevel import checkpoint

from vramgate._version import __version__
from vramgate.actors._cell import ActorFactory, Cell
from vramgate.actors.actor import Actor
from vramgate.actors.envelope import (
    ActorStatistics,
    DeadLetter,
    Envelope,
    RestartPolicy,
    SystemStatistics,
)
from vramgate.actors.ref import ActorRef
from vramgate.clock import Clock, MonotonicClock
from vramgate.errors import ActorStopped, AskTimeout
from vramgate.messages import LogHeader, Message
from vramgate.messages.log import CoreSpec

if TYPE_CHECKING:
    from vramgate.actors.recorder import Recorder

log = logging.getLogger("vramgate.actors")


class UnknownActor(ActorStopped, LookupError):
    """No actor of that name was spawned in this system."""


class _AskSlot:
    __slots__ = ("correlation_id", "error", "event", "reply", "target")

    def __init__(self, correlation_id: int, target: Cell) -> None:
        self.correlation_id = correlation_id
        self.target = target
        self.event = anyio.Event()
        self.reply: Message | None = None
        self.error: BaseException | None = None


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
        self._now: Callable[[], float] = self.clock.now
        self._recorder = recorder
        self._note = note
        self._config = dict(config or {})
        self._seq = 0
        self._corr = 0
        self._in_flight = 0
        self._idle_event: anyio.Event | None = None
        self._cells: dict[str, Cell] = {}
        self._order: list[Cell] = []
        self._pending: dict[int, _AskSlot] = {}
        self._dead: collections.deque[DeadLetter] = collections.deque(maxlen=dead_letter_capacity)
        self._dead_total = 0
        self._late_replies = 0
        self._tg: TaskGroup | None = None
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
        cell = Cell(self, name, actor, mailbox_size, supervision if supervision is not None else RestartPolicy())
        self._cells[name] = cell
        self._order.append(cell)
        if self._state == "running":
            cell.open()
            self._start_task(cell.run)
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
    def dead_letters(self) -> tuple[DeadLetter, ...]:
        """The most recent dead letters (bounded; :meth:`statistics` has the total)."""
        return tuple(self._dead)

    def statistics(self) -> SystemStatistics:
        """A snapshot of the system and each actor."""
        return SystemStatistics(
            state=self._state,
            actors=tuple(cell.statistics() for cell in self._order),
            last_seq=self._seq,
            in_flight=self._in_flight,
            pending_asks=len(self._pending),
            late_replies=self._late_replies,
            dead_letters=self._dead_total,
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
        await checkpoint()
        while self._in_flight > 0:
            if self._idle_event is None:
                self._idle_event = anyio.Event()
            await self._idle_event.wait()

    async def __aenter__(self) -> ActorSystem:
        if self._state != "new":
            raise RuntimeError(f"an actor system runs once; this one is {self._state}")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._state = "running"
        try:
            if self._recorder is not None:
                self._recorder.start(self.header())
            for cell in self._order:
                cell.open()
            for cell in list(self._order):
                await tg.start(cell.run)
        except BaseException as exc:
            tg.cancel_scope.cancel()
            await self._exit_task_group(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        tg = self._tg
        assert tg is not None
        if exc is None:
            try:
                await self.stop()
            except BaseException as stop_exc:
                exc_type, exc, tb = type(stop_exc), stop_exc, stop_exc.__traceback__
                tg.cancel_scope.cancel()
        else:
            tg.cancel_scope.cancel()
        suppressed = await self._exit_task_group(exc_type, exc, tb)
        if exc is not None and not suppressed:
            raise exc
        return suppressed

    async def _exit_task_group(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Leave the task group; an exception group holding one real error is raised as that error."""
        tg = self._tg
        assert tg is not None
        try:
            return await tg.__aexit__(exc_type, exc, tb)
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
        self._fail_asks(lambda slot: True, ActorStopped("the actor system stopped"))

    # ------------------------------------------------------------------ runtime internals

    def _start_task(self, func: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._tg is None:
            raise ActorStopped("the actor system is not running")
        self._tg.start_soon(func)

    def _message_done(self) -> None:
        self._in_flight -= 1
        if self._in_flight <= 0 and self._idle_event is not None:
            self._idle_event.set()
            self._idle_event = None

    def _dead_letter(self, letter: DeadLetter) -> None:
        self._dead_total += 1
        self._dead.append(letter)
        log.warning(
            "dead letter #%d %s -> %s (%s): %s %s",
            letter.envelope.seq,
            letter.envelope.sender,
            letter.envelope.recipient,
            type(letter.envelope.message).__name__,
            letter.reason,
            letter.error,
        )

    def _fail_asks(self, which: Callable[[_AskSlot], bool], error: BaseException) -> None:
        for corr, slot in list(self._pending.items()):
            if which(slot):
                del self._pending[corr]
                slot.error = error
                slot.event.set()

    def _actor_stopped(self, cell: Cell, *, graceful: bool) -> None:
        self._fail_asks(
            lambda slot: slot.target is cell,
            ActorStopped(f"actor {cell.name!r} stopped before it answered"),
        )

    def _closed(self) -> None:
        self._state = "stopped"
        self._fail_asks(lambda slot: True, ActorStopped("the actor system stopped"))
        for cell in self._order:
            if cell.send_stream is not None:
                cell.send_stream.close()
            if cell.receive_stream is not None:
                cell.receive_stream.close()
            cell.state = "stopped"
        if self._recorder is not None:
            self._recorder.close()

    async def _ask(self, ref: ActorRef[Any], message: Message, timeout: float, sender: str) -> Message:  # noqa: ASYNC109
        self._corr += 1
        corr = self._corr
        slot = _AskSlot(corr, ref._cell)
        self._pending[corr] = slot
        try:
            with anyio.fail_after(timeout):
                await ref._send(message, sender, corr)
                await slot.event.wait()
        except TimeoutError:
            raise AskTimeout(
                f"actor {ref.name!r} did not answer {type(message).__name__} within {timeout:g} s"
            ) from None
        finally:
            self._pending.pop(corr, None)
        if slot.error is not None:
            raise slot.error
        assert slot.reply is not None
        return slot.reply

    async def _reply(self, replier: str, env: Envelope, message: Message) -> None:
        corr = env.correlation_id
        if corr is None:
            target = self._cells.get(env.sender)
            if target is not None and target.state in ("running", "stopping"):
                await target.ref._send(message, replier, None)
                return
        self._seq += 1
        reply = Envelope(self._seq, self._now(), replier, env.sender, message, corr)
        if self._recorder is not None:
            self._recorder.record(reply)
        if corr is None:
            self._dead_letter(DeadLetter(reply, f"no actor {env.sender!r} to reply to"))
        else:
            slot = self._pending.pop(corr, None)
            if slot is None:
                self._late_replies += 1
            else:
                slot.reply = message
                slot.event.set()
        await checkpoint()


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
