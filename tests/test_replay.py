"""Recording and replay: a scripted run of a small actor system replays to identical decisions."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from vramgate.actors import Actor, ActorSystem, CoreActor, Envelope, Output, Recorder, Reply, Send
from vramgate.cli import main
from vramgate.clock import ManualClock
from vramgate.errors import DecodeError, ReplayError
from vramgate.messages import (
    CleanupReport,
    GenerationRequest,
    LogHeader,
    LogRecord,
    Message,
    RequestAccepted,
    RequestEnded,
    RequestQueued,
    encode_json,
    log_line_codec,
)
from vramgate.messages.log import CoreSpec
from vramgate.replay import read_log, read_runs, register_core_kind, replay

# ------------------------------------------------------------------ a small example system


class Doorman:
    """Numbers incoming requests, answers the asker, and queues them at the ledger."""

    def __init__(self) -> None:
        self.count = 0

    def handle(self, message: Message, now: float) -> Sequence[Output]:
        assert isinstance(message, GenerationRequest)
        self.count += 1
        request_id = f"req-{self.count}"
        return [
            Reply(RequestAccepted(request_id=request_id, request=message)),
            Send("ledger", RequestQueued(request_id=request_id, position=self.count)),
        ]


class Ledger:
    """Runs at most ``slots`` requests; a periodic cleanup tick frees one slot and starts the next waiting one."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.running: list[str] = []
        self.waiting: list[str] = []

    def handle(self, message: Message, now: float) -> Sequence[Output]:
        if isinstance(message, RequestQueued):
            if len(self.running) < self.slots:
                self.running.append(message.request_id)
                return [Send("sink", RequestEnded(request_id=message.request_id, state="completed", reason=f"{now}"))]
            self.waiting.append(message.request_id)
            return [Send("sink", RequestQueued(request_id=message.request_id, position=len(self.waiting)))]
        if isinstance(message, CleanupReport) and self.running:
            self.running.pop(0)
            if self.waiting:
                started = self.waiting.pop(0)
                self.running.append(started)
                return [Send("sink", RequestEnded(request_id=started, state="completed", reason=f"{now}"))]
        return []


class TickingLedger(CoreActor):
    async def on_start(self) -> None:
        self.context.send_every(1.0, CleanupReport(trigger="proactive"))


class Sink(Actor[Message]):
    def __init__(self) -> None:
        self.seen: list[Message] = []

    async def receive(self, message: Message, envelope: Envelope) -> None:
        self.seen.append(message)


register_core_kind("example.doorman", lambda header, spec: Doorman())
register_core_kind("example.ledger", lambda header, spec: Ledger(slots=int(spec.config["slots"])))


def request(i: int) -> GenerationRequest:
    return GenerationRequest(model="t2v-A14B", width=1280, height=720, frames=81, steps=40 + i)


async def record_run(target: Path | io.BytesIO) -> list[Message]:
    clock = ManualClock()
    system = ActorSystem(clock=clock, recorder=Recorder(target), note="example", config={"run": 1})
    doorman = system.spawn(CoreActor(Doorman(), kind="example.doorman"), name="doorman")
    system.spawn(TickingLedger(Ledger(slots=2), kind="example.ledger", config={"slots": 2}), name="ledger")
    sink = Sink()
    system.spawn(sink, name="sink")
    async with system:
        for i in range(6):
            accepted = await doorman.ask(request(i), timeout=5)
            assert isinstance(accepted, RequestAccepted)
            await system.wait_idle()
            if i % 2:
                clock.advance(1.0)
                await anyio.wait_all_tasks_blocked()
                await system.wait_idle()
    return sink.seen


pytestmark = pytest.mark.anyio


# ------------------------------------------------------------------ recording


