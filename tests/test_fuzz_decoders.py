"""Arbitrary bytes and arbitrary JSON thrown at every decoder the outside can reach: only typed errors come out."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vramgate.config import GateConfig, load_config
from vramgate.errors import DecodeError, VramgateError
from vramgate.messages import GenerationRequest, decode_json, log_line_codec, message_codec
from vramgate.messages.codec import Codec
from vramgate.policy.models import decode_profile
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
