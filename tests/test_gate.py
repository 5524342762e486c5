"""The gate end to end: real actors, real admission core, simulated GPUs, on asyncio and trio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import msgspec
import pytest

from vramgate.clock import ManualClock
from vramgate.config import AdmissionSettings, CleanupConfig, DevicesConfig, GateConfig, MonitorConfig, RunConfig
from vramgate.errors import BadRequest, DoesNotFit, QueueFull, WaitTimeout
from vramgate.gate import Gate, Lease, RequestCancelled, open_gate
from vramgate.hardware import SimulatedGpu, SimulatedOutOfMemory, detect
from vramgate.messages import GenerationRequest, Message, RequestAdmitted, RequestEnded, RunFinished, RunOptions

pytestmark = pytest.mark.anyio

SMALL = GenerationRequest(model="ti2v-5B", width=1280, height=704, frames=121, steps=50)
A14B_480P = GenerationRequest(model="t2v-A14B", width=832, height=480, frames=81, steps=40)


def _config(**admission: object) -> GateConfig:
    return GateConfig(
        devices=DevicesConfig(use_real_gpus=False),
        monitor=MonitorConfig(interval_s=0.05),
        admission=AdmissionSettings(ram_budget="256GiB", **admission),  # type: ignore[arg-type]
        cleanup=CleanupConfig(after_run=False),
    )


@asynccontextmanager
async def _gate(
    gpus: tuple[str, ...] = ("H100-80GB",), *, clock: ManualClock | None = None, **admission: object
) -> AsyncIterator[tuple[Gate, list[SimulatedGpu]]]:
    clock = clock if clock is not None else ManualClock()
    devices = detect(gpus, nvml=False, torch=False, clock=clock)
    async with open_gate(_config(**admission), clock=clock, devices=devices) as gate:
        yield gate, list(devices.simulated)


class _Events:
    """Collects every routed lifecycle event (a listener on the gate)."""

    def __init__(self, gate: Gate) -> None:
        self.events: list[Message] = []
        gate.add_listener(self.events.append)

    def ended(self) -> dict[str, list[str]]:
        states: dict[str, list[str]] = {}
        for event in self.events:
            if isinstance(event, RequestEnded):
                states.setdefault(event.request_id, []).append(event.state)
        return states


async def _until(condition: Callable[[], object]) -> None:
    """Let the actors run until ``condition()`` holds (at most 5 s)."""
    with anyio.fail_after(5):
        while True:
            if condition():
                return
            await anyio.sleep(0.001)


async def _run_on(lease: Lease, fraction: float = 0.9) -> None:
    device = lease.simulated
    assert device is not None
    device.allocate(lease.lease_id, int(lease.reservation_mb * fraction))
    await anyio.lowlevel.checkpoint()
    device.free(lease.lease_id)


async def test_admit_run_release_and_learn() -> None:
    async with _gate() as (gate, _):
        events = _Events(gate)
        async with gate.admit(SMALL) as lease:
            assert lease.device == 0
            assert lease.reservation_mb == lease.plan.requirement.vram_mb
            assert gate.statistics().devices[0].ledger.reserved_mb == lease.reservation_mb
            await _run_on(lease)
        ticket_id = lease.request_id
        await gate.wait_idle()
        stats = gate.statistics()
        assert stats.devices[0].ledger.reserved_mb == 0
        assert stats.completed == 1
        assert events.ended() == {ticket_id: ["completed"]}
        finished = [e for e in events.events if isinstance(e, RunFinished)]
        assert finished[0].outcome == "ok"
        # the simulated device measured the run's peak: 90% of the reservation
        assert finished[0].observed.torch_peak_reserved_mb == int(lease.reservation_mb * 0.9)
        assert stats.estimate_ratio_p50 == pytest.approx(0.9, abs=0.01)


async def test_ids_are_assigned_and_duplicates_refused() -> None:
    async with _gate() as (gate, _):
        first = await gate.submit(SMALL)
        assert first.request_id == "r000001"
        named = await gate.submit(msgspec.structs.replace(SMALL, request_id="job-7"))
        assert named.request_id == "job-7"
        with pytest.raises(BadRequest, match="has not ended"):
            await gate.submit(msgspec.structs.replace(SMALL, request_id="job-7"))
        for ticket in (first, named):
            lease = await ticket.wait_admitted()
            async with gate.hold(lease):
                pass


async def test_request_that_fits_nowhere_is_rejected_with_what_it_needs() -> None:
    async with _gate(("RTX4090-24GB",)) as (gate, _):
        huge = GenerationRequest(model="t2v-A14B", width=1280, height=720, frames=241, steps=40, max_level="none")
        with pytest.raises(DoesNotFit) as info:
            async with gate.admit(huge):
                pytest.fail("must not be admitted")
        assert info.value.needed_mb is not None
        assert info.value.needed_mb > 24_000
        assert gate.statistics().rejected == 1


async def test_unknown_model_is_a_bad_request() -> None:
    async with _gate() as (gate, _):
        with pytest.raises(BadRequest, match="unknown model"):
            async with gate.admit(GenerationRequest(model="nope-1B", width=64, height=64)):
                pytest.fail("must not be admitted")


async def test_queue_full_backpressure_and_cancel() -> None:
    async with _gate(queue_limit=2) as (gate, devices):
        device = devices[0]
        blocker = await gate.submit(A14B_480P)
        lease = await blocker.wait_admitted()
        queued = [await gate.submit(A14B_480P), await gate.submit(A14B_480P)]
        for ticket in queued:
            await _until(lambda t=ticket: t.state == "queued")
        assert gate.queue_length == 2
        with pytest.raises(QueueFull) as info:
            gate.submit_nowait(A14B_480P)
        assert info.value.retry_after_s > 0
        # submit waits while the queue is full ...
        third: list[object] = []

        async def submit_third() -> None:
            third.append(await gate.submit(A14B_480P))

        async with anyio.create_task_group() as tg:
            tg.start_soon(submit_third)
            await anyio.sleep(0.05)
            assert third == []
            # ... and proceeds once a queued request leaves (cancelled)
            await queued[0].cancel()
            await _until(lambda: third)
        ended = await queued[0].wait_ended()
        assert ended.state == "cancelled"
        with pytest.raises(RequestCancelled):
            await queued[0].wait_admitted()
        assert device.allocated_mb == 0
        async with gate.hold(lease):
            pass
        for ticket in (queued[1], third[0]):
            assert hasattr(ticket, "wait_admitted")
            nxt = await ticket.wait_admitted()  # type: ignore[attr-defined]
            async with gate.hold(nxt):
                pass
        await gate.wait_idle()
        assert gate.statistics().devices[0].ledger.reserved_mb == 0


async def test_cancelling_the_waiter_removes_the_request() -> None:
    async with _gate() as (gate, _):
        events = _Events(gate)
        blocker = await (await gate.submit(A14B_480P)).wait_admitted()
        big = GenerationRequest(model="t2v-A14B", width=1280, height=720, frames=81, steps=40)
        with anyio.move_on_after(0.1):
            async with gate.admit(big):
                pytest.fail("must not be admitted while the device is busy")
        await gate.wait_idle()
        assert list(events.ended().values()) == [["cancelled"]]
        assert gate.queue_length == 0
        async with gate.hold(blocker):
            pass


async def _allocate_too_much(lease: Lease) -> None:
    device = lease.simulated
    assert device is not None
    device.allocate(lease.lease_id, device.total_mb * 2)


async def test_every_exit_path_releases_the_lease() -> None:
    async with _gate() as (gate, _):
        events = _Events(gate)
        with pytest.raises(ValueError, match="boom"):
            async with gate.admit(SMALL):
                raise ValueError("boom")
        with anyio.move_on_after(0.05):
            async with gate.admit(SMALL):
                await anyio.sleep(10)
        with pytest.raises(SimulatedOutOfMemory):
            await gate.run(SMALL, _allocate_too_much)
        await gate.wait_idle()
        stats = gate.statistics()
        assert stats.devices[0].ledger.reserved_mb == 0
        assert stats.running == 0
        outcomes = [e.outcome for e in events.events if isinstance(e, RunFinished)]
        assert outcomes == ["error", "cancelled", "oom"]
        assert sorted(s[0] for s in events.ended().values()) == ["cancelled", "failed", "failed"]
        assert stats.ooms == 1


async def test_a_release_waits_its_turn_when_the_request_actors_mailbox_is_full() -> None:
    # The run's end is told at once while the mailbox has room; when it is full (here with advisory progress), the
    # block waits for room, shielded from a cancellation, and the lease is still released, once.
    async with _gate(queue_limit=2) as (gate, _):
        events = _Events(gate)
        assert gate.system is not None
        mailbox = gate.system.actor_statistics("gate").mailbox_capacity
        for cancel in (False, True):
            with anyio.CancelScope() as scope:
                async with gate.admit(SMALL) as lease:
                    for step in range(mailbox + 10):  # dropped once the mailbox is full
                        lease.progress_nowait(step, mailbox + 10)
                    assert gate.system.actor_statistics("gate").mailbox_size == mailbox
                    if cancel:
                        scope.cancel()
            assert lease.released
        await gate.wait_idle()
        stats = gate.statistics()
        assert stats.devices[0].ledger.reserved_mb == 0
        assert stats.running == 0
        assert [e.outcome for e in events.events if isinstance(e, RunFinished)] == ["ok", "ok"]
        assert sorted(s for states in events.ended().values() for s in states) == ["completed", "completed"]


async def test_retry_on_oom_replans_with_less_memory() -> None:
    import torch

    clock = ManualClock()
    devices = detect(("H100-80GB",), nvml=False, torch=False, clock=clock)
    config = msgspec.structs.replace(_config(), run=RunConfig(retry_on_oom=True, max_oom_retries=2))
    plans: list[int] = []

    async def runner(lease: Lease) -> str:
        plans.append(lease.reservation_mb)
        if len(plans) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "video"

    async with open_gate(config, clock=clock, devices=devices) as gate:
        result = await gate.run(A14B_480P, runner)
        assert result == "video"
        assert len(plans) == 2
        assert plans[1] <= plans[0] * 0.9
        stats = gate.statistics()
        assert stats.ooms == 1
        assert stats.oom_retries == 1


async def test_max_wait_times_out() -> None:
    clock = ManualClock()
    async with _gate(clock=clock) as (gate, _):
        blocker = await (await gate.submit(A14B_480P)).wait_admitted()
        impatient = msgspec.structs.replace(
            GenerationRequest(model="t2v-A14B", width=1280, height=720, frames=81, steps=40), max_wait_s=5.0
        )
        ticket = await gate.submit(impatient)
        await _until(lambda: ticket.state == "queued")
        clock.advance(6.0)
        with anyio.fail_after(5):
            ended = await ticket.wait_ended()
        assert ended.state == "timed_out"
        with pytest.raises(WaitTimeout):
            await ticket.wait_admitted()
        async with gate.hold(blocker):
            pass


async def test_outside_consumer_holds_back_admission() -> None:
    clock = ManualClock()
    async with _gate(clock=clock) as (gate, devices):
        device = devices[0]
        device.add_outside("other-process", 70_000)
        clock.advance(0.05)  # the monitor samples the outside use
        await _until(lambda: gate.statistics().devices[0].ledger.others_mb >= 70_000)
        # 720p A14B cannot fit the 7 GiB others leave: it is planned for the device as others leave it, and waits
        ticket = await gate.submit(GenerationRequest(model="t2v-A14B", width=1280, height=720, frames=81, steps=40))
        await gate.wait_idle()
        assert ticket.state == "queued"
        assert ticket.lease is None
        device.remove_outside("other-process")
        for _ in range(200):  # others' use is believed to drop slowly (smoothing): let time pass
            clock.advance(0.5)
            await anyio.sleep(0.001)
            if ticket.lease is not None:
                break
        lease = await ticket.wait_admitted()
        async with gate.hold(lease):
            pass


async def test_a_plan_that_fits_beside_others_runs_now() -> None:
    clock = ManualClock()
    async with _gate(clock=clock) as (gate, devices):
        devices[0].add_outside("other-process", 40_000)
        clock.advance(0.05)
        await _until(lambda: gate.statistics().devices[0].ledger.others_mb >= 40_000)
        async with gate.admit(A14B_480P) as lease:
            # the plan fits what the other process leaves: it offloads instead of waiting
            assert lease.reservation_mb <= 81_559 - 40_000 - 4078
            assert lease.plan.suggestions


async def test_two_gpu_kinds_get_their_own_plans() -> None:
    async with _gate(("RTX4090-24GB", "H100-80GB")) as (gate, _):
        resident = GenerationRequest(
            model="t2v-A14B",
            width=1280,
            height=720,
            frames=81,
            steps=40,
            options=RunOptions(offload_model=False, resident_blocks=40, sequential_offload=False),
        )
        big = await gate.submit(resident)
        lease_big = await big.wait_admitted()
        assert lease_big.device == 1  # an A14B expert kept resident only fits the H100
        small = await gate.submit(A14B_480P)
        lease_small = await small.wait_admitted()
        assert lease_small.device == 0  # the 4090 runs the 480p plan with offloading
        assert any(s.parameter in ("offload_model", "resident_blocks") for s in lease_small.plan.suggestions)
        for lease in (lease_big, lease_small):
            async with gate.hold(lease):
                pass


async def test_ticket_events_follow_the_request() -> None:
    async with _gate() as (gate, _):
        ticket = await gate.submit(SMALL)
        lease = await ticket.wait_admitted()
        async with gate.hold(lease):
            await lease.progress(25, 50)
            await _until(lambda: ticket.progress is not None)
            assert ticket.eta_s() is not None
        kinds = [type(event).__name__ async for event in ticket]
        assert kinds[0] == "RequestAccepted"
        assert "PlanOptimized" in kinds
        assert kinds.index("RequestAdmitted") < kinds.index("RunProgress") < kinds.index("RunFinished")
        assert kinds[-1] == "RequestEnded"


async def test_admitted_events_match_the_ledger() -> None:
    async with _gate(("RTX4090-24GB", "H100-80GB")) as (gate, _):
        events = _Events(gate)
        tickets = [await gate.submit(r) for r in (SMALL, A14B_480P, SMALL, A14B_480P, SMALL)]
        await gate.wait_idle()
        leases = [ticket.lease for ticket in tickets if ticket.lease is not None]
        admitted = [e for e in events.events if isinstance(e, RequestAdmitted)]
        stats = gate.statistics()
        for ledger in (d.ledger for d in stats.devices):
            mine = sum(e.reservation_mb for e in admitted if ledger.index in e.devices)
            assert ledger.reserved_mb == mine
            assert ledger.reserved_mb + ledger.margin_mb + ledger.others_mb <= ledger.capacity_mb
        assert len(leases) >= 2
        for ticket in tickets:
            if ticket.lease is None:
                await ticket.cancel()
        for lease in leases:
            async with gate.hold(lease):
                pass
        await gate.wait_idle()
        assert sorted(len(states) for states in events.ended().values()) == [1] * len(tickets)


async def test_the_replaced_managers_calls_on_a_gate() -> None:
    async with _gate(("RTX4090-24GB",)) as (gate, _):
        ok, why = gate.check_vram_availability(20_000)
        assert ok, why
        ok, why = gate.check_vram_availability(23_000)
        assert not ok
        assert "margin" in why
        requirement = gate.estimate_resource_requirements("ti2v-5B", "720p", steps=50)
        assert requirement.gpu == "RTX4090-24GB"
        params, suggestions = gate.optimize_parameters_for_resources(SMALL)
        assert params.frames == 121
        assert "free_text_encoder" in [s.parameter for s in suggestions]
        assert all(s.quality_impact == "none" for s in suggestions)
        report = await gate.cleanup_memory(aggressive=True)
        assert report.actions[0].startswith("gc.collect x3")
        assert gate.statistics().cleanups == 1
