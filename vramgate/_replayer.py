"""Replaying one run of a message log: feed each core its recorded inputs, compare what it sends with the log."""

from __future__ import annotations

import collections
from collections.abc import Mapping

import msgspec

from vramgate.actors.core import Core, Reply, Send
from vramgate.messages import ActorFailed, LogClosed, LogHeader, LogRecord, Message, encode_json


class Divergence(msgspec.Struct, frozen=True):
    """The first difference between the log and the replay.

    ``seq`` is the sequence number of the recorded record that differs (for an output the replay produced but
    the log lacks, the seq of the input that produced it). ``expected`` is the recorded record (``None`` when
    the log has none), ``got`` what the core produced (``None`` when it produced nothing), ``error`` the
    exception a core raised, if any.
    """

    seq: int
    actor: str
    expected: LogRecord[Message] | None
    got: LogRecord[Message] | None
    error: str = ""

    def describe(self) -> str:
        def show(record: LogRecord[Message] | None) -> str:
            if record is None:
                return "nothing"
            return encode_json(
                {"recipient": record.recipient, "correlation_id": record.correlation_id, "message": record.message}
            ).decode()

        text = f"divergence at seq {self.seq} (actor {self.actor!r}): expected {show(self.expected)}"
        if self.error:
            return f"{text}, got an error: {self.error}"
        return f"{text}, got {show(self.got)}"


Records = collections.deque[LogRecord[Message]]


class RunReplay:
    """One run: its cores, the outputs they produced that the log has not shown yet, and crashes in progress.

    A core that raises on a record it gets for the first time crashed as its actor did when the log shows that
    record delivered again (``redelivery_of``); until then the core's later inputs wait, since the runtime
    offered the crashed-on message again before them. A core that raises on a redelivery made a dead letter.
    """

    def __init__(self, header: LogHeader, cores: Mapping[str, Core]) -> None:
        self.cores = dict(cores)
        self.pending: dict[str, Records] = {name: collections.deque() for name in self.cores}
        self.crashed: dict[str, tuple[int, str]] = {}
        self.held: dict[str, Records] = {}
        self.raised: dict[str, int] = {}
        self.last_seq = header.first_seq - 1
        self.closed = False
        self.unfinished: frozenset[int] = frozenset()
        self.records = self.inputs = self.outputs = 0

    def feed(self, record: LogRecord[Message]) -> Divergence | None:
        """Take the next record of the run; the divergence it shows, if any."""
        self.last_seq = record.seq
        message = record.message
        if type(message) is LogClosed:
            self.closed = True
            self.unfinished = frozenset(message.unfinished)
            return None
        if type(message) is ActorFailed and record.recipient in self.cores:
            return self._failed(record.recipient, record, message)
        self.records += 1
        sender = record.sender
        if sender in self.cores:
            queue = self.pending[sender]
            if not queue:
                crash = self.crashed.get(sender)
                return Divergence(record.seq, sender, record, None, error=crash[1] if crash is not None else "")
            got = queue.popleft()
            if (
                got.recipient != record.recipient
                or got.correlation_id != record.correlation_id
                or got.message != record.message
            ):
                return Divergence(record.seq, sender, record, got)
            self.outputs += 1
        if record.recipient in self.cores:
            return self._input(record.recipient, record)
        return None

    def finish(self) -> Divergence | None:
        """The end of the run: what the cores still owe is a divergence only when the run closed its log, and then
        not for the inputs it lists as unfinished (their actors never finished handling them)."""
        if not self.closed:
            return None
        unfinished = self.unfinished
        for name, (seq, error) in self.crashed.items():
            if seq not in unfinished:
                return Divergence(seq, name, None, None, error=error)
        for name, queue in self.pending.items():
            for owed in queue:
                if owed.seq not in unfinished:
                    return Divergence(owed.seq, name, None, owed)
        return None

    def owed(self) -> int:
        """Outputs the cores produced that the log does not hold (a run cut short)."""
        return sum(len(queue) for queue in self.pending.values())

    def _input(self, name: str, record: LogRecord[Message]) -> Divergence | None:
        crash = self.crashed.get(name)
        if crash is not None:
            if record.redelivery_of != crash[0]:
                self.held.setdefault(name, collections.deque()).append(record)
                return None
            del self.crashed[name]
            divergence = self._handle(name, record)
            held = self.held.pop(name, None)
            while divergence is None and held:
                if name in self.crashed:
                    self.held.setdefault(name, collections.deque()).extend(held)
                    break
                divergence = self._input(name, held.popleft())
            return divergence
        if record.redelivery_of is not None:
            error = f"the log shows a crash on record {record.redelivery_of} that the replay did not reproduce"
            return Divergence(record.seq, name, record, None, error=error)
        return self._handle(name, record)

    def _failed(self, name: str, record: LogRecord[Message], failed: ActorFailed) -> Divergence | None:
        """The run stopped because this actor crashed on ``failed.seq``: the replay's core must have, too."""
        if self.raised.get(name) != failed.seq:
            error = f"the log shows a crash on record {failed.seq} that the replay did not reproduce"
            return Divergence(record.seq, name, record, None, error=error)
        self.crashed.pop(name, None)
        self.held.pop(name, None)
        return None

    def _handle(self, name: str, record: LogRecord[Message]) -> Divergence | None:
        self.inputs += 1
        try:
            produced = self.cores[name].handle(record.message, record.at)
        except Exception as exc:
            self.raised[name] = record.seq
            if record.redelivery_of is None:
                self.crashed[name] = (record.seq, repr(exc))
            return None  # a crash on a redelivery made a dead letter, as it did in the run
        queue = self.pending[name]
        for output in produced:
            if type(output) is Send:
                to, corr = output.to, None
            elif type(output) is Reply:
                to, corr = record.sender, record.correlation_id
            else:
                return Divergence(record.seq, name, None, None, error=f"not an output: {output!r}")
            queue.append(
                LogRecord(
                    seq=record.seq,
                    at=record.at,
                    sender=name,
                    recipient=to,
                    message=output.message,
                    correlation_id=corr,
                )
            )
        return None
