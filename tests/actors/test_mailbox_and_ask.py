"""Mailboxes (backpressure, tell_nowait) and ask (reply, timeout, late reply, stopped actor)."""

from __future__ import annotations

import anyio
import pytest

from vramgate.actors import Actor, ActorSystem, Envelope, UnknownActor
from vramgate.clock import ManualClock
from vramgate.errors import ActorStopped, AskTimeout, MailboxFull
from vramgate.messages import Message, RequestEnded, RequestQueued

pytestmark = pytest.mark.anyio


def queued(i: int) -> RequestQueued:
    return RequestQueued(request_id=f"r{i}", position=i + 1)


class Gated(Actor[Message]):
    """Records what it gets; waits for ``gate`` before handling each message; answers asks."""

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.seen: list[Message] = []
        self.started_handling = anyio.Event()

    async def receive(self, message: Message, envelope: Envelope) -> None:
        self.started_handling.set()
        await self.gate.wait()
        self.seen.append(message)
        if envelope.correlation_id is not None:
            assert isinstance(message, RequestQueued)
            await self.context.reply(envelope, RequestEnded(request_id=message.request_id, state="completed"))


async def test_full_mailbox_makes_tell_wait_until_drained() -> None:
    actor = Gated()
    system = ActorSystem(clock=ManualClock())
    ref = system.spawn(actor, name="gated", mailbox_size=2)
    async with system:
        await ref.tell(queued(0))
        await actor.started_handling.wait()  # the actor holds message 0; the mailbox is empty again
        await ref.tell(queued(1))
        await ref.tell(queued(2))
        assert ref.statistics().mailbox_size == 2

        delivered = anyio.Event()

        async def blocked_sender() -> None:
            await ref.tell(queued(3))
            delivered.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked_sender)
            await anyio.wait_all_tasks_blocked()
            stats = ref.statistics()
            assert stats.waiting_senders == 1
            assert not delivered.is_set()
            with pytest.raises(MailboxFull, match="gated"):
                ref.tell_nowait(queued(99))
            actor.gate.set()  # drain
        assert delivered.is_set()
        await system.wait_idle()
    assert actor.seen == [queued(i) for i in range(4)]
    assert ref.statistics().handled == 4


async def test_tell_nowait_delivers_when_there_is_room() -> None:
    actor = Gated()
    actor.gate.set()
    system = ActorSystem()
    ref = system.spawn(actor, name="a", mailbox_size=1)
    async with system:
        ref.tell_nowait(queued(0))
        await system.wait_idle()
        assert actor.seen == [queued(0)]


async def test_ask_gets_the_reply() -> None:
    actor = Gated()
    actor.gate.set()
    system = ActorSystem()
    ref = system.spawn(actor, name="a")
    async with system:
        reply = await ref.ask(queued(7), timeout=5)
    assert reply == RequestEnded(request_id="r7", state="completed")
    assert system.statistics().pending_asks == 0


async def test_ask_times_out_and_the_late_reply_is_dropped() -> None:
    actor = Gated()
    system = ActorSystem()
    ref = system.spawn(actor, name="slow")
    async with system:
        with pytest.raises(AskTimeout, match="slow"):
            await ref.ask(queued(1), timeout=0.05)
        assert system.statistics().pending_asks == 0
        actor.gate.set()  # now it answers the first ask, too late
        reply = await ref.ask(queued(2), timeout=5)
        assert reply == RequestEnded(request_id="r2", state="completed")  # not the stale r1
        assert system.statistics().late_replies == 1


async def test_actor_stopped_while_asking() -> None:
    class Silent(Actor[Message]):
        async def receive(self, message: Message, envelope: Envelope) -> None:
            pass  # never replies

    system = ActorSystem()
    ref = system.spawn(Silent(), name="silent")
    errors: list[BaseException] = []
    async with system:

        async def asker() -> None:
            try:
                await ref.ask(queued(1), timeout=30)
            except ActorStopped as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(asker)
            await anyio.wait_all_tasks_blocked()
            await system.stop()
    assert len(errors) == 1
    assert "actor 'silent' stopped before it answered" in str(errors[0])
    with pytest.raises(ActorStopped):
        await ref.ask(queued(2), timeout=1)
    with pytest.raises(ActorStopped):
        await ref.tell(queued(3))
    with pytest.raises(ActorStopped):
        ref.tell_nowait(queued(4))


async def test_sending_before_start_and_to_unknown_names_fails_clearly() -> None:
    system = ActorSystem()
    ref = system.spawn(Gated(), name="a")
    with pytest.raises(ActorStopped, match="not started"):
        await ref.tell(queued(0))
    with pytest.raises(UnknownActor, match="nobody"):
        system.ref("nobody")
    with pytest.raises(ValueError, match="already used"):
        system.spawn(Gated(), name="a")
