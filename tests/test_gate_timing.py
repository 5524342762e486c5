"""Time learning in a running gate: runs on simulated GPUs whose true speed is 1.5x off the catalog teach the
estimator (and the optimizer that makes the plans) that GPU's time; the interval narrows; what was learned is saved
with ``learned_path`` and read back by the next gate; the ETA counts the top of the interval."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest

from vramgate.clock import ManualClock
from vramgate.config import AdmissionSettings, CleanupConfig, DevicesConfig, GateConfig, MonitorConfig
from vramgate.errors import DecodeError
from vramgate.gate import Gate, open_gate
from vramgate.hardware import detect
from vramgate.messages import GenerationRequest, Message, ResourceRequirement
from vramgate.messages.estimation import CorrectionLearned
from vramgate.policy.learning import load_corrections

pytestmark = pytest.mark.anyio

#: A GPU outside the time calibration (its prior interval is wide) and one request the gate plans for it.
GPU = "H200-141GB"
REQUEST = GenerationRequest(model="ti2v-5B", width=1280, height=704, frames=49, steps=20)
#: The simulated truth: runs take 1.5x the catalog's time, with 10 % log-normal run noise.
TRUE_FACTOR = 1.5


def _config(learned_path: Path | None = None) -> GateConfig:
    return GateConfig(
        devices=DevicesConfig(use_real_gpus=False),
        monitor=MonitorConfig(interval_s=0.05),
        admission=AdmissionSettings(ram_budget="256GiB"),
        cleanup=CleanupConfig(after_run=False),
        learned_path=str(learned_path) if learned_path is not None else None,
    )


@asynccontextmanager
async def _gate(clock: ManualClock, learned_path: Path | None = None) -> AsyncIterator[Gate]:
    devices = detect((GPU,), nvml=False, torch=False, clock=clock)
    async with open_gate(_config(learned_path), clock=clock, devices=devices) as gate:
        yield gate


async def _run(gate: Gate, clock: ManualClock, rng: random.Random) -> ResourceRequirement:
    """Admit the request, run it for its true time (the clock advances), release it; returns its plan's figures."""
    async with gate.admit(REQUEST) as lease:
        raw = gate.estimator.breakdown(lease.params, GPU).seconds
        clock.advance(raw * TRUE_FACTOR * math.exp(rng.gauss(0.0, 0.1)))
        requirement = lease.plan.requirement
    await gate.wait_idle()
    return requirement


def _error(requirement: ResourceRequirement, raw_s: float) -> float:
    """How far ``requirement``'s time is from the truth of a run whose catalog time is ``raw_s``."""
    return abs(requirement.estimated_time_seconds / (raw_s * TRUE_FACTOR) - 1.0)


async def test_three_runs_teach_the_gate_a_gpu_time_within_ten_percent(tmp_path: Path) -> None:
    clock = ManualClock()
    rng = random.Random(11)
    path = tmp_path / "learned.json"
    async with _gate(clock, path) as gate:
        lessons: list[Message] = []
        gate.add_listener(lessons.append)
        plans = [await _run(gate, clock, rng) for _ in range(4)]
        params = gate.estimator.resolve(REQUEST)
        fresh = gate.estimator.estimate(params, GPU)
    raw = gate.estimator.breakdown(params, GPU).seconds
    first, fourth = plans[0], plans[3]
    # Before any run the plan's time is the catalog's, 1.5x off, inside a wide interval.
    assert first.time_low_s is not None
    assert first.time_high_s is not None
    assert first.estimated_time_seconds == pytest.approx(raw)
    assert _error(first, raw) > 0.3
    # After three runs the plan the optimizer made (and the estimator's own estimate) are within 10 % of the truth,
    # and the interval is narrower and holds the true time.
    for requirement in (fourth, fresh):
        assert _error(requirement, raw) < 0.10
        assert requirement.time_low_s is not None
        assert requirement.time_high_s is not None
        assert requirement.time_low_s < raw * TRUE_FACTOR < requirement.time_high_s
        assert requirement.time_high_s - requirement.time_low_s < 0.6 * (first.time_high_s - first.time_low_s)
    assert fourth.vram_mb == first.vram_mb  # memory figures unchanged by what times taught
    # The estimator announced each lesson with its time correction.
    learned = [m for m in lessons if isinstance(m, CorrectionLearned)]
    assert [m.time_runs for m in learned] == [1, 2, 3, 4]
    assert learned[-1].time_factor == pytest.approx(TRUE_FACTOR, rel=0.1)
    assert learned[-1].time_high < learned[0].time_high

    # Saved with learned_path, and read back by the next gate.
    assert load_corrections(path).times.runs(GPU) == 4
    async with _gate(ManualClock(), path) as again:
        assert again.estimator.learned.times.runs(GPU) == 4
        assert again.estimator.estimate(params, GPU) == fresh


async def test_a_corrupt_time_correction_is_a_typed_error_naming_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "learned.json"
    path.write_bytes(msgspec.json.encode({"entries": {}, "times": {GPU: {"runs": -3, "log_sum": 0.0}}}))
    with pytest.raises(DecodeError) as info:
        async with _gate(ManualClock(), path):
            pass
    assert str(path) in str(info.value)
    assert "runs" in str(info.value)


async def test_the_eta_of_a_run_counts_the_top_of_its_interval() -> None:
    clock = ManualClock()
    async with _gate(clock) as gate:
        ticket = await gate.submit(REQUEST)
        lease = await ticket.wait_admitted()
        high = lease.plan.requirement.time_high_s
        assert high is not None
        assert high > lease.plan.requirement.estimated_time_seconds
        assert ticket.eta_s() == pytest.approx(high)
        clock.advance(10.0)
        assert ticket.eta_s() == pytest.approx(high - 10.0)
        async with gate.hold(lease):
            pass
