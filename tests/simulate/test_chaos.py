from __future__ import annotations

import pytest

from vramgate.simulate import parse_devices
from vramgate.simulate.chaos import campaign
from vramgate.simulate.faults import ALL_FAULTS, FaultSpec, parse_faults
from vramgate.simulate.trace import Trace

from ._helpers import trace

DEVICES = parse_devices("6xH100-80GB,2xRTX4090-24GB")


def _generator():  # type: ignore[no-untyped-def]
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from gen_trace import generate

    return generate


def make_trace(requests: int):  # type: ignore[no-untyped-def]
    generate = _generator()

    def make(seed: int) -> Trace:
        return trace(*generate("mixed", requests=requests, seed=seed, rate=40.0, span=0.0, devices=0))

    return make


@pytest.mark.slow
def test_ten_thousand_requests_under_every_fault() -> None:
    report = campaign(make_trace(5000), DEVICES, chunks=2, seed=7, faults=ALL_FAULTS)
    assert report.requests == 10_000
    kinds = {
        "admission_crash",
        "client_cancel",
        "device_lost",
        "failed_sample",
        "outside_grab",
        "run_crash",
        "stale_sample",
        "unforeseen_oom",
    }
    assert kinds <= {k for k, v in report.faults.items() if v > 0}
    assert report.overcommits == 0
    assert report.leaked_leases == 0
    assert report.terminal_violations == 0
    assert report.divergences == 0
    assert sum(report.states.values()) == report.requests


def test_small_campaign_replays_identically() -> None:
    report = campaign(make_trace(300), DEVICES[:3], chunks=1, seed=1, faults=ALL_FAULTS)
    assert report.ok
    assert report.divergences == 0


def test_parse_faults() -> None:
    assert parse_faults(None) == FaultSpec()
    assert parse_faults("all") == ALL_FAULTS
    assert parse_faults("all,lost=0").lost == 0.0
    assert parse_faults("crash=0.5, cancel=0.1") == FaultSpec(crash=0.5, cancel=0.1)
    from vramgate.errors import DecodeError

    with pytest.raises(DecodeError) as info:
        parse_faults("crash=2")
    assert info.value.path == "$.faults.crash"
    with pytest.raises(DecodeError):
        parse_faults("meteor=1")
    with pytest.raises(DecodeError):
        parse_faults("crash")
    with pytest.raises(DecodeError):
        parse_faults("crash=lots")
