"""Actor-to-actor messaging: send, ask and reply between actors, core shells, failures seen from outside."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from vramgate.actors import Actor, ActorSystem, CoreActor, Envelope, Output, Reply, RestartPolicy, Send
from vramgate.clock import ManualClock
from vramgate.errors import ActorCrashed, ActorStopped
from vramgate.messages import Message, RequestEnded, RequestQueued

pytestmark = pytest.mark.anyio


def queued(request_id: str) -> RequestQueued:
    return RequestQueued(request_id=request_id, position=1)


def ended(request_id: str) -> RequestEnded:
    return RequestEnded(request_id=request_id, state="completed")


class Answering(Actor[Message]):
    async def receive(self, message: Message, envelope: Envelope) -> None:
        assert isinstance(message, RequestQueued)
        await self.context.reply(envelope, ended(message.request_id))


class Asking(Actor[Message]):
    """Asks ``answering`` for each message it gets, and tells ``answering`` too (whose reply comes back here)."""

    def __init__(self) -> None:
        self.replies: list[tuple[Message, str, int | None]] = []

    async def receive(self, message: Message, envelope: Envelope) -> None:
        if isinstance(message, RequestQueued):
            answer = await self.context.ask("answering", message, timeout=5)
            self.replies.append((answer, "ask", None))
            await self.context.send("answering", queued("told"))
        else:
            self.replies.append((message, envelope.sender, envelope.correlation_id))


async def test_actors_ask_and_reply_to_each_other() -> None:
    asking = Asking()
    system = ActorSystem(clock=ManualClock())
    system.spawn(Answering(), name="answering")
    ref = system.spawn(asking, name="asking")
    async with system:
        await ref.tell(queued("a"))
        await system.wait_idle()
    assert asking.replies == [(ended("a"), "ask", None), (ended("told"), "answering", None)]
    assert system.dead_letters == ()


async def test_a_reply_with_no_one_to_receive_it_is_a_dead_letter() -> None:
    system = ActorSystem()
    ref = system.spawn(Answering(), name="answering")
    async with system:
        await ref.tell(queued("a"))  # told from outside: nobody to reply to
        await system.wait_idle()
    (letter,) = system.dead_letters
    assert letter.envelope.recipient == "external"
    assert letter.envelope.message == ended("a")
    assert "no actor 'external' to reply to" in letter.reason


class Forwarding:
    def handle(self, message: Message, now: float) -> Sequence[Output]:
        assert isinstance(message, RequestQueued)
        return [Send("answering", queued(f"{message.request_id}@{now:g}")), Reply(ended(message.request_id))]


async def test_core_actor_sends_outputs_in_order_with_the_envelope_time() -> None:
    clock = ManualClock(start=2.0)
    journal: list[Message] = []

    class Journal(Actor[Message]):
        async def receive(self, message: Message, envelope: Envelope) -> None:
            journal.append(message)

    system = ActorSystem(clock=clock)
    system.spawn(Journal(), name="answering")
    core = system.spawn(CoreActor(Forwarding(), kind="test.forwarding", config={"k": 1}), name="core")
    async with system:
        assert await core.ask(queued("x"), timeout=5) == ended("x")
        await system.wait_idle()
    assert journal == [queued("x@2")]
    (spec,) = system.header().cores
    assert (spec.name, spec.kind, spec.config) == ("core", "test.forwarding", {"k": 1})


async def test_a_core_returning_something_else_crashes_its_actor() -> None:
    class Wrong:
        def handle(self, message: Message, now: float) -> Sequence[Output]:
            return [message]  # type: ignore[list-item]

    system = ActorSystem()
    ref = system.spawn(CoreActor(Wrong(), kind="wrong"), name="wrong", supervision=RestartPolicy.never())
    with pytest.raises(ActorCrashed, match="expected Send or Reply"):  # noqa: PT012
        async with system:
            await ref.tell(queued("a"))
            await anyio.sleep_forever()


async def test_outside_callers_learn_that_a_crashed_system_stopped() -> None:
    release = anyio.Event()

    class Blocker(Actor[Message]):
        async def receive(self, message: Message, envelope: Envelope) -> None:
            if isinstance(message, RequestQueued) and message.request_id == "crash":
                raise RuntimeError("boom")
            await release.wait()

    system = ActorSystem()
    blocker = system.spawn(Blocker(), name="blocker", mailbox_size=1, supervision=RestartPolicy.never())
    errors: list[BaseException] = []

    async def outside_asker() -> None:
        try:
            await blocker.ask(queued("slow"), timeout=30)
        except ActorStopped as exc:
            errors.append(exc)

    delivered: list[str] = []

    async def outside_teller(request_id: str) -> None:
        try:
            await blocker.tell(queued(request_id))  # the mailbox is full: waits
        except ActorStopped as exc:
            errors.append(exc)
        else:
            delivered.append(request_id)

    async with anyio.create_task_group() as outside:
        with pytest.raises(ActorCrashed):  # noqa: PT012
            async with system:
                outside.start_soon(outside_asker)
                await anyio.wait_all_tasks_blocked()  # blocker holds "slow"; its mailbox is empty
                await blocker.tell(queued("crash"))  # fills the mailbox
                outside.start_soon(outside_teller, "first")
                await anyio.wait_all_tasks_blocked()
                outside.start_soon(outside_teller, "second")
                await anyio.wait_all_tasks_blocked()
                assert blocker.statistics().waiting_senders == 2
                # blocker finishes "slow" without replying, takes "crash" (so "first" moves into the mailbox)
                # and crashes: the asker and the sender still waiting learn that the actor stopped
                release.set()
                await anyio.sleep_forever()
    assert delivered == ["first"]
    assert sorted(str(e) for e in errors) == [
        "actor 'blocker' has stopped",
        "actor 'blocker' stopped before it answered",
    ]


async def test_stop_with_a_timeout_cancels_what_does_not_finish() -> None:
    class Stuck(Actor[Message]):
        async def receive(self, message: Message, envelope: Envelope) -> None:
            await anyio.sleep_forever()

    system = ActorSystem()
    ref = system.spawn(Stuck(), name="stuck")
    with anyio.fail_after(5):
        async with system:
            await ref.tell(queued("a"))
            await system.stop(timeout=0.05)
    assert system.state == "stopped"
    stats = system.statistics()
    assert stats.actors[0].state == "stopped"
