"""The message log holds exactly what was delivered: not a tell cancelled while it waited, and every redelivery."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
from anyio.lowlevel import checkpoint

from vramgate.actors import Actor, ActorSystem, CoreActor, Envelope, Output, Recorder, RestartPolicy, Send
from vramgate.clock import ManualClock
from vramgate.errors import ActorCrashed
from vramgate.messages import Message, RequestQueued
from vramgate.replay import read_log, register_core_kind, replay

pytestmark = pytest.mark.anyio


class Echo:
    """Sends every message on to the sink."""

    def handle(self, message: Message, now: float) -> Sequence[Output]:
        return [Send("sink", message)]


class FlakyEcho:
    """Like :class:`Echo`, but the first ``once`` crashes it (the retry succeeds); ``boom`` always crashes it."""

    def __init__(self) -> None:
        self.crashed = False

    def handle(self, message: Message, now: float) -> Sequence[Output]:
        assert isinstance(message, RequestQueued)
        if message.request_id == "boom":
            raise RuntimeError("boom")
        if message.request_id == "once" and not self.crashed:
            self.crashed = True
            raise RuntimeError("first try fails")
        return [Send("sink", message)]


register_core_kind("test.echo", lambda header, spec: Echo())
register_core_kind("test.flaky-echo", lambda header, spec: FlakyEcho())


class GatedSink(Actor[Message]):
    """Waits for ``gate`` before taking each message, so that its senders block on a full mailbox."""

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.seen: list[Message] = []

    async def receive(self, message: Message, envelope: Envelope) -> None:
        await self.gate.wait()
        self.seen.append(message)


def queued(request_id: str) -> RequestQueued:
    return RequestQueued(request_id=request_id, position=1)


async def test_a_tell_cancelled_while_waiting_for_room_is_not_logged(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    system = ActorSystem(clock=ManualClock(), recorder=Recorder(log))
    echo = system.spawn(CoreActor(Echo(), kind="test.echo"), name="echo", mailbox_size=1)
    sink = GatedSink()
    system.spawn(sink, name="sink", mailbox_size=1)
    async with system:
        await echo.tell(queued("a"))  # the sink takes it and waits
        await echo.tell(queued("b"))  # echo sends it into the sink's mailbox
        await echo.tell(queued("c"))  # echo waits for room in the sink's mailbox
        await anyio.wait_all_tasks_blocked()
        await echo.tell(queued("d"))  # fills echo's own mailbox
        with anyio.move_on_after(0.05) as scope:
            await echo.tell(queued("never"))  # waits for room in echo's mailbox, and is cancelled
        assert scope.cancelled_caught
        sink.gate.set()
    assert [m.request_id for m in sink.seen if isinstance(m, RequestQueued)] == ["a", "b", "c", "d"]
    _, records = read_log(log)
    rows = list(records)
    assert "never" not in {getattr(r.message, "request_id", "") for r in rows}
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    result = replay(log)
    assert result.identical, result.summary()


async def test_a_tell_cancelled_while_its_message_is_handed_over_says_what_happened(tmp_path: Path) -> None:
    """A sender waits for room; its scope is cancelled as the receiver takes a message, which may hand the sender's
    over before the sender runs again. Either the message was delivered (logged, seen, and the tell returns: a
    caller that sees its tell cancelled may send it again, and the actor would get it twice) or it was not (not
    logged, not seen, and the tell raises the cancellation)."""
    log = tmp_path / "run.jsonl"
    system = ActorSystem(clock=ManualClock(), recorder=Recorder(log))
    sink = GatedSink()
    ref = system.spawn(sink, name="sink", mailbox_size=1)
    scope = anyio.CancelScope()
    outcome: list[str] = []

    async def sender() -> None:
        with scope:
            await ref.tell(queued("c"))  # waits for room
            outcome.append("returned")
        if scope.cancelled_caught:
            outcome.append("cancelled")

    async with system:
        await ref.tell(queued("a"))  # the sink takes it and waits
        await anyio.wait_all_tasks_blocked()
        await ref.tell(queued("b"))  # fills the mailbox
        async with anyio.create_task_group() as tg:
            tg.start_soon(sender)
            await anyio.wait_all_tasks_blocked()
            assert ref.statistics().waiting_senders == 1
            sink.gate.set()
            await checkpoint()  # the sink finishes "a" and checkpoints before it takes "b"
            scope.cancel()  # the sender may learn of it only after the sink handed "c" over
        await system.wait_idle()
    _, records = read_log(log)
    logged = [getattr(r.message, "request_id", "") for r in records]
    seen = [m.request_id for m in sink.seen if isinstance(m, RequestQueued)]
    delivered = "c" in seen
    assert ("c" in logged) == delivered  # the log holds exactly what was delivered
    assert outcome == (["returned"] if delivered else ["cancelled"])  # and the sender was told the truth
    assert seen[:2] == logged[:2] == ["a", "b"]


async def test_a_stop_that_cancels_what_is_still_queued_replays_identically(tmp_path: Path) -> None:
    """Messages logged into a mailbox (or being handled) when a stop runs out of time were never handled: the log
    says which, so that a replay does not expect what their actors never sent."""
    log = tmp_path / "run.jsonl"
    system = ActorSystem(clock=ManualClock(), recorder=Recorder(log))
    echo = system.spawn(CoreActor(Echo(), kind="test.echo"), name="echo", mailbox_size=4)
    sink = GatedSink()
    system.spawn(sink, name="sink", mailbox_size=1)
    async with system:
        for i in range(6):
            await echo.tell(queued(f"m{i}"))  # echo forwards two, then waits for room in the sink's mailbox
        await anyio.wait_all_tasks_blocked()
        await system.stop(timeout=0.05)  # the sink never takes anything: the stop cancels everything
    assert sink.seen == []
    _, records = read_log(log)
    assert len([r for r in records if r.recipient == "echo"]) == 6
    result = replay(log)
    assert result.identical, result.summary()


async def test_a_message_retried_after_a_crash_is_logged_as_delivered_twice(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    system = ActorSystem(clock=ManualClock(), recorder=Recorder(log))
    flaky = system.spawn(CoreActor(FlakyEcho(), kind="test.flaky-echo"), name="flaky")
    sink = GatedSink()
    sink.gate.set()
    system.spawn(sink, name="sink")
    async with system:
        for name in ("a", "once", "b", "boom", "c"):
            await flaky.tell(queued(name))
        await system.wait_idle()
    assert [m.request_id for m in sink.seen if isinstance(m, RequestQueued)] == ["a", "once", "b", "c"]
    _, records = read_log(log)
    to_flaky = [r for r in records if r.recipient == "flaky"]
    first = {r.message.request_id: r.seq for r in to_flaky if r.redelivery_of is None}  # type: ignore[attr-defined]
    again = {r.message.request_id: r.redelivery_of for r in to_flaky if r.redelivery_of is not None}  # type: ignore[attr-defined]
    assert sorted(first) == ["a", "b", "boom", "c", "once"]
    assert again == {"once": first["once"], "boom": first["boom"]}  # the retry is a delivery of its own
    result = replay(log)
    assert result.identical, result.summary()
    assert result.inputs == 7


async def test_replay_reports_a_crash_the_log_does_not_show(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    system = ActorSystem(clock=ManualClock(), recorder=Recorder(log))
    echo = system.spawn(CoreActor(Echo(), kind="test.echo"), name="echo")
    sink = GatedSink()
    sink.gate.set()
    system.spawn(sink, name="sink")
    async with system:
        await echo.tell(queued("once"))
        await system.wait_idle()
    result = replay(log, cores={"echo": lambda header: FlakyEcho()})
    assert result.divergence is not None
    assert "first try fails" in result.divergence.error


async def test_a_crash_that_stops_the_system_replays_as_the_same_crash(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    system = ActorSystem(clock=ManualClock(), recorder=Recorder(log))
    flaky = system.spawn(
        CoreActor(FlakyEcho(), kind="test.flaky-echo"), name="flaky", supervision=RestartPolicy.never()
    )
    sink = GatedSink()
    sink.gate.set()
    system.spawn(sink, name="sink")
    with pytest.raises(ActorCrashed):  # noqa: PT012
        async with system:
            await flaky.tell(queued("a"))
            await flaky.tell(queued("boom"))
            await anyio.sleep_forever()
    result = replay(log)
    assert result.identical, result.summary()
    result = replay(log, cores={"flaky": lambda header: Echo()})  # a core that does not crash there
    assert result.divergence is not None
    _, records = read_log(log)
    (boom,) = [r.seq for r in records if r.recipient == "flaky" and r.message == queued("boom")]
    assert f"crash on record {boom} that the replay did not reproduce" in result.divergence.error
