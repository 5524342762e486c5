"""Arbitrary bytes and arbitrary JSON thrown at every decoder the outside can reach: only typed errors come out."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vramgate.actors import Envelope, Recorder
from vramgate.config import GateConfig, load_config
from vramgate.errors import DecodeError, VramgateError
from vramgate.messages import (
    GenerationRequest,
    HostSample,
    LogHeader,
    LogRecord,
    Message,
    RequestAccepted,
    RequestEnded,
    ResourceSample,
    decode_json,
    log_line_codec,
    message_codec,
)
from vramgate.messages.codec import Codec
from vramgate.policy.models import decode_profile
from vramgate.replay import read_log, replay
from vramgate.simulate import decode_trace

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)

VALID: dict[str, dict[str, Any]] = {
    "request": {"model": "t2v-A14B", "width": 1280, "height": 720, "frames": 81, "lora": [{"name": "a", "rank": 8}]},
    "arrival": {"type": "arrival", "at": 1.0, "request": {"model": "ti2v-5B", "width": 1280, "height": 704}},
    "outside": {"type": "outside", "at": 1.0, "device": 0, "mb": 100, "until": 5.0},
    "log": {
        "type": "LogRecord",
        "seq": 1,
        "at": 0.0,
        "sender": "a",
        "recipient": "b",
        "message": {"type": "RunFinished", "request_id": "r", "lease_id": "l", "outcome": "ok"},
    },
    "header": {"type": "LogHeader", "schema_version": 1},
    "config": {"admission": {"queue_limit": 10, "margin": "1GiB"}, "devices": {"simulate": ["24GB"]}},
}


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid document with one field, at any depth, replaced by arbitrary JSON (or removed)."""
    doc = json.loads(json.dumps(draw(st.sampled_from(list(VALID.values())))))
    node = doc
    while True:
        keys = list(node)
        key = draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, dict) and child and draw(st.booleans()):
            node = child
            continue
        if draw(st.booleans()):
            node[key] = draw(json_values)
        else:
            del node[key]
        break
    return json.dumps(doc).encode()


documents = st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()) | mutated()


def only_typed_errors(decode: Callable[[bytes], object], data: bytes) -> None:
    with contextlib.suppress(VramgateError):
        decode(data)


def _load_config(data: bytes) -> object:
    fd, path = tempfile.mkstemp(suffix=".toml")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        return load_config(path, environ={})
    finally:
        os.unlink(path)


def _toml_profile(data: bytes) -> object:
    return decode_profile(data.decode("utf-8", errors="replace"), toml=True)


DECODERS: dict[str, Callable[[bytes], object]] = {
    "request": lambda d: decode_json(d, GenerationRequest),
    "message": lambda d: message_codec().decode_json(d),
    "message-msgpack": lambda d: message_codec().decode_msgpack(d),
    "trace": decode_trace,
    "log line": lambda d: log_line_codec().decode_json(d),
    "profile": decode_profile,
    "profile toml": _toml_profile,
    "config file": lambda d: _load_config(d.decode("utf-8", errors="replace").encode()),
    "config codec": lambda d: Codec(GateConfig).decode_json(d),
}


@SETTINGS
@given(data=documents, name=st.sampled_from(sorted(DECODERS)))
def test_decoders_raise_only_typed_errors(data: bytes, name: str) -> None:
    only_typed_errors(DECODERS[name], data)


@SETTINGS
@given(value=json_values)
def test_config_convert_raises_only_typed_errors(value: object) -> None:
    with contextlib.suppress(VramgateError):
        Codec(GateConfig).convert(value)


@SETTINGS
@given(lines=st.lists(documents, max_size=5))
def test_traces_of_several_lines(lines: list[bytes]) -> None:
    only_typed_errors(decode_trace, b"\n".join(lines))


