"""Residency messages decode from outside input with errors that name the field, and the host sample has RSS."""

from __future__ import annotations

import os

import psutil
import pytest

from vramgate.errors import DecodeError
from vramgate.hardware.host import HostProbe
from vramgate.messages import EvictModel, ModelLoaded, ModelUnloaded, message_codec


def test_a_declared_load_decodes_from_json() -> None:
    loaded = message_codec().decode_json(
        b'{"type": "ModelLoaded", "device": 0, "model": "t2v-A14B", "vram_mb": 27648, "ram_mb": 512,'
        b' "owner": "server-1", "dtype": "bf16", "components": ["transformer", "vae"]}'
    )
    assert loaded == ModelLoaded(
        device=0, model="t2v-A14B", vram_mb=27648, ram_mb=512, owner="server-1", components=("transformer", "vae")
    )


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b'{"type": "ModelLoaded", "device": 0, "model": "m", "vram_mb": -1}', "$.vram_mb"),
        (b'{"type": "ModelLoaded", "device": 0, "model": "m", "vram_mb": 1, "owner": "a/b"}', "$.owner"),
        (b'{"type": "ModelUnloaded", "device": 0, "model": "m", "dtype": "int3"}', "$.dtype"),
        (b'{"type": "EvictModel", "device": 0, "model": "m"}', "$"),
    ],
)
def test_bad_residency_input_names_the_field(body: bytes, path: str) -> None:
    with pytest.raises(DecodeError) as caught:
        message_codec().decode_json(body)
    assert caught.value.path == path


def test_eviction_orders_and_unloads_round_trip() -> None:
    codec = message_codec()
    for message in (
        EvictModel(device=1, model="ti2v-5B", vram_mb=10_000, for_request="r-1", reason="room for r-1"),
        ModelUnloaded(device=1, model="ti2v-5B", reason="evicted"),
    ):
        assert codec.decode_json(codec.encode_json(message)) == message


def test_the_host_sample_carries_this_process_resident_set() -> None:
    reading = HostProbe(os.getcwd()).sample()
    assert reading.host is not None
    rss = reading.host.process_rss_mb
    assert rss is not None
    measured = psutil.Process().memory_info().rss // (1 << 20)
    assert rss > 0
    assert abs(rss - measured) <= max(64, measured // 4)
