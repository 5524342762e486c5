"""A gate on simulated devices and the simulator's vramgate policy make the same decisions for the same trace.

The simulator's engine runs the trace twice with the same seed, once under the simulator's vramgate policy and
once under a real gate (:func:`~vramgate.gate.open_gate` with all its actors, on a virtual clock) that manages the
engine's own simulated GPUs: the engine runs each request where and when the gate admits it, and the gate's
lease is released when the engine's run ends. Both runs see the same world (the same truth, runs that share a
GPU's compute), so they must admit the same requests in the same order on the same devices at the same times.
Only decisions are compared, never internals. Runs on asyncio and trio (the engine runs in a worker thread and
calls into the gate's event loop).
"""

from __future__ import annotations

import math
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import msgspec
import pytest

from vramgate._ticket import Lease, Ticket
from vramgate.clock import ManualClock
from vramgate.config import CleanupConfig, DevicesConfig, GateConfig, MonitorConfig, RunConfig
from vramgate.gate import Gate, open_gate
from vramgate.hardware import detect
from vramgate.policy.estimate import Estimator
from vramgate.simulate import load_trace, parse_devices
from vramgate.simulate._model import Job, Run
from vramgate.simulate._truth import Truth
from vramgate.simulate.engine import Simulation
from vramgate.simulate.gate import SIMULATED_ADMISSION
from vramgate.simulate.run import make_policy
from vramgate.simulate.trace import Trace

pytestmark = pytest.mark.anyio

TRACES = Path(__file__).resolve().parents[2] / "bench" / "traces"
#: The gate's sampling: the monitor ticks every 0.5 s (the default), so a sample is never older than that.
INTERVAL_S = 0.5

#: (request id, devices, start time) of each admission, in admission order; then the request ids rejected.
Decisions = tuple[tuple[tuple[str, tuple[int, ...], float], ...], tuple[str, ...]]


class GatePolicy:
    """The engine's policy, answered by a real gate on the engine's own simulated GPUs.

    Every call from the engine (in its worker thread) moves the gate's clock to the engine's time, lets the
    gate's actors settle, and then starts on the engine what the gate admitted since, and ends what it rejected.
    """

    name = "gate"

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.gate: Gate | None = None
        self.sim: Simulation | None = None
        self._tickets: dict[str, Ticket] = {}
        self._jobs: dict[str, Job] = {}
        self._leases: dict[str, Lease] = {}  # lease id -> the gate's lease of a run the engine runs
        self._started: set[str] = set()

    # ------------------------------------------------------------------ the engine's side (worker thread)

    def attach(self, sim: Simulation) -> None:
        self.sim = sim

    def arrive(self, job: Job, now: float) -> None:
        self._jobs[job.request_id] = job
        anyio.from_thread.run(self._submit, job, now)
        self._apply()

    def cancel(self, job: Job, now: float) -> None:
        raise AssertionError("the trace has no cancels")

    def run_ended(self, run: Run, outcome: str, now: float) -> None:
        assert outcome == "ok", f"{run.job.request_id} ended {outcome}"
        anyio.from_thread.run(self._release, run.lease_id, now)
        self._apply()

    def pump(self, now: float) -> None:
        anyio.from_thread.run(self._settle, now)
        self._apply()

    def core_crash(self, now: float) -> None:
        raise AssertionError("the trace has no faults")

    def open_leases(self) -> int:
        return len(self._leases) + sum(1 for t in self._tickets.values() if t.ended is None and t.lease is None)

    def _apply(self) -> None:
        """Start what the gate admitted, and end what it rejected, on the engine."""
        sim = self.sim
        assert sim is not None
        for rid, ticket in list(self._tickets.items()):
            job = self._jobs[rid]
            lease = ticket.lease
            if lease is not None and lease.lease_id not in self._started:
                self._started.add(lease.lease_id)
                self._leases[lease.lease_id] = lease
                sim.start(
                    job,
                    lease.devices,
                    lease.params,
                    lease.reservation_mb,
                    lease_id=lease.lease_id,
                    level=lease.plan.level,
                    pin=True,
                )
            if ticket.ended is not None:
                del self._tickets[rid]
                if ticket.lease is None:
                    sim.reject_upfront(job, ticket.ended.reason)
                else:
                    sim.finish(job, ticket.ended.state, ticket.ended.reason)

    # ------------------------------------------------------------------ the gate's side (event loop)

    async def _submit(self, job: Job, now: float) -> None:
        await self._settle(now)
        assert self.gate is not None
        self._tickets[job.request_id] = await self.gate.submit(job.request)
        await self._settle(now)

    async def _release(self, lease_id: str, now: float) -> None:
        await self._settle(now)
        assert self.gate is not None
        async with self.gate.hold(self._leases.pop(lease_id)):
            pass
        await self._settle(now)

    async def _settle(self, now: float) -> None:
        """Move the clock to ``now`` and wait until the gate is quiet: every submitted request planned and queued,
        admitted or ended, and no message in flight. (The monitor ticks once on the way: between the engine's
        events nothing but time changes.)"""
        if now > self.clock.now():
            self.clock.set(now)
        await self._quiet()

    async def _quiet(self) -> None:
        assert self.gate is not None
        with anyio.fail_after(10):
            while True:
                for _ in range(5):
                    await anyio.lowlevel.checkpoint()
                await self.gate.wait_idle()
                planning = any(t.state == "preflight" for t in self._tickets.values())
                if not planning:
                    await self.gate.wait_idle()
                    return