def test_valid_documents_decode() -> None:
    decode_json(json.dumps(VALID["request"]), GenerationRequest)
    decode_trace(json.dumps(VALID["arrival"]) + "\n" + json.dumps(VALID["outside"]))
    log_line_codec().decode_json(json.dumps(VALID["log"]))
    log_line_codec().decode_json(json.dumps(VALID["header"]))
    Codec(GateConfig).convert(VALID["config"])


def test_config_file_that_is_not_utf8() -> None:
    with pytest.raises(DecodeError, match="not UTF-8"):
        _load_config(b"\x80")


# ------------------------------------------------------------------ torn and garbled message logs


def _recorded_log() -> bytes:
    """A small log as the recorder writes it: samples (full and compact), requests with one long prompt twice."""
    stream = io.BytesIO()
    recorder = Recorder(stream)
    recorder.start(LogHeader(note="fuzz"))
    host = HostSample(
        ram_total_mb=1024, ram_available_mb=512, ram_used_mb=512, swap_total_mb=0, swap_used_mb=0, cpu_count=2
    )
    request = GenerationRequest(model="t2v-A14B", width=1280, height=720, prompt="a long prompt " * 10)
    messages: list[Message] = [
        ResourceSample(at=0.0, host=host),
        ResourceSample(at=0.5, host=host),
        ResourceSample(at=1.0, host=msgspec.structs.replace(host, ram_available_mb=500)),
        RequestAccepted(request_id="r1", request=request),
        RequestAccepted(request_id="r2", request=request),
        RequestEnded(request_id="r1", state="completed"),
    ]
    for seq, message in enumerate(messages, start=1):
        recorder.record(Envelope(seq, seq * 0.5, "a", "b", message))
    recorder.close()
    return stream.getvalue()


RECORDED = _recorded_log()


def _read_all(data: bytes) -> tuple[list[LogRecord[Message]], tuple[str, ...]]:
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        _, records = read_log(path)
        rows = list(records)
        return rows, replay(path).truncated
    finally:
        os.unlink(path)


FULL, _ = _read_all(RECORDED)


def test_the_recorded_log_reads_back_in_full() -> None:
    assert [type(r.message).__name__ for r in FULL] == [
        "ResourceSample",
        "ResourceSample",
        "ResourceSample",
        "RequestAccepted",
        "RequestAccepted",
        "RequestEnded",
    ]
    assert b"SameSample" in RECORDED
    assert b'"refs"' in RECORDED
    assert FULL[4].message == RequestAccepted(
        request_id="r2",
        request=GenerationRequest(model="t2v-A14B", width=1280, height=720, prompt="a long prompt " * 10),
    )


@SETTINGS
@given(cut=st.integers(min_value=0, max_value=len(RECORDED)))
def test_a_log_cut_anywhere_reads_its_complete_records(cut: int) -> None:
    data = RECORDED[:cut]
    if cut < RECORDED.index(b"\n"):  # the header itself is torn
        with pytest.raises(DecodeError):
            _read_all(data)
        return
    rows, truncated = _read_all(data)
    assert rows == FULL[: len(rows)]  # every record before the cut, as it was delivered
    complete = data.count(b"\n") - 1  # records whose line ended
    assert len(rows) >= min(complete, len(FULL))
    if data.endswith(b"\n"):
        assert truncated == ()
    else:  # the last line is torn, unless only its newline is missing
        assert len(truncated) + (len(rows) - min(complete, len(FULL))) == 1 or cut == len(RECORDED) - 1


@SETTINGS
@given(
    start=st.integers(min_value=0, max_value=len(RECORDED)),
    junk=st.binary(min_size=1, max_size=40),
    span=st.integers(min_value=0, max_value=40),
)
def test_a_garbled_log_raises_only_typed_errors(start: int, junk: bytes, span: int) -> None:
    data = RECORDED[:start] + junk + RECORDED[start + span :]
    with contextlib.suppress(VramgateError):
        _read_all(data)
