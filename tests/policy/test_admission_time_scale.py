"""Admission expects a run to last its plan's estimate times ``time_scale`` (at least ``min_run_s``)."""

from __future__ import annotations

import pytest
from admission_helpers import H100_MB, Driver, h100, submit

from vramgate.errors import ConfigError
from vramgate.messages import RequestRejected
from vramgate.policy.admission import AdmissionConfig, AdmissionCore

BUDGET = H100_MB - 4078


def core(*, time_scale: float = 1.0, min_run_s: float = 0.0, **config: object) -> Driver:
    """A core on one H100 whose runs last their estimate times ``time_scale`` (``[run] time_scale``)."""
    settings = {"stale_after_s": None, "queue_limit": 1, **config}
    admission = AdmissionConfig(**settings)  # type: ignore[arg-type]
    return Driver(AdmissionCore([h100(0)], admission, time_scale=time_scale, min_run_s=min_run_s))


@pytest.mark.parametrize(
    ("time_scale", "min_run_s", "expected_end"), [(1.0, 0.0, 30.0), (0.01, 0.0, 0.3), (0.01, 0.5, 0.5)]
)
def test_retry_after_counts_the_scaled_run(time_scale: float, min_run_s: float, expected_end: float) -> None:
    d = core(time_scale=time_scale, min_run_s=min_run_s)
    d.send(submit("run", BUDGET, seconds=30.0), 0.0)
    d.send(submit("waits", BUDGET, seconds=30.0), 0.0)
    rejected = d.send(submit("full", BUDGET), 0.1)[0]
    assert isinstance(rejected, RequestRejected)
    assert rejected.retry_after_s == pytest.approx(expected_end - 0.1)


def test_backfill_compares_scaled_runs_with_the_scaled_shadow() -> None:
    # The head waits for "big" (expected to end at 0.3 s); a short run that ends before then may start first.
    d = core(time_scale=0.01, queue_limit=10)
    d.send(submit("big", BUDGET - 1000, seconds=30.0), 0.0)
    d.send(submit("head", BUDGET), 0.0)
    d.send(submit("short", 1000, seconds=20.0), 0.0)  # 0.2 s scaled: ends before the head can start
    d.send(submit("long", 1000, seconds=40.0), 0.0)  # 0.4 s scaled: would delay the head
    assert "short" in d.admitted
    assert "long" not in d.admitted


@pytest.mark.parametrize(("key", "value"), [("time_scale", 0.0), ("time_scale", float("inf")), ("min_run_s", -1.0)])
def test_bad_scales_are_refused(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=key):
        AdmissionCore([h100(0)], **{key: value})  # type: ignore[arg-type]