async def test_recording_twice_gives_byte_identical_logs(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", io.BytesIO()
    seen = await record_run(first)
    assert len(seen) == 6 + 2  # six answers and two slots freed by ticks
    await record_run(second)
    data = first.read_bytes()
    assert data == second.getvalue()
    header, records = read_log(first)
    assert header.note == "example"
    assert header.config == {"run": 1}
    assert [(c.name, c.kind, c.config) for c in header.cores] == [
        ("doorman", "example.doorman", {}),
        ("ledger", "example.ledger", {"slots": 2}),
    ]
    rows = list(records)
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    assert any(r.sender == "timer" and r.recipient == "ledger" for r in rows)
    asks = [r for r in rows if r.sender == "external"]
    replies = [r for r in rows if r.recipient == "external"]
    assert [r.correlation_id for r in asks] == [r.correlation_id for r in replies] == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------ replay


async def test_replay_reproduces_every_decision(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    await record_run(log)
    result = replay(log)
    assert result.identical, result.summary()
    assert result.cores == ("doorman", "ledger")
    assert result.inputs == 6 + 6 + 3  # asks to the doorman; the ledger: six queued, three ticks
    assert result.records == 6 + 6 + 6 + 3 + 8  # asks, replies, queued, ticks, sink
    assert result.outputs == 12 + 8
    assert result.summary().startswith("identical: ")
    _, records = read_log(log)
    assert result.records == len(list(records))


def _alter(log: Path, match: str, old: str, new: str) -> int:
    """Change the first line containing ``match``; returns its seq."""
    lines = log.read_bytes().split(b"\n")
    for index, line in enumerate(lines):
        if match.encode() in line:
            lines[index] = line.replace(old.encode(), new.encode())
            log.write_bytes(b"\n".join(lines))
            record = log_line_codec().decode_json(lines[index])
            assert isinstance(record, LogRecord)
            return record.seq
    raise AssertionError(f"no line contains {match}")


async def test_an_altered_output_is_reported_at_its_sequence_number(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    await record_run(log)
    seq = _alter(log, '"sender":"ledger","recipient":"sink","message":{"type":"RequestQueued"', "req-", "REQ-")
    result = replay(log)
    assert not result.identical
    assert result.divergence is not None
    assert result.divergence.seq == seq
    assert result.divergence.actor == "ledger"
    assert result.divergence.expected is not None
    assert result.divergence.got is not None
    assert result.divergence.expected.message != result.divergence.got.message
    assert f"divergence at seq {seq}" in result.summary()


async def test_a_changed_core_diverges_and_a_missing_output_is_reported(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    await record_run(log)

    class Greedy(Ledger):  # a ledger with more slots decides differently
        pass

    result = replay(log, cores={"ledger": lambda header: Greedy(slots=3), "doorman": lambda header: Doorman()})
    assert result.divergence is not None
    assert result.divergence.actor == "ledger"

    class Mute(Doorman):
        def handle(self, message: Message, now: float) -> Sequence[Output]:
            return list(super().handle(message, now))[:1]

    result = replay(log, cores={"doorman": lambda header: Mute()})
    assert result.divergence is not None
    assert result.divergence.got is None
    assert result.divergence.expected is not None
    assert result.divergence.expected.recipient == "ledger"


async def test_cli_replay(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    await record_run(log)
    runner = CliRunner()
    ok = runner.invoke(main, ["replay", str(log)])
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("identical: ")
    assert ok.output.count("\n") == 1
    seq = _alter(log, '"recipient":"external"', "req-", "other-")
    bad = runner.invoke(main, ["replay", str(log)])
    assert bad.exit_code == 1
    assert f"divergence at seq {seq} (actor 'doorman')" in bad.output


# ------------------------------------------------------------------ corrupt logs


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def _good_lines() -> list[bytes]:
    header = encode_json(LogHeader(cores=(CoreSpec(name="doorman", kind="example.doorman"),)))
    records = [
        encode_json(
            LogRecord(
                seq=i, at=0.0, sender="external", recipient="sink", message=RequestQueued(request_id="a", position=1)
            )
        )
        for i in (1, 2, 3)
    ]
    return [header, *records]


def test_corrupt_line_is_reported_with_its_line_number(tmp_path: Path) -> None:
    lines = _good_lines()
    lines[2] = lines[2].replace(b'"position":1', b'"position":0')
    log = _write(tmp_path / "bad.jsonl", lines)
    _, records = read_log(log)
    with pytest.raises(DecodeError) as info:
        list(records)
    assert (info.value.line, info.value.path) == (3, "$.message.position")
    runner = CliRunner()
    out = runner.invoke(main, ["replay", str(log)])
    assert out.exit_code == 2
    assert "line 3: $.message.position" in out.output


def test_a_torn_last_line_ends_the_records_and_is_reported(tmp_path: Path) -> None:
    lines = _good_lines()
    log = tmp_path / "cut.jsonl"
    log.write_bytes(b"\n".join(lines)[:-20])
    _, records = read_log(log)
    assert [r.seq for r in records] == [1, 2]
    result = replay(log)
    assert result.identical
    assert result.records == 2
    assert result.truncated == ("line 4",)
    out = CliRunner().invoke(main, ["replay", str(log)])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("identical: 2 records")
    assert "truncated tail at line 4" in out.output


async def test_a_run_recorded_until_a_torn_line_replays_up_to_it(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    await record_run(log)
    data = log.read_bytes().split(b"\n")
    kept = data[:-3]  # drop the closing record and the line before it
    torn = data[-3][: len(data[-3]) // 2]
    log.write_bytes(b"\n".join([*kept, torn]))
    result = replay(log)
    assert result.identical, result.summary()
    assert result.truncated == (f"line {len(kept) + 1}",)
    assert result.unclosed == 1
    assert "truncated tail at line" in result.summary()


def test_header_and_order_are_checked(tmp_path: Path) -> None:
    lines = _good_lines()
    with pytest.raises(DecodeError, match="first line of a log must be a LogHeader"):
        read_log(_write(tmp_path / "a.jsonl", lines[1:]))
    with pytest.raises(DecodeError, match="empty log"):
        read_log(_write(tmp_path / "b.jsonl", []))
    with pytest.raises(DecodeError, match="sequence number 1 does not follow 2") as info:
        list(read_log(_write(tmp_path / "c.jsonl", [lines[0], lines[1], lines[2], lines[1]]))[1])
    assert info.value.line == 4
    with pytest.raises(DecodeError, match=r"record 2 is missing \(sequence number 3 follows 1\)") as info:
        list(read_log(_write(tmp_path / "d.jsonl", [lines[0], lines[1], lines[3]]))[1])
    assert info.value.line == 3
    out = CliRunner().invoke(main, ["replay", str(tmp_path / "d.jsonl")])
    assert out.exit_code == 2
    assert "record 2 is missing" in out.output
    _, records = read_log(_write(tmp_path / "e.jsonl", [lines[0], lines[1], lines[0], lines[1], lines[2]]))
    assert [r.seq for r in records] == [1, 1, 2]  # a second header starts a second run: its records follow
    runs = [(header, [r.seq for r in run]) for header, run in read_runs(tmp_path / "e.jsonl")]
    assert [seqs for _, seqs in runs] == [[1], [1, 2]]
    assert all(isinstance(header, LogHeader) for header, _ in runs)
    assert replay(tmp_path / "e.jsonl").runs == 2


def test_unknown_core_kind_is_a_clear_error(tmp_path: Path) -> None:
    header = encode_json(LogHeader(cores=(CoreSpec(name="x", kind="no.such.kind", module="vramgate.nothing"),)))
    log = _write(tmp_path / "k.jsonl", [header])
    with pytest.raises(ReplayError, match=r"no core factory registered for kind 'no.such.kind' \(actor 'x'\)"):
        replay(log)
