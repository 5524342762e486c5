"""Supervision: restart with the same ref, crash loops stop the system, poison messages become dead letters."""

from __future__ import annotations

import anyio
import pytest

from vramgate.actors import Actor, ActorSystem, Envelope, RestartPolicy
from vramgate.clock import ManualClock
from vramgate.errors import ActorCrashed
from vramgate.messages import Message, RequestEnded, RequestQueued

pytestmark = pytest.mark.anyio


def queued(request_id: str) -> RequestQueued:
    return RequestQueued(request_id=request_id, position=1)


class Fragile(Actor[Message]):
    """Crashes on ``boom`` (every time) and on ``once`` (the first time only); answers asks."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.crashed_once = False
        self.restarted: list[str] = []

    async def receive(self, message: Message, envelope: Envelope) -> None:
        assert isinstance(message, RequestQueued)
        if message.request_id == "boom":
            raise RuntimeError("boom")
        if message.request_id == "once" and not self.crashed_once:
            self.crashed_once = True
            raise RuntimeError("first try fails")
        self.seen.append(message.request_id)
        if envelope.correlation_id is not None:
            await self.context.reply(envelope, RequestEnded(request_id=message.request_id, state="completed"))

    async def on_restart(self, error: Exception) -> None:
        self.restarted.append(str(error))


async def test_crash_restarts_the_actor_behind_the_same_ref_and_retries_once() -> None:
    actor = Fragile()
    system = ActorSystem(clock=ManualClock())
    ref = system.spawn(actor, name="fragile")
    async with system:
        await ref.tell(queued("a"))
        await ref.tell(queued("once"))
        reply = await ref.ask(queued("b"), timeout=5)
        assert system.ref("fragile") is ref
    assert reply == RequestEnded(request_id="b", state="completed")
    assert actor.seen == ["a", "once", "b"]  # the crashing message was offered again, and handled
    assert actor.restarted == ["first try fails"]
    stats = ref.statistics()
    assert (stats.restarts, stats.handled, stats.dead_letters) == (1, 3, 0)
    assert system.dead_letters == ()


async def test_factory_spawn_restarts_with_a_fresh_instance() -> None:
    instances: list[Fragile] = []
    starts: list[int] = []

    class Counted(Fragile):
        async def on_start(self) -> None:
            starts.append(len(instances))

    def make() -> Fragile:
        instances.append(Counted())
        return instances[-1]

    system = ActorSystem()
    ref = system.spawn(make, name="fresh")
    async with system:
        await ref.tell(queued("once"))
        await ref.tell(queued("x"))
    # the first instance crashed; a fresh one (not crashed yet) crashed on the retry too, so: dead letter
    assert len(instances) == 3
    assert starts == [1, 2, 3]
    assert instances[2].seen == ["x"]
    assert [d.envelope.message for d in system.dead_letters] == [queued("once")]


async def test_poison_message_becomes_a_dead_letter_and_the_actor_keeps_serving() -> None:
    actor = Fragile()
    system = ActorSystem()
    ref = system.spawn(actor, name="fragile")
    async with system:
        await ref.tell(queued("a"))
        with pytest.raises(ActorCrashed, match="crashed twice"):
            await ref.ask(queued("boom"), timeout=5)
        reply = await ref.ask(queued("c"), timeout=5)
    assert reply == RequestEnded(request_id="c", state="completed")
    assert actor.seen == ["a", "c"]
    (letter,) = system.dead_letters
    assert letter.envelope.message == queued("boom")
    assert letter.envelope.recipient == "fragile"
    assert "RuntimeError('boom')" in letter.error
    stats = ref.statistics()
    assert (stats.restarts, stats.dead_letters, stats.handled) == (2, 1, 2)
    assert system.statistics().dead_letters == 1


async def test_crash_loop_beyond_the_limit_stops_the_system_with_the_error() -> None:
    stopped = anyio.Event()

    class Bystander(Actor[Message]):
        async def receive(self, message: Message, envelope: Envelope) -> None:
            pass

        async def on_stop(self) -> None:  # pragma: no cover - must not run: the stop is not graceful
            stopped.set()

    system = ActorSystem(clock=ManualClock())
    system.spawn(Bystander(), name="bystander")
    ref = system.spawn(Fragile(), name="fragile", supervision=RestartPolicy(max_restarts=2, within_s=60))
    with pytest.raises(ActorCrashed, match=r"'fragile' crashed 3 times within 60 s \(limit 2\)") as info:  # noqa: PT012
        async with system:
            await ref.tell(queued("boom"))  # crash 1, crash 2 -> dead letter
            await ref.tell(queued("boom"))  # crash 3 -> over the limit
            await anyio.sleep_forever()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert system.state == "stopped"
    assert not stopped.is_set()


async def test_crashes_outside_the_window_do_not_count() -> None:
    clock = ManualClock()
    system = ActorSystem(clock=clock)
    ref = system.spawn(Fragile(), name="fragile", supervision=RestartPolicy(max_restarts=2, within_s=10))
    async with system:
        for _ in range(3):
            await ref.tell(queued("boom"))  # two crashes each
            await system.wait_idle()
            clock.advance(11)
        assert ref.statistics().restarts == 6
    assert len(system.dead_letters) == 3


async def test_on_start_failure_fails_the_system_start() -> None:
    class Broken(Actor[Message]):
        async def on_start(self) -> None:
            raise OSError("no device")

    system = ActorSystem()
    system.spawn(Broken(), name="broken")
    with pytest.raises(ActorCrashed, match="'broken' failed to start"):
        async with system:
            pass  # pragma: no cover


def test_restart_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_restarts"):
        RestartPolicy(max_restarts=-1)
    with pytest.raises(ValueError, match="within_s"):
        RestartPolicy(within_s=0)
    assert RestartPolicy.never().max_restarts == 0
