"""Time estimates that say how sure they are: the interval is narrow where the calibration covers the GPU and the
model, wide where it does not, and narrows as runs are observed; the learned factor moves to the GPU's truth."""

from __future__ import annotations

import math
import random

import msgspec
import pytest
from admission_helpers import H100_MB, Driver, h100, plan, submit

from vramgate.messages import RequestAdmitted, RequestQueued
from vramgate.messages.plans import ResourceRequirement, RunParams
from vramgate.policy.admission import AdmissionConfig, AdmissionCore
from vramgate.policy.estimate import Estimator
from vramgate.policy.timing import TimeCorrections

PARAMS = RunParams(model="t2v-A14B", task="t2v", width=1280, height=720, frames=81, steps=40)


def width(low: float, point: float, high: float) -> float:
    return (high - low) / point


def test_the_interval_is_narrow_where_calibrated_and_wide_where_not() -> None:
    times = TimeCorrections()
    calibrated = width(*times.interval("t2v-A14B", "H100-80GB", 1000.0))
    gpu_only = width(*times.interval("i2v-A14B", "H100-80GB", 1000.0))
    outside = width(*times.interval("t2v-A14B", "H200-141GB", 1000.0))
    many = width(*times.interval("t2v-A14B", "RTX4090-24GB", 1000.0, world_size=8))
    assert calibrated < gpu_only < outside
    assert outside > 2 * calibrated
    assert many > gpu_only
    low, point, high = times.interval("t2v-A14B", "H100-80GB", 1000.0)
    assert low < point == 1000.0 < high  # nothing learned: the point stays the estimate's


def test_observed_runs_move_the_factor_to_the_truth_and_narrow_the_interval() -> None:
    times = TimeCorrections()
    rng = random.Random(7)
    widths = [width(*times.interval("t2v-A14B", "H200-141GB", 100.0))]
    for _ in range(3):
        times.observe("H200-141GB", predicted_s=100.0, observed_s=150.0 * math.exp(rng.gauss(0.0, 0.1)))
        widths.append(width(*times.interval("t2v-A14B", "H200-141GB", 100.0)))
    assert widths == sorted(widths, reverse=True)
    assert widths[-1] < widths[0] / 2
    low, point, high = times.interval("t2v-A14B", "H200-141GB", 100.0)
    assert low < 150.0 < high
    assert point > 130.0
    assert times.runs("H200-141GB") == 3
    assert times.factor("t2v-A14B", "H100-80GB") == 1.0  # another GPU learned nothing


def test_apply_changes_only_the_time() -> None:
    requirement = Estimator().estimate(PARAMS, "H100-80GB")
    times = TimeCorrections()
    times.observe("H100-80GB", predicted_s=100.0, observed_s=120.0)
    applied = times.apply(requirement, PARAMS.model)
    assert applied.vram_mb == requirement.vram_mb
    assert applied.components == requirement.components
    assert applied.time_low_s is not None
    assert applied.time_high_s is not None
    assert applied.time_low_s < applied.estimated_time_seconds < applied.time_high_s
    assert applied.estimated_time_seconds > requirement.estimated_time_seconds
    with pytest.raises(ValueError, match="positive"):
        times.observe("H100-80GB", predicted_s=0.0, observed_s=1.0)


def test_the_interval_survives_the_wire() -> None:
    requirement = ResourceRequirement(vram_mb=1, ram_mb=1, estimated_time_seconds=10.0, time_high_s=15.0)
    decoded = msgspec.json.decode(msgspec.json.encode(requirement), type=ResourceRequirement)
    assert decoded.time_high_s == 15.0
    assert decoded.time_low_s is None


def test_backfilling_counts_the_top_of_the_interval() -> None:
    budget = H100_MB - 4078
    for high, expected in ((None, RequestAdmitted), (150.0, RequestQueued)):
        d = Driver(AdmissionCore([h100(0)], AdmissionConfig(stale_after_s=None)))
        d.send(submit("running", budget - 20_000, seconds=100.0), 0.0)
        d.send(submit("head", budget, seconds=10.0), 0.0)  # starts at 100, on the whole device
        short = plan(10_000, seconds=50.0)
        short = msgspec.structs.replace(short, requirement=msgspec.structs.replace(short.requirement, time_high_s=high))
        events = d.send(submit("short", plans={"*": short}), 1.0)
        assert isinstance(events[0], expected), high


def test_retry_after_counts_running_leases_ending_at_the_top_of_their_interval() -> None:
    budget = H100_MB - 4078
    waits: dict[float | None, float] = {}
    for high in (None, 150.0):
        core = AdmissionCore([h100(0)], AdmissionConfig(stale_after_s=None, queue_limit=1))
        d = Driver(core)
        running = plan(budget, seconds=100.0)
        running = msgspec.structs.replace(
            running, requirement=msgspec.structs.replace(running.requirement, time_high_s=high)
        )
        assert isinstance(d.send(submit("running", plans={"*": running}), 0.0)[0], RequestAdmitted)
        assert isinstance(d.send(submit("head", budget, seconds=10.0), 0.0)[0], RequestQueued)
        waits[high] = core.retry_after(20.0)
    assert waits[None] == pytest.approx(80.0)  # the point: the lease ends at 100
    assert waits[150.0] == pytest.approx(130.0)  # the top of its interval: at 150
