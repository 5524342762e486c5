"""The message log on disk: compact records (written by the recorder, expanded by the reader) and the reader.

A log file holds one or more *segments*, each a :class:`LogHeader` line then :class:`LogRecord` lines. A run
starts with a header of ``segment`` 0; when the file reaches its size limit the recorder moves it to ``PATH.1``
(older ones to ``PATH.2`` ...) and goes on in a fresh ``PATH`` whose header continues the run (``segment`` 1, 2
..., ``first_seq`` its first record). A restarted process appends a new run to the same file.

Three things are written compactly and expanded on reading, so that readers see every message as it was
delivered:

* a :class:`ResourceSample` that equals the previous one to the same recipient in the segment but for its time
  stamp ``at`` (and perhaps its host figures) is written as :class:`SameSample` (``at``, and ``host`` when it
  changed): the stamp still refreshes what admission sees as fresh, so it is kept;
* a request prompt of :data:`TEXT_MIN` characters or more is written once per segment; a later record that
  carries the same prompt writes it empty and names, in ``refs``, the record that holds it;
* so is the closest plan a rejection explains itself with (``best_plan``), when the segment already holds it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from vramgate.errors import DecodeError
from vramgate.messages import (
    SCHEMA_VERSION,
    GenerationRequest,
    LogHeader,
    LogRecord,
    Message,
    Plan,
    RequestRejected,
    ResourceSample,
    SameSample,
    log_line_codec,
)
from vramgate.messages.optimization import PlanDoesNotFit

#: Prompts shorter than this are written in full every time (a reference would not be much smaller).
TEXT_MIN = 64
#: How many distinct prompts (and closest plans) a segment remembers for references (the oldest is forgotten first).
TEXT_TABLE = 4096
_PLAN_KEY = "best_plan"
_encode_plan = msgspec.json.Encoder(order="deterministic").encode


def _remember(table: dict[Any, int], key: Any, seq: int) -> int | None:
    """The seq that holds ``key`` if the table has it; else remember ``seq`` for it (forgetting the oldest)."""
    held = table.get(key)
    if held is None:
        table[key] = seq
        if len(table) > TEXT_TABLE:
            del table[next(iter(table))]
    return held


Line = LogHeader | LogRecord[Message]


def _carried(message: Message) -> tuple[str, GenerationRequest] | None:
    """The request a message carries (itself, or its ``request`` field) with its path, if any."""
    if type(message) is GenerationRequest:
        return "", message
    request = getattr(message, "request", None)
    if type(request) is GenerationRequest:
        return "request", request
    return None


def _with_request(message: Message, path: str, request: GenerationRequest) -> Message:
    if not path:
        return request
    replaced: Message = msgspec.structs.replace(message, **{path: request})
    return replaced


class Compactor:
    """The writing side: what a record becomes on disk. One per segment (:meth:`reset` at each header)."""

    def __init__(self) -> None:
        self._samples: dict[str, ResourceSample] = {}
        self._texts: dict[str, int] = {}
        self._plans: dict[bytes, int] = {}

    def reset(self) -> None:
        self._samples.clear()
        self._texts.clear()
        self._plans.clear()

    def compact(self, record: LogRecord[Message]) -> LogRecord[Message]:
        message = record.message
        kind = type(message)
        if kind is ResourceSample:
            return self._compact_sample(record, message)  # type: ignore[arg-type]
        if kind is GenerationRequest or "request" in kind.__struct_fields__:
            return self._compact_texts(record)
        if kind is RequestRejected or kind is PlanDoesNotFit:
            return self._compact_plan(record)
        return record

    def _compact_plan(self, record: LogRecord[Message]) -> LogRecord[Message]:
        message = record.message
        plan = getattr(message, _PLAN_KEY)
        if plan is None:
            return record
        held = _remember(self._plans, _encode_plan(plan), record.seq)
        if held is None or type(message) is not RequestRejected:  # PlanDoesNotFit's plan is not optional
            return record
        message = msgspec.structs.replace(message, best_plan=None)
        return msgspec.structs.replace(record, message=message, refs={_PLAN_KEY: held})

    def _compact_sample(self, record: LogRecord[Message], sample: ResourceSample) -> LogRecord[Message]:
        previous = self._samples.get(record.recipient)
        self._samples[record.recipient] = sample
        if previous is None:
            return record
        same: SameSample | None = None
        if msgspec.structs.replace(previous, at=sample.at) == sample:
            same = SameSample(at=sample.at)
        elif msgspec.structs.replace(previous, at=sample.at, host=sample.host) == sample:
            same = SameSample(at=sample.at, host=sample.host)
        return record if same is None else msgspec.structs.replace(record, message=same)

    def _compact_texts(self, record: LogRecord[Message]) -> LogRecord[Message]:
        carried = _carried(record.message)
        if carried is None or len(carried[1].prompt) < TEXT_MIN:
            return record
        path, request = carried
        held = _remember(self._texts, request.prompt, record.seq)
        if held is None:
            return record
        message = _with_request(record.message, path, msgspec.structs.replace(request, prompt=""))
        return msgspec.structs.replace(record, message=message, refs={path or ".": held})


class Expander:
    """The reading side: the record as it was delivered. Mirrors :class:`Compactor` exactly."""

    def __init__(self) -> None:
        self._samples: dict[str, ResourceSample] = {}
        self._texts: dict[str, int] = {}
        self._by_seq: dict[int, str] = {}
        self._plans: dict[bytes, int] = {}
        self._plans_by_seq: dict[int, Plan] = {}

    def reset(self) -> None:
        self._samples.clear()
        self._texts.clear()
        self._by_seq.clear()
        self._plans.clear()
        self._plans_by_seq.clear()

    def expand(self, record: LogRecord[Message], number: int, source: str) -> LogRecord[Message]:
        message = record.message
        kind = type(message)
        if kind is SameSample:
            assert isinstance(message, SameSample)
            previous = self._samples.get(record.recipient)
            if previous is None:
                raise DecodeError(
                    f"SameSample with no ResourceSample to {record.recipient!r} before it in its segment",
                    line=number,
                    source=source,
                )
            if message.host is msgspec.UNSET:
                sample = msgspec.structs.replace(previous, at=message.at)
            else:
                sample = msgspec.structs.replace(previous, at=message.at, host=message.host)
            self._samples[record.recipient] = sample
            return msgspec.structs.replace(record, message=sample)
        if kind is ResourceSample:
            assert isinstance(message, ResourceSample)
            self._samples[record.recipient] = message
            return record
        refs = record.refs
        if kind is RequestRejected or kind is PlanDoesNotFit:
            return self._expand_plan(record, refs, number, source)
        carried = _carried(message)
        if refs is not None:
            return self._resolve(record, refs, carried, number, source)
        if carried is not None and len(carried[1].prompt) >= TEXT_MIN:
            text = carried[1].prompt
            if text not in self._texts:
                self._texts[text] = record.seq
                self._by_seq[record.seq] = text
                if len(self._texts) > TEXT_TABLE:
                    oldest = next(iter(self._texts))
                    del self._by_seq[self._texts.pop(oldest)]
        return record

    def _expand_plan(
        self, record: LogRecord[Message], refs: dict[str, int] | None, number: int, source: str
    ) -> LogRecord[Message]:
        message = record.message
        if refs is not None:
            plan = self._plans_by_seq.get(refs.get(_PLAN_KEY, -1))
            if plan is None or set(refs) != {_PLAN_KEY} or getattr(message, _PLAN_KEY) is not None:
                raise DecodeError(
                    f"refs {dict(refs)} name no plan this segment holds", path="$.refs", line=number, source=source
                )
            message = msgspec.structs.replace(message, best_plan=plan)
            return msgspec.structs.replace(record, message=message, refs=None)
        plan = getattr(message, _PLAN_KEY)
        if plan is not None and _remember(self._plans, _encode_plan(plan), record.seq) is None:
            self._plans_by_seq[record.seq] = plan
            if len(self._plans_by_seq) > TEXT_TABLE:
                del self._plans_by_seq[next(iter(self._plans_by_seq))]
        return record

    def _resolve(
        self,
        record: LogRecord[Message],
        refs: dict[str, int],
        carried: tuple[str, GenerationRequest] | None,
        number: int,
        source: str,
    ) -> LogRecord[Message]:
        path = "" if carried is None else carried[0] or "."
        seq = refs.get(path)
        text = self._by_seq.get(seq) if seq is not None else None
        if carried is None or text is None or len(refs) != 1 or carried[1].prompt:
            raise DecodeError(
                f"refs {dict(refs)} name no prompt this segment holds", path="$.refs", line=number, source=source
            )
        message = _with_request(record.message, carried[0], msgspec.structs.replace(carried[1], prompt=text))
        return msgspec.structs.replace(record, message=message, refs=None)


# ---------------------------------------------------------------------- files and lines


def backup_path(path: str | os.PathLike[str], index: int) -> Path:
    """Where the ``index``-th newest rotated segment of the log at ``path`` lives (``PATH.1`` the newest)."""
    base = Path(path)
    return base.with_name(f"{base.name}.{index}")


def log_files(path: str | os.PathLike[str]) -> list[Path]:
    """The log at ``path`` and its rotated segments that exist, oldest first."""
    files: list[Path] = []
    index = 1
    while (backup := backup_path(path, index)).exists():
        files.append(backup)
        index += 1
    files.reverse()
    files.append(Path(path))
    return files


def iter_log(path: str | os.PathLike[str], truncated: list[int]) -> Iterator[Line]:
    """The headers and (expanded) records of one log file, in order.

    A line that cannot be decoded is a torn tail when it is the file's last line or the next line starts a new
    run (a process that restarted after a crash appends after it): its line number goes into ``truncated`` and
    reading goes on. Anywhere else it raises :class:`DecodeError` with its line number. So do a first line that
    is not a header, a newer format, and records whose sequence numbers go back or skip (records lost).
    """
    source = str(path)
    lines = Path(path).read_bytes().split(b"\n")
    decode = log_line_codec().decode_json
    expander = Expander()
    header: LogHeader | None = None
    previous = 0
    count = len(lines)
    index = 0
    while index < count:
        raw = lines[index]
        index += 1
        if not raw.strip():
            continue
        number = index
        try:
            line = decode(raw, line=number, source=source)
        except DecodeError:
            following = _next_line(lines, index)
            if following is None or isinstance(_try_decode(lines[following]), LogHeader):
                truncated.append(number)
                continue
            raise
        if isinstance(line, LogHeader):
            if line.schema_version > SCHEMA_VERSION:
                raise DecodeError(
                    f"log schema version {line.schema_version} is newer than this vramgate's ({SCHEMA_VERSION})",
                    path="$.schema_version",
                    line=number,
                    source=source,
                )
            header = line
            previous = line.first_seq - 1
            expander.reset()
            yield line
            continue
        if header is None:
            raise DecodeError("the first line of a log must be a LogHeader", line=number, source=source)
        seq = line.seq
        if seq <= previous:
            raise DecodeError(
                f"sequence number {seq} does not follow {previous}", path="$.seq", line=number, source=source
            )
        if seq != previous + 1 and header.schema_version >= 2:
            missing = f"record {previous + 1} is" if seq == previous + 2 else f"records {previous + 1}..{seq - 1} are"
            raise DecodeError(
                f"{missing} missing (sequence number {seq} follows {previous})",
                path="$.seq",
                line=number,
                source=source,
            )
        previous = seq
        yield expander.expand(line, number, source)
    if header is None:
        raise DecodeError("empty log: no LogHeader line", line=max(1, len(truncated) and truncated[0]), source=source)


def _next_line(lines: list[bytes], index: int) -> int | None:
    for following in range(index, len(lines)):
        if lines[following].strip():
            return following
    return None


def _try_decode(raw: bytes) -> Line | None:
    try:
        return log_line_codec().decode_json(raw)
    except DecodeError:
        return None
