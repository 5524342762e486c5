"""Start order, graceful and immediate stops, timers on the injected clock, spawning while running."""

from __future__ import annotations

import gc
import warnings

import anyio
import pytest

from vramgate.actors import TIMER, Actor, ActorSystem, Envelope
from vramgate.clock import ManualClock
from vramgate.errors import ActorStopped
from vramgate.messages import Message, RequestQueued

pytestmark = pytest.mark.anyio


def queued(i: int) -> RequestQueued:
    return RequestQueued(request_id=f"r{i}", position=i + 1)


class Logged(Actor[Message]):
    def __init__(self, journal: list[str], name: str) -> None:
        self.journal = journal
        self.name = name
        self.seen: list[tuple[Message, Envelope]] = []

    async def on_start(self) -> None:
        self.journal.append(f"start {self.name}")

    async def on_stop(self) -> None:
        self.journal.append(f"stop {self.name}")

    async def receive(self, message: Message, envelope: Envelope) -> None:
        await anyio.lowlevel.checkpoint()
        self.seen.append((message, envelope))


async def test_actors_start_in_order_and_stop_in_reverse() -> None:
    journal: list[str] = []
    system = ActorSystem()
    for name in ("a", "b", "c"):
        system.spawn(Logged(journal, name), name=name)
    async with system:
        assert journal == ["start a", "start b", "start c"]
        assert system.state == "running"
    assert journal[3:] == ["stop c", "stop b", "stop a"]
    assert system.state == "stopped"
    assert [s.state for s in system.statistics().actors] == ["stopped"] * 3


async def test_graceful_stop_handles_what_is_already_in_the_mailboxes() -> None:
    journal: list[str] = []
    first, second = Logged(journal, "first"), Logged(journal, "second")
    system = ActorSystem()
    ref1 = system.spawn(first, name="first", mailbox_size=50)
    ref2 = system.spawn(second, name="second", mailbox_size=50)
    async with system:
        for i in range(50):
            ref1.tell_nowait(queued(i))
            ref2.tell_nowait(queued(i))
        stats = ref1.statistics()
        assert (stats.handled, stats.mailbox_size) == (0, 50)  # all in the mailbox until the actor takes them
    assert [m for m, _ in first.seen] == [queued(i) for i in range(50)]
    assert [m for m, _ in second.seen] == [queued(i) for i in range(50)]
    assert journal[-2:] == ["stop second", "stop first"]


async def test_cancellation_stops_at_once_and_leaves_no_task_or_open_stream() -> None:
    journal: list[str] = []
    blocked = anyio.Event()

    class Stuck(Actor[Message]):
        async def receive(self, message: Message, envelope: Envelope) -> None:
            blocked.set()
            await anyio.sleep_forever()

    tasks_before = {t.id for t in anyio.get_running_tasks()}
    system = ActorSystem()
    stuck = system.spawn(Stuck(), name="stuck", mailbox_size=4)
    system.spawn(Logged(journal, "other"), name="other")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with anyio.move_on_after(5) as scope:
            async with system, anyio.create_task_group() as senders:
                stuck.tell_nowait(queued(0))
                await blocked.wait()  # the actor holds message 0 for ever
                for i in range(1, 5):
                    stuck.tell_nowait(queued(i))
                senders.start_soon(stuck.tell, queued(9))  # waits: the mailbox is full
                await anyio.wait_all_tasks_blocked()
                assert stuck.statistics().waiting_senders == 1
                scope.cancel()
        del system, senders
        gc.collect()
    assert scope.cancelled_caught
    assert journal == ["start other"]  # no on_stop after a cancellation
    assert {t.id for t in anyio.get_running_tasks()} == tasks_before
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    with pytest.raises(ActorStopped):
        stuck.tell_nowait(queued(0))


async def test_an_error_in_the_body_stops_the_system_and_propagates_as_itself() -> None:
    journal: list[str] = []
    system = ActorSystem()
    system.spawn(Logged(journal, "a"), name="a")
    with pytest.raises(LookupError, match="from the body"):
        async with system:
            raise LookupError("from the body")
    assert system.state == "stopped"


async def test_timers_deliver_through_the_mailbox_on_the_injected_clock() -> None:
    clock = ManualClock()

    class Ticking(Logged):
        async def on_start(self) -> None:
            self.every = self.context.send_every(2.0, queued(1))
            self.context.send_later(3.0, queued(2))

    actor = Ticking([], "ticking")
    system = ActorSystem(clock=clock)
    ref = system.spawn(actor, name="ticking")
    async with system:
        await anyio.wait_all_tasks_blocked()
        assert ref.statistics().timers == 2
        for _ in range(3):
            clock.advance(1.0)
            await anyio.wait_all_tasks_blocked()
            await system.wait_idle()
        actor.every.cancel()
        clock.advance(10.0)
        await anyio.wait_all_tasks_blocked()
        await system.wait_idle()
        assert ref.statistics().timers == 0
    got = [(m, e.at, e.sender) for m, e in actor.seen]
    assert got == [(queued(1), 2.0, TIMER), (queued(2), 3.0, TIMER)]


async def test_spawning_into_a_running_system() -> None:
    journal: list[str] = []
    system = ActorSystem()
    async with system:
        late = Logged(journal, "late")
        ref = system.spawn(late, name="late")
        await ref.tell(queued(0))
        await system.wait_idle()
        assert [m for m, _ in late.seen] == [queued(0)]
    assert journal == ["start late", "stop late"]
    with pytest.raises(ActorStopped, match="stopped"):
        system.spawn(Logged(journal, "too late"), name="x")


async def test_envelopes_carry_global_sequence_numbers_and_clock_time() -> None:
    clock = ManualClock(start=5.0)
    a, b = Logged([], "a"), Logged([], "b")
    system = ActorSystem(clock=clock)
    ra, rb = system.spawn(a, name="a"), system.spawn(b, name="b")
    async with system:
        await ra.tell(queued(0))
        clock.advance(1.5)
        await rb.tell(queued(1), sender="client")
        await ra.tell(queued(2))
    assert [(e.seq, e.at, e.sender, e.recipient) for _, e in a.seen] == [
        (1, 5.0, "external", "a"),
        (3, 6.5, "external", "a"),
    ]
    assert [(e.seq, e.at, e.sender, e.recipient) for _, e in b.seen] == [(2, 6.5, "client", "b")]
