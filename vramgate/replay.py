"""Read recorded message logs and replay them through the sans-io cores that made the decisions.

A log (see :class:`~vramgate.actors.Recorder`) is a :class:`LogHeader` line, then one :class:`LogRecord` per
message, in sequence order. :func:`replay` rebuilds every core named in the header, feeds each one, in order,
the records addressed to its actor (``now`` is the record's time), and checks that what the core returns is what
its actor was recorded sending: same recipient, message and correlation id, in the same order.

Cores are rebuilt by kind: a module that defines a core calls :func:`register_core_kind` with a factory that
takes the header and the core's :class:`CoreSpec` (its recorded config). A header only names kinds: the built-in
ones are found in this package's own table, others must be registered (``vramgate replay --import MODULE``); a
module a header names is never imported.
"""

from __future__ import annotations

import collections
import importlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import msgspec

from vramgate.actors.core import Core, Reply, Send
from vramgate.errors import DecodeError, ReplayError
from vramgate.messages import SCHEMA_VERSION, LogHeader, LogRecord, Message, encode_json, log_line_codec
from vramgate.messages.log import CoreSpec

#: Builds a core for one actor from the log header.
CoreFactory = Callable[[LogHeader], Core]
#: Builds a core of a registered kind from the header and the core's recorded spec.
KindFactory = Callable[[LogHeader, CoreSpec], Core]

_KINDS: dict[str, KindFactory] = {}
#: The modules that register the built-in core kinds (imported on demand, from this table only).
_BUILT_IN: dict[str, str] = {
    "admission": "vramgate.actors.admission",
    "estimator": "vramgate.actors.estimator",
    "optimizer": "vramgate.actors.optimizer",
}


def register_core_kind(kind: str, factory: KindFactory) -> None:
    """Register how to rebuild cores of ``kind`` (the ``kind`` a :class:`~vramgate.actors.CoreActor` records)."""
    if not kind:
        raise ValueError("core kind must not be empty")
    _KINDS[kind] = factory


def core_kinds() -> tuple[str, ...]:
    """The registered core kinds, the built-in ones included."""
    return tuple(sorted({*_KINDS, *_BUILT_IN}))


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


class ReplayResult(msgspec.Struct, frozen=True):
    """The outcome of :func:`replay`: ``records`` read, ``inputs`` fed to cores, ``outputs`` compared."""

    identical: bool
    records: int
    inputs: int
    outputs: int
    cores: tuple[str, ...]
    divergence: Divergence | None = None

    def summary(self) -> str:
        """One line: identical, or where it diverged."""
        if self.divergence is not None:
            return self.divergence.describe()
        return (
            f"identical: {self.records} records, {self.inputs} inputs to {len(self.cores)} cores "
            f"({', '.join(self.cores) or 'none'}), {self.outputs} outputs reproduced"
        )


def read_log(path: str | os.PathLike[str]) -> tuple[LogHeader, Iterator[LogRecord[Message]]]:
    """Read a message log: its header, and an iterator over its records.

    Raises :class:`~vramgate.errors.DecodeError` with the line number on a corrupt, truncated or out-of-order
    line (the header at once, records as the iterator reaches them).
    """
    source = str(path)
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    codec = log_line_codec()
    number = 0
    header: LogHeader | None = None
    for number, raw in enumerate(lines, start=1):
        if raw.strip():
            first = _decode_line(codec.decode_json, raw, number, source, last=number == len(lines))
            if not isinstance(first, LogHeader):
                raise DecodeError("the first line of a log must be a LogHeader", line=number, source=source)
            header = first
            break
    if header is None:
        raise DecodeError("empty log: no LogHeader line", line=max(number, 1), source=source)
    if header.schema_version > SCHEMA_VERSION:
        raise DecodeError(
            f"log schema version {header.schema_version} is newer than this vramgate's ({SCHEMA_VERSION})",
            path="$.schema_version",
            line=number,
            source=source,
        )
    return header, _records(lines, number, source)


def _decode_line(
    decode: Callable[..., LogHeader | LogRecord[Message]], raw: bytes, number: int, source: str, *, last: bool
) -> LogHeader | LogRecord[Message]:
    try:
        return decode(raw, line=number, source=source)
    except DecodeError as exc:
        if last:  # the last line of a complete log ends with a newline
            raise DecodeError(f"truncated line ({exc.reason})", path=exc.path, line=number, source=source) from None
        raise


