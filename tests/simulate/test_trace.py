from __future__ import annotations

import pytest

from vramgate.errors import DecodeError, InvalidParameter, UnknownGPU
from vramgate.messages.trace import Arrival, Outside
from vramgate.simulate import decode_trace, encode_trace, load_trace, parse_devices

from ._helpers import small

GOOD = (
    b'{"type": "arrival", "at": 5, "request": {"model": "ti2v-5B", "width": 1280, "height": 704}}\n'
    b"\n"
    b'{"type": "outside", "at": 1, "device": 0, "mb": 4096, "until": 60}\n'
    b'{"type": "arrival", "at": 2.5, "request": {"model": "t2v-A14B", "width": 832, "height": 480},'
    b' "true_peak_mb": 30000, "true_seconds": 400}\n'
)


def test_decodes_records_in_time_order() -> None:
    trace = decode_trace(GOOD)
    assert [a.at for a in trace.arrivals] == [2.5, 5.0]
    assert trace.arrivals[0].true_peak_mb == 30000
    assert trace.arrivals[1].true_peak_mb is None
    assert trace.outside == (Outside(at=1.0, device=0, mb=4096, until=60.0),)


def test_round_trip() -> None:
    records = [Arrival(at=1.0, request=small(1)), Outside(at=2.0, device=1, mb=10, until=3.0)]
    again = decode_trace(encode_trace(records))
    assert again.arrivals == (records[0],)
    assert again.outside == (records[1],)


@pytest.mark.parametrize(
    ("line", "path"),
    [
        (b'{"type": "arrival", "at": 1, "request": {"model": "x", "width": -5, "height": 4}}', "$.request.width"),
        (b'{"type": "outside", "at": 1, "device": 0, "mb": -1, "until": 5}', "$.mb"),
        (b'{"type": "departure", "at": 1}', "$.type"),
        (b'{"type": "arrival", "at": -1, "request": {"model": "x", "width": 5, "height": 4}}', "$.at"),
        (b'{"type": "outside", "at": 9, "device": 0, "mb": 1, "until": 5}', "$"),
        (b'{"type": "arrival", "at": 1, "request": {"model": "x", "width": 5, "height": 4}, "extra": 1}', "$"),
        (b"not json", "$"),
    ],
)
def test_bad_line_names_line_and_field(line: bytes, path: str) -> None:
    data = GOOD + line + b"\n"
    with pytest.raises(DecodeError) as info:
        decode_trace(data, source="t.jsonl")
    assert info.value.line == 5
    assert info.value.path == path
    assert "t.jsonl:line 5" in str(info.value)


def test_load_trace_missing_file(tmp_path: object) -> None:
    from vramgate.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot read trace"):
        load_trace(f"{tmp_path}/missing.jsonl")


def test_parse_devices() -> None:
    specs = parse_devices("2xH100-80GB, RTX4090-24GB")
    assert [s.name for s in specs] == ["H100-80GB", "H100-80GB", "RTX4090-24GB"]
    assert [s.memory_mib for s in parse_devices("24GB")] == [24 * 1024]
    with pytest.raises(UnknownGPU):
        parse_devices("2xB300")
    with pytest.raises(InvalidParameter):
        parse_devices(" , ")
    with pytest.raises(InvalidParameter):
        parse_devices("0xH100")


def test_outside_device_must_exist() -> None:
    trace = decode_trace(GOOD)
    trace.check_devices(1)
    with pytest.raises(InvalidParameter, match="device"):
        decode_trace(b'{"type": "outside", "at": 1, "device": 3, "mb": 1, "until": 5}').check_devices(2)