def decisions(sim: Simulation) -> Decisions:
    """What the policy decided: admissions in lease order (device and start), and the rejected requests."""
    admitted = sorted(
        (job for job in sim.jobs if job.run is not None),
        key=lambda job: int(job.run.lease_id.rsplit("-", 1)[1]) if job.run is not None else 0,
    )
    order = tuple(
        (job.request_id, job.run.devices, round(job.run.started, 3)) for job in admitted if job.run is not None
    )
    rejected = tuple(sorted(job.request_id for job in sim.jobs if job.state == "rejected"))
    return order, rejected


def simulated(trace: Trace, devices: str) -> Decisions:
    specs = parse_devices(devices)
    estimator = Estimator()
    truth = Truth(estimator, specs[0], mem_spread=0.0, time_spread=0.0)
    policy = make_policy("vramgate", estimator)
    # Without weight loads in the truth: the vramgate policy sees idle resident weights as free (its stand-in for a
    # server declaring them), which a gate on the engine's GPUs is not told.
    sim = Simulation(trace, specs, policy, estimator=estimator, seed=0, truth=truth, load_weights=False)
    sim.run()
    assert all(job.state in ("completed", "rejected") for job in sim.jobs)
    return decisions(sim)


async def gated(trace: Trace, devices: str) -> Decisions:
    specs = parse_devices(devices)
    estimator = Estimator()
    truth = Truth(estimator, specs[0], mem_spread=0.0, time_spread=0.0)
    policy = GatePolicy()
    sim = Simulation(trace, specs, policy, estimator=estimator, seed=0, truth=truth, load_weights=False)
    config = GateConfig(
        devices=DevicesConfig(use_real_gpus=False),
        monitor=MonitorConfig(interval_s=INTERVAL_S),
        # The gate's own defaults, with the simulator's queue (long enough for any trace).
        admission=msgspec.structs.replace(GateConfig().admission, queue_limit=SIMULATED_ADMISSION.queue_limit),
        cleanup=CleanupConfig(after_run=False),
        run=RunConfig(pin_reservation=False),  # the engine pins each run's reservation, as for the simulator
    )
    found = detect(sim.gpus, nvml=False, torch=False, host=False)
    async with open_gate(config, clock=policy.clock, devices=found, estimator=Estimator()) as gate:
        policy.gate = gate
        await anyio.to_thread.run_sync(sim.run)
    assert all(job.state in ("completed", "rejected") for job in sim.jobs), [
        (job.request_id, job.state, job.reason) for job in sim.jobs if job.state not in ("completed", "rejected")
    ]
    return decisions(sim)


@pytest.mark.parametrize(
    ("name", "devices"),
    [
        ("burst-24gb.jsonl", "RTX4090-24GB"),
        ("day-diurnal.jsonl", "2xH100-80GB,RTX4090-24GB"),
        ("mixed-hetero.jsonl", "2xH100-80GB,2xRTX4090-24GB"),
    ],
)
async def test_a_gate_and_the_simulator_admit_the_same_requests_in_the_same_order_on_the_same_devices(
    name: str, devices: str
) -> None:
    trace = load_trace(TRACES / name)
    expected = simulated(trace, devices)
    got = await gated(trace, devices)
    assert got[1] == expected[1]
    for mine, theirs in zip(got[0], expected[0], strict=False):
        assert mine[:2] == theirs[:2], (mine, theirs)
        assert math.isclose(mine[2], theirs[2], abs_tol=INTERVAL_S), (mine, theirs)
    assert len(got[0]) == len(expected[0])
