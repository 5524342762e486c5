"""Liveness of the gate: nothing is queued for memory that never comes free, a head that cannot start does not
hold back what fits behind it, a queued ticket says what it waits for, and a queue that is not moving shows in
the gate's statistics. Real actors and admission core on a simulated RTX 4090, on asyncio and trio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest

from vramgate.clock import ManualClock
from vramgate.config import AdmissionSettings, CleanupConfig, DevicesConfig, GateConfig, MonitorConfig, RunConfig
from vramgate.errors import DoesNotFit
from vramgate.gate import Gate, open_gate
from vramgate.hardware import SimulatedGpu, detect
from vramgate.messages import GenerationRequest, RunOptions
from vramgate.policy.timing import time_high_s

pytestmark = pytest.mark.anyio

#: At ``max_level: none`` this needs about 23,066 MiB: more than a 4090 less its margin and CUDA context.
NEVER_FITS = GenerationRequest(
    model="ti2v-5B",
    width=672,
    height=672,
    frames=125,
    steps=10,
    max_level="none",
    options=RunOptions(t5_cpu=True),
)
SHORT = GenerationRequest(model="ti2v-5B", width=832, height=480, frames=17, steps=4)
#: About 14.5 GiB on a 4090: one at a time.
MEDIUM = GenerationRequest(model="ti2v-5B", width=832, height=480, frames=33, steps=10)


@asynccontextmanager
async def _gate(clock: ManualClock) -> AsyncIterator[tuple[Gate, SimulatedGpu]]:
    config = GateConfig(
        devices=DevicesConfig(use_real_gpus=False),
        monitor=MonitorConfig(interval_s=0.05),
        admission=AdmissionSettings(ram_budget="256GiB"),
        cleanup=CleanupConfig(after_run=False),
    )
    devices = detect(("RTX4090-24GB",), nvml=False, torch=False, clock=clock)
    async with open_gate(config, clock=clock, devices=devices) as gate:
        yield gate, devices.simulated[0]


async def _until(condition: Callable[[], object]) -> None:
    with anyio.fail_after(5):
        while True:
            if condition():
                return
            await anyio.sleep(0.001)


async def test_a_plan_for_memory_that_never_leaves_is_rejected_and_what_fits_runs() -> None:
    clock = ManualClock()
    async with _gate(clock) as (gate, device):
        assert device.context_overhead_mb > 0
        ledger = gate.statistics().devices[0].ledger
        assert ledger.permanent_mb == device.context_overhead_mb
        first = await gate.submit(NEVER_FITS)
        await _until(lambda: first.ended is not None)
        with pytest.raises(DoesNotFit) as raised:
            await first.wait_admitted()
        assert raised.value.needed_mb is not None
        assert raised.value.needed_mb > ledger.capacity_mb - ledger.margin_mb - ledger.permanent_mb
        assert first.rejected is not None
        assert first.rejected.code == "does_not_fit"
        second = await gate.submit(SHORT)
        await _until(lambda: second.lease is not None)
        lease = await second.wait_admitted()
        async with gate.hold(lease):
            assert gate.statistics().queue_length == 0


async def test_a_head_waiting_for_others_does_not_hold_back_what_fits_behind_it() -> None:
    clock = ManualClock()
    async with _gate(clock) as (gate, device):
        device.add_outside("other-process", 12_000)  # arrives after the gate opened: it may leave
        clock.advance(0.05)
        await _until(lambda: gate.statistics().devices[0].ledger.others_mb >= 12_000)
        head = await gate.submit(GenerationRequest(model="ti2v-5B", width=1280, height=704, frames=121, steps=50))
        await gate.wait_idle()
        assert head.state == "queued"  # it fits once the other process leaves
        behind = await gate.submit(GenerationRequest(model="ti2v-5B", width=480, height=480, frames=17, steps=4))
        await _until(lambda: behind.lease is not None)
        assert head.state == "queued"
        assert "others" in head.reason
        lease = await behind.wait_admitted()
        async with gate.hold(lease):
            pass
        device.remove_outside("other-process")
        for _ in range(400):  # others' use is believed to drop with a half-life: let time pass
            clock.advance(0.5)
            await anyio.sleep(0.001)
            if head.lease is not None:
                break
        async with gate.hold(await head.wait_admitted()):
            pass


async def test_a_queued_ticket_says_what_it_waits_for_and_when_it_should_run() -> None:
    clock = ManualClock()
    async with _gate(clock) as (gate, _):
        running = await gate.submit(MEDIUM)
        lease = await running.wait_admitted()
        waiting = await gate.submit(MEDIUM)
        third = await gate.submit(MEDIUM)
        await gate.wait_idle()
        assert waiting.state == third.state == "queued"
        assert "held by 1 running lease" in waiting.reason
        assert "gpu0" in waiting.reason
        assert "behind 1 request" in third.reason
        expected = lease.plan.requirement.estimated_time_seconds
        own = time_high_s(waiting.plan.requirement) if waiting.plan is not None else 0.0  # the top of its interval
        eta = waiting.eta_s()
        assert eta is not None
        assert eta == pytest.approx(expected + own, rel=1e-6)
        clock.advance(10.0)
        later = waiting.eta_s()
        assert later is not None
        assert later == pytest.approx(eta - 10.0, rel=1e-6)
        third_eta = third.eta_s()
        assert third_eta is not None
        assert third_eta >= eta
        async with gate.hold(lease):
            pass
        await _until(lambda: waiting.lease is not None)
        assert waiting.reason == ""


async def test_statistics_report_a_queue_that_is_not_moving() -> None:
    clock = ManualClock()
    async with _gate(clock) as (gate, device):
        assert gate.statistics().queue_stalled_s is None
        device.add_outside("other-process", 12_000)
        clock.advance(0.05)
        await _until(lambda: gate.statistics().devices[0].ledger.others_mb >= 12_000)
        head = await gate.submit(GenerationRequest(model="ti2v-5B", width=1280, height=704, frames=121, steps=50))
        await gate.wait_idle()
        assert head.state == "queued"
        clock.advance(30.0)
        # The monitor's next tick stamps a fresh sample at the new time; until then the stall reads as stale samples.
        await _until(lambda: "gpu0" in gate.statistics().stall_reason)
        stats = gate.statistics()
        assert stats.queue_stalled_s is not None
        assert stats.queue_stalled_s >= 30.0
        assert "gpu0" in stats.stall_reason
        assert "others" in stats.stall_reason
        await head.cancel()
        await _until(lambda: head.ended is not None)
        await gate.wait_idle()
        assert gate.statistics().queue_stalled_s is None
        assert gate.statistics().stall_reason == ""


async def test_a_queued_tickets_eta_is_on_the_runs_time_scale() -> None:
    """With compressed runs (``[run] time_scale``), a queued request's ETA adds its own run as it will last here."""
    clock = ManualClock()
    config = GateConfig(
        devices=DevicesConfig(use_real_gpus=False),
        monitor=MonitorConfig(interval_s=0.05),
        admission=AdmissionSettings(ram_budget="256GiB"),
        cleanup=CleanupConfig(after_run=False),
        run=RunConfig(time_scale=0.01),
    )
    devices = detect(("RTX4090-24GB",), nvml=False, torch=False, clock=clock)
    async with open_gate(config, clock=clock, devices=devices) as gate:
        running = await gate.submit(MEDIUM)
        lease = await running.wait_admitted()
        waiting = await gate.submit(MEDIUM)
        await gate.wait_idle()
        assert waiting.state == "queued"
        assert waiting.plan is not None
        standing = gate.standing(waiting.request_id)
        assert standing is not None
        assert standing.starts_at is not None
        own = 0.01 * time_high_s(waiting.plan.requirement)
        eta = waiting.eta_s()
        assert eta == pytest.approx(standing.starts_at - clock.now() + own, rel=1e-6)
        async with gate.hold(lease):
            pass
