"""The runtime side of one actor: its mailbox, its task, and its supervisor."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from anyio.abc import TaskStatus

from vramgate.actors._post import LOG_ONLY, Mailbox, Post
from vramgate.actors.actor import Actor, ActorContext, Timer, attach
from vramgate.actors.envelope import SUPERVISOR, ActorStatistics, DeadLetter, Envelope, RestartPolicy
from vramgate.actors.ref import ActorRef
from vramgate.clock import Clock
from vramgate.errors import ActorCrashed, ActorStopped
from vramgate.messages import ActorFailed, Message

log = logging.getLogger("vramgate.actors")

ActorFactory = Callable[[], Actor[Any]]
#: Starts a task in the system's task group.
StartSoon = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


class _Retry:
    """Where a crashed-on message is posted again: the cell offers it next, before its mailbox."""

    __slots__ = ("envelope",)

    counted = False

    def __init__(self) -> None:
        self.envelope: Envelope | None = None

    def accept(self, envelope: Envelope) -> bool:
        self.envelope = envelope
        return True


class Cell:
    """Holds an actor, its mailbox and its counters; runs its receive loop under supervision.

    It knows the system only through what it is given: the :class:`Post`, the clock, a way to look refs up and a
    way to start tasks.
    """

    def __init__(
        self,
        name: str,
        actor: Actor[Any] | ActorFactory,
        capacity: int,
        policy: RestartPolicy,
        *,
        post: Post,
        clock: Clock,
        lookup: Callable[[str], ActorRef[Any]],
        start_soon: StartSoon,
    ) -> None:
        self.name = name
        self.policy = policy
        self.post = post
        self.clock = clock
        self.lookup = lookup
        self.start_soon = start_soon
        self.mailbox = Mailbox(post, name, capacity)
        self.factory: ActorFactory | None = None
        if isinstance(actor, Actor):
            self.actor: Actor[Any] = actor
        else:
            self.factory = actor
            self.actor = actor()
        if not isinstance(self.actor, Actor):
            raise TypeError(f"actor {name!r}: expected an Actor, got {type(self.actor).__name__}")
        self.ref: ActorRef[Any] = ActorRef(self.mailbox, post, self.statistics)
        self.context: ActorContext[Any] = ActorContext(self)
        attach(self.actor, self.context)
        self.handled = 0
        self.restarts = 0
        self.dead_letters = 0
        self.crash_times: collections.deque[float] = collections.deque()
        self.timers: set[Timer] = set()
        self.finished = anyio.Event()
        self.retry = _Retry()
        #: The envelope the actor is handling now.
        self.current: Envelope | None = None

    @property
    def state(self) -> str:
        return self.mailbox.state

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Open the mailbox. Called when the system starts (or at spawn, if it already runs)."""
        self.mailbox.state = "running"

    def close_mailbox(self) -> None:
        """Refuse new messages; the receive loop drains what is queued, then stops the actor."""
        self.cancel_timers()
        self.mailbox.close()

    def cancel_timers(self) -> None:
        for timer in list(self.timers):
            timer.cancel()

    def start_timer(self, delay_s: float, period_s: float | None, message: Message) -> Timer:
        if delay_s < 0:
            raise ValueError("delay must be >= 0")
        if self.mailbox.state != "running":
            raise self.mailbox.stopped_error()
        timer = Timer(self, delay_s, period_s, message)
        self.timers.add(timer)
        self.start_soon(timer.run)
        return timer

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The actor's task: start it, serve its mailbox until it is closed and drained, then stop it."""
        try:
            try:
                await self.actor.on_start()
            except Exception as exc:
                raise ActorCrashed(f"actor {self.name!r} failed to start: {exc!r}") from exc
            task_status.started()
            await self._serve()
            self.mailbox.state = "stopping"
            await self.actor.on_stop()
        finally:
            self.cancel_timers()
            self.mailbox.stop()
            self.post.fail_asks(
                lambda slot: slot.target is self.mailbox,
                ActorStopped(f"actor {self.name!r} stopped before it answered"),
            )
            self.finished.set()

    # ------------------------------------------------------------------ the receive loop

    async def _serve(self) -> None:
        post = self.post
        mailbox = self.mailbox
        retry = self.retry
        actor = self.actor
        while True:
            env = retry.envelope
            if env is not None:
                retry.envelope = None
            elif mailbox.queue:
                env = mailbox.take()  # no checkpoint while envelopes are queued (see Mailbox.get)
            else:
                env = await mailbox.get()
                if env is None:
                    return
            self.current = env
            try:
                await actor.receive(env.message, env)
            except Exception as exc:
                await self._crashed(env, exc, poisoned=env.redelivery_of is not None)
                self.current = None
                actor = self.actor
                if retry.envelope is None:
                    post.done()
                continue
            self.current = None
            self.handled += 1
            post.done()

    async def _crashed(self, env: Envelope, exc: Exception, *, poisoned: bool) -> None:
        """Supervise a crash: restart within limits, and post the message again unless it crashed twice."""
        now = self.clock.now()
        times = self.crash_times
        times.append(now)
        while times and now - times[0] > self.policy.within_s:
            times.popleft()
        if len(times) > self.policy.max_restarts:
            self.post.post(LOG_ONLY, SUPERVISOR, self.name, ActorFailed(seq=env.seq, error=repr(exc)))
            self.post.fail_ask(
                env.correlation_id,
                ActorCrashed(f"actor {self.name!r} crashed handling message #{env.seq}: {exc!r}"),
            )
            raise ActorCrashed(
                f"actor {self.name!r} crashed {len(times)} times within {self.policy.within_s:g} s "
                f"(limit {self.policy.max_restarts}); last error: {exc!r}"
            ) from exc
        self.restarts += 1
        log.warning("actor %r crashed on message #%d (%s); restarting", self.name, env.seq, exc)
        if poisoned:
            self.dead_letters += 1
            self.post.dead_letter(DeadLetter(env, "crashed its actor twice", repr(exc)))
            self.post.fail_ask(
                env.correlation_id,
                ActorCrashed(f"actor {self.name!r} crashed twice on message #{env.seq}: {exc!r}"),
            )
        await self._restart(exc)
        if not poisoned:
            self.post.post(self.retry, env.sender, env.recipient, env.message, env.correlation_id, env.seq)

    async def _restart(self, exc: Exception) -> None:
        if self.factory is None:
            await self.actor.on_restart(exc)
            return
        actor = self.factory()
        attach(actor, self.context)
        self.actor = actor
        await actor.on_start()

    def unfinished(self) -> list[int]:
        """The seqs of envelopes delivered to this actor that it has not finished handling, in order."""
        pending = [env.seq for env in (self.current, self.retry.envelope) if env is not None]
        return [*pending, *(env.seq for env in self.mailbox.queue)]

    # ------------------------------------------------------------------ statistics

    def statistics(self) -> ActorStatistics:
        mailbox = self.mailbox
        return ActorStatistics(
            name=self.name,
            state=mailbox.state,
            mailbox_size=len(mailbox.queue),
            mailbox_capacity=mailbox.capacity,
            waiting_senders=len(mailbox.waiting),
            handled=self.handled,
            restarts=self.restarts,
            dead_letters=self.dead_letters,
            timers=len(self.timers),
        )
