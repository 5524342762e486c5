"""A stand-in run (the simulated one, the torch workload) lasts the time an estimator without learned corrections
gives its plan: a gate that learned its runs were slow plans longer times, but the stand-in's time stays its own,
so that a delayed run (a busy event loop) cannot teach the gate a longer time run after run."""

from __future__ import annotations

import pytest

from vramgate.clock import ManualClock
from vramgate.config import AdmissionSettings, CleanupConfig, DevicesConfig, GateConfig, MonitorConfig
from vramgate.gate import open_gate
from vramgate.hardware import detect
from vramgate.messages import GenerationRequest
from vramgate.policy.estimate import Estimator
from vramgate.policy.models import ModelCatalog
from vramgate.runners import RunTruth, SimulatedRun, TorchWorkload, stand_in_seconds
from vramgate.server.runners import make_runner

pytestmark = pytest.mark.anyio

GPU = "H100-80GB"
REQUEST = GenerationRequest(model="ti2v-5B", width=1280, height=704, frames=49, steps=20)


async def test_a_stand_in_run_lasts_its_own_time_whatever_the_gate_learned() -> None:
    clock = ManualClock()
    config = GateConfig(
        devices=DevicesConfig(use_real_gpus=False),
        monitor=MonitorConfig(interval_s=0.05),
        admission=AdmissionSettings(ram_budget="256GiB"),
        cleanup=CleanupConfig(after_run=False),
    )
    devices = detect((GPU,), nvml=False, torch=False, clock=clock)
    async with open_gate(config, clock=clock, devices=devices) as gate:
        for _ in range(3):  # runs that took 5x their time: the gate learns that this GPU is slow
            async with gate.admit(REQUEST) as lease:
                clock.advance(lease.plan.requirement.estimated_time_seconds * 5)
            await gate.wait_idle()
        async with gate.admit(REQUEST) as lease:
            raw = Estimator().estimate(lease.params, GPU).estimated_time_seconds
            planned = lease.plan.requirement.estimated_time_seconds
            assert planned > 2 * raw  # what was learned is in the plan

            stand_in = make_runner("simulated", gate, time_scale=0.5, min_seconds=0.0)
            assert isinstance(stand_in, SimulatedRun)
            assert stand_in.seconds(lease) == pytest.approx(raw * 0.5)
            torch = make_runner("torch", gate, time_scale=0.5, min_seconds=0.0)
            assert isinstance(torch, TorchWorkload)
            assert stand_in_seconds(lease, torch.truth, 0.5, 0.0) == pytest.approx(raw * 0.5)
            # without a truth, a stand-in lasts its plan's (corrected) time, and the floor holds either way
            assert SimulatedRun(clock, time_scale=0.5).seconds(lease) == pytest.approx(planned * 0.5)
            assert stand_in_seconds(lease, RunTruth(gate.estimator), 0.5, raw) == raw
            # a truth that does not know the model leaves the plan's time
            unknown = RunTruth(Estimator(ModelCatalog(()), gate.estimator.gpus))
            assert stand_in_seconds(lease, unknown, 0.5, 0.0) == pytest.approx(planned * 0.5)
            assert stand_in_seconds(lease, unknown, 0.5, 0.0) == pytest.approx(planned * 0.5)  # as remembered
        # the truth learned nothing from those runs
        assert RunTruth(gate.estimator).estimator.learned.times.runs(GPU) == 0
        assert gate.estimator.learned.times.runs(GPU) == 3