def _records(lines: list[bytes], after: int, source: str) -> Iterator[LogRecord[Message]]:
    decode = log_line_codec().decode_json
    previous = 0
    count = len(lines)
    for index in range(after, count):
        raw = lines[index]
        if not raw.strip():
            continue
        number = index + 1
        record = _decode_line(decode, raw, number, source, last=number == count)
        if not isinstance(record, LogRecord):
            raise DecodeError("a LogHeader may only be the first line", line=number, source=source)
        if record.seq <= previous:
            raise DecodeError(
                f"sequence number {record.seq} does not follow {previous}", path="$.seq", line=number, source=source
            )
        previous = record.seq
        yield record


def _factories(header: LogHeader) -> dict[str, CoreFactory]:
    factories: dict[str, CoreFactory] = {}
    for spec in header.cores:
        kind_factory = _KINDS.get(spec.kind)
        if kind_factory is None and spec.kind in _BUILT_IN:
            importlib.import_module(_BUILT_IN[spec.kind])  # registers its kinds
            kind_factory = _KINDS.get(spec.kind)
        if kind_factory is None:
            raise ReplayError(
                f"no core factory registered for kind {spec.kind!r} (actor {spec.name!r}); "
                f"known kinds: {', '.join(core_kinds()) or 'none'}"
            )
        factories[spec.name] = _bind(kind_factory, spec)
    return factories


def _build(factories: Mapping[str, CoreFactory], header: LogHeader) -> dict[str, Core]:
    """Build every core; a factory that fails on the recorded config is a :class:`ReplayError` naming the core."""
    built: dict[str, Core] = {}
    for name, factory in factories.items():
        try:
            built[name] = factory(header)
        except (ValueError, TypeError, KeyError, LookupError, AttributeError, msgspec.ValidationError) as exc:
            spec = header.core(name)
            kind = f" (kind {spec.kind!r})" if spec is not None else ""
            raise ReplayError(f"cannot rebuild core {name!r}{kind} from the log header: {exc!r}") from None
    return built


def _bind(factory: KindFactory, spec: CoreSpec) -> CoreFactory:
    return lambda header: factory(header, spec)


def replay(path: str | os.PathLike[str], cores: Mapping[str, CoreFactory] | None = None) -> ReplayResult:
    """Replay the log at ``path`` through fresh cores and compare their outputs with the recorded ones.

    ``cores`` maps actor names to factories; by default every core listed in the log header is rebuilt from
    the registered kinds. Raises :class:`~vramgate.errors.DecodeError` on a corrupt log and
    :class:`~vramgate.errors.ReplayError` when a core cannot be rebuilt.
    """
    header, records = read_log(path)
    factories = dict(cores) if cores is not None else _factories(header)
    built = _build(factories, header)
    pending: dict[str, collections.deque[LogRecord[Message]]] = {name: collections.deque() for name in built}
    names = tuple(built)
    count = inputs = outputs = 0

    def result(divergence: Divergence | None) -> ReplayResult:
        return ReplayResult(
            identical=divergence is None,
            records=count,
            inputs=inputs,
            outputs=outputs,
            cores=names,
            divergence=divergence,
        )

    for record in records:
        count += 1
        sender = record.sender
        if sender in built:
            queue = pending[sender]
            if not queue:
                return result(Divergence(record.seq, sender, record, None))
            got = queue.popleft()
            if (
                got.recipient != record.recipient
                or got.correlation_id != record.correlation_id
                or got.message != record.message
            ):
                return result(Divergence(record.seq, sender, record, got))
            outputs += 1
        recipient = record.recipient
        core = built.get(recipient)
        if core is not None:
            inputs += 1
            try:
                produced = core.handle(record.message, record.at)
            except Exception as exc:
                return result(Divergence(record.seq, recipient, None, None, error=repr(exc)))
            queue = pending[recipient]
            for output in produced:
                if type(output) is Send:
                    to, corr = output.to, None
                elif type(output) is Reply:
                    to, corr = record.sender, record.correlation_id
                else:
                    return result(Divergence(record.seq, recipient, None, None, error=f"not an output: {output!r}"))
                queue.append(
                    LogRecord(
                        seq=record.seq,
                        at=record.at,
                        sender=recipient,
                        recipient=to,
                        message=output.message,
                        correlation_id=corr,
                    )
                )
    for name, queue in pending.items():
        if queue:
            extra = queue[0]
            return result(Divergence(extra.seq, name, None, extra))
    return result(None)
