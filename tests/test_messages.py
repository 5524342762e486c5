"""Every registered message round-trips through JSON and msgpack; request constraints name the bad field."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

from vramgate.errors import DecodeError
from vramgate.messages import GenerationRequest, LogRecord, Message, message_codec, message_types
from vramgate.messages.codec import codec_for


def _int(t: mi.IntType) -> int:
    low = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else 1)
    high = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else None)
    value = max(low, 1) if high is None or high >= 1 else low
    return value if high is None else min(value, high)


def _float(t: mi.FloatType) -> float:
    low = t.ge if t.ge is not None else (t.gt + 0.25 if t.gt is not None else 0.5)
    high = t.le if t.le is not None else (t.lt - 0.25 if t.lt is not None else None)
    value = max(low, 0.5)
    return value if high is None else min(value, high)


def _str(t: mi.StrType) -> str:
    for candidate in ("id-1", "x", "", "a" * (t.min_length or 0)):
        if t.min_length is not None and len(candidate) < t.min_length:
            continue
        if t.max_length is not None and len(candidate) > t.max_length:
            continue
        if t.pattern is None or re.search(t.pattern, candidate):
            return candidate
    raise AssertionError(f"no sample string for {t}")


def sample(t: mi.Type, *, full: bool = True) -> Any:
    """A valid value of type ``t`` (every optional field filled in when ``full``)."""
    if isinstance(t, mi.Metadata):
        return sample(t.type, full=full)
    if isinstance(t, mi.IntType):
        return _int(t)
    if isinstance(t, mi.FloatType):
        return _float(t)
    if isinstance(t, mi.StrType):
        return _str(t)
    if isinstance(t, mi.BoolType):
        return True
    if isinstance(t, mi.NoneType):
        return None
    if isinstance(t, mi.LiteralType):
        return t.values[-1]
    if isinstance(t, mi.UnionType):
        options = [x for x in t.types if not isinstance(x, mi.NoneType)] or list(t.types)
        return sample(options[0], full=full)
    if isinstance(t, (mi.ListType, mi.VarTupleType, mi.SetType, mi.FrozenSetType)):
        items = [sample(t.item_type, full=full)]
        return tuple(items) if isinstance(t, mi.VarTupleType) else items
    if isinstance(t, mi.TupleType):
        return tuple(sample(x, full=full) for x in t.item_types)
    if isinstance(t, mi.DictType):
        return {sample(t.key_type, full=full): sample(t.value_type, full=full)}
    if isinstance(t, mi.AnyType):
        return {"any": [1, "two", 3.5]}
    if isinstance(t, mi.StructType):
        return build(t.cls, full=full)
    if isinstance(t, mi.EnumType):
        return next(iter(t.cls))
    raise AssertionError(f"no sample for {t!r}")


def build(cls: type[Any], *, full: bool = True) -> Any:
    """An instance of a struct class: every field set when ``full``, else only the required ones.

    When a ``__post_init__`` rule forbids that combination (two fields that exclude each other, one of two
    that is required), the required fields plus one optional field at a time are tried instead.
    """
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    required = [f for f in info.fields if f.required]
    optional = [f for f in info.fields if not f.required]
    attempts = [info.fields, required] if full else [required, info.fields]
    attempts += [(*required, f) for f in optional]
    errors: list[str] = []
    for fields in attempts:
        kwargs = {f.name: sample(f.type, full=full) for f in fields}
        try:
            value = cls(**kwargs)
        except (ValueError, TypeError) as exc:
            errors.append(str(exc))
            continue
        # validate it as a decoder would: a sample that breaks a constraint is a bug in the builder
        return msgspec.convert(msgspec.to_builtins(value), cls)
    raise AssertionError(f"cannot build a {cls.__name__}: {errors}")


def concrete_messages() -> list[type[Message]]:
    return [t for t in message_types() if t is not LogRecord]


@pytest.mark.parametrize("cls", concrete_messages(), ids=lambda c: c.__name__)
def test_every_message_round_trips_through_json_and_msgpack(cls: type[Message]) -> None:
    for full in (True, False):
        message = build(cls, full=full)
        own = codec_for(cls)
        assert own.decode_json(own.encode_json(message)) == message
        assert own.decode_msgpack(own.encode_msgpack(message)) == message
        # and through the union of every message, by its tag
        union = message_codec()
        data = union.encode_json(message)
        assert f'"type":"{cls.__name__}"'.encode() in data
        assert union.decode_json(data) == message
        assert union.decode_msgpack(union.encode_msgpack(message)) == message


def test_log_records_round_trip_with_any_message() -> None:
    from vramgate.messages import log_record_codec

    codec = log_record_codec()
    for cls in concrete_messages():
        record = LogRecord(seq=1, at=0.5, sender="a", recipient="b", message=build(cls), correlation_id=3)
        assert codec.decode_json(codec.encode_json(record)) == record
        assert codec.decode_msgpack(codec.encode_msgpack(record)) == record


VALID = {"model": "t2v-A14B", "width": 1280, "height": 720}

BAD_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"width": 0}, "$.width"),
    ({"width": 16385}, "$.width"),
    ({"width": "1280"}, "$.width"),
    ({"height": -1}, "$.height"),
    ({"model": ""}, "$.model"),
    ({"model": "m" * 129}, "$.model"),
    ({"request_id": "a/b"}, "$.request_id"),
    ({"task": "x2v"}, "$.task"),
    ({"frames": 0}, "$.frames"),
    ({"duration_s": 0}, "$.duration_s"),
    ({"duration_s": 2.0, "fps": 0}, "$.fps"),
    ({"steps": 0}, "$.steps"),
    ({"steps": 1001}, "$.steps"),
    ({"guidance_scale": -0.5}, "$.guidance_scale"),
    ({"priority": 1001}, "$.priority"),
    ({"max_level": "ultra"}, "$.max_level"),
    ({"max_wait_s": 0}, "$.max_wait_s"),
    ({"prompt": "p" * 20001}, "$.prompt"),
    ({"colour": "red"}, "$"),
    ({"options": {"ulysses": 0}}, "$.options.ulysses"),
    ({"options": {"ulysses": 65}}, "$.options.ulysses"),
    ({"options": {"gpus": 0}}, "$.options.gpus"),
    ({"options": {"resident_blocks": -1}}, "$.options.resident_blocks"),
    ({"options": {"dit_dtype": "int4"}}, "$.options.dit_dtype"),
    ({"options": {"offload_model": "yes"}}, "$.options.offload_model"),
    ({"options": {"turbo": True}}, "$.options"),
    ({"lora": [{"name": "style", "rank": 0}]}, "$.lora[0].rank"),
    ({"lora": [{"name": "ok"}, {"name": "style", "rank": 4097}]}, "$.lora[1].rank"),
    ({"lora": [{"name": ""}]}, "$.lora[0].name"),
    ({"lora": [{"name": "style", "scale": 101}]}, "$.lora[0].scale"),
    ({"lora": [{"name": "style", "size_mb": -1}]}, "$.lora[0].size_mb"),
    ({"lora": [{"rank": 4}]}, "$.lora[0]"),
]


@pytest.mark.parametrize(("patch", "path"), BAD_FIELDS, ids=[f"{p}-{sorted(d)}" for d, p in BAD_FIELDS])
def test_each_request_constraint_names_the_field(patch: dict[str, Any], path: str) -> None:
    body = msgspec.json.encode({**VALID, **patch})
    with pytest.raises(DecodeError) as info:
        codec_for(GenerationRequest).decode_json(body)
    assert info.value.path == path
    assert info.value.reason


def test_cross_field_rules_are_decode_errors() -> None:
    for patch in ({"frames": 81, "duration_s": 5.0}, {"fps": 16}):
        with pytest.raises(DecodeError) as info:
            codec_for(GenerationRequest).decode_json(msgspec.json.encode({**VALID, **patch}))
        assert info.value.path == "$"


def test_a_valid_request_decodes() -> None:
    body = {**VALID, "lora": [{"name": "style", "rank": 16}], "options": {"ulysses": 2, "gpus": 2}}
    request = codec_for(GenerationRequest).decode_json(msgspec.json.encode(body))
    assert request.lora[0].rank == 16
    assert request.options is not None
    assert request.options.ulysses == 2
