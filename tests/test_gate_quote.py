"""A gate's quote and its conditional submit on one host: real actors, simulated GPUs, asyncio and trio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import pytest

from vramgate._quote import Declined, expected_start
from vramgate.clock import ManualClock
from vramgate.config import AdmissionSettings, CleanupConfig, DevicesConfig, GateConfig, MonitorConfig
from vramgate.gate import Gate, open_gate
from vramgate.hardware import detect
from vramgate.messages import GenerationRequest, Plan, ResourceRequirement, RunParams
from vramgate.messages.admission import AdmissionSnapshot, DeviceLedgerStatistics, LeaseSnapshot, SubmitRequest
from vramgate.messages.quote import Quote, SubmitDeclined

pytestmark = pytest.mark.anyio

BIG = GenerationRequest(model="t2v-A14B", width=832, height=480, frames=81, steps=40)  # most of an H100
SMALL = GenerationRequest(model="ti2v-5B", width=1280, height=704, frames=121, steps=50)


@asynccontextmanager
async def _gate(
    gpus: tuple[str, ...] = ("H100-80GB",), *, queue_limit: int = 64
) -> AsyncIterator[tuple[Gate, ManualClock]]:
    clock = ManualClock()
    config = GateConfig(
        devices=DevicesConfig(use_real_gpus=False),
        monitor=MonitorConfig(interval_s=0.05),
        admission=AdmissionSettings(ram_budget="256GiB", queue_limit=queue_limit),
        cleanup=CleanupConfig(after_run=False),
    )
    devices = detect(gpus, nvml=False, torch=False, clock=clock)
    async with open_gate(config, clock=clock, devices=devices) as gate:
        yield gate, clock


async def test_an_idle_gate_quotes_an_admission_now_and_reserves_nothing() -> None:
    async with _gate() as (gate, _):
        quote = await gate.quote(BIG, node="n1")
        assert quote.fits
        assert quote.admit_now
        assert quote.node == "n1"
        assert quote.plan is not None
        assert quote.vram_mb == quote.plan.requirement.vram_mb > 40_000
        assert quote.start_s == 0.0
        assert quote.run_s == quote.finish_s == pytest.approx(quote.plan.requirement.estimated_time_seconds)
        assert quote.slots == 1  # the plan needs most of the card
        stats = gate.statistics()
        assert stats.submitted == 0
        assert stats.devices[0].ledger.reserved_mb == 0
        halved = await gate.quote(BIG, time_scale=0.5)
        assert halved.run_s == pytest.approx(quote.run_s / 2)


async def test_a_busy_gate_quotes_the_start_when_the_lease_is_expected_to_end() -> None:
    async with _gate() as (gate, clock):
        ticket = await gate.submit_or_decline(BIG)
        assert ticket.state == "admitted"
        assert ticket.plan is not None
        expected = ticket.plan.requirement.estimated_time_seconds
        clock.advance(10)
        quote = await gate.quote(SMALL)
        assert quote.fits
        assert not quote.admit_now
        assert quote.start_s == pytest.approx(expected - 10)
        assert quote.finish_s == pytest.approx(quote.start_s + quote.run_s)
        # A queued request is admitted before a later one: two waits, one after the other.
        queued = await gate.submit_or_decline(BIG, within_s=None)
        assert queued.state == "queued"
        after = await gate.quote(SMALL)
        assert queued.plan is not None
        assert after.start_s == pytest.approx(expected - 10 + queued.plan.requirement.estimated_time_seconds)
        await queued.cancel()
        lease = await ticket.wait_admitted()
        async with gate.hold(lease):
            pass


async def test_submit_or_decline_declines_a_wait_and_keeps_nothing() -> None:
    async with _gate() as (gate, _):
        ticket = await gate.submit_or_decline(BIG)
        before = gate.statistics()
        with pytest.raises(Declined) as caught:
            await gate.submit_or_decline(BIG)
        assert caught.value.code == "too_late"
        assert caught.value.retry_after_s > 0
        quote = caught.value.declined.quote
        assert quote is not None
        assert quote.start_s == caught.value.retry_after_s
        after = gate.statistics()
        assert after.submitted == before.submitted  # not accepted: nothing to end, nothing kept
        assert after.queue_length == 0
        assert after.devices[0].ledger.reserved_mb == before.devices[0].ledger.reserved_mb
        # Within a bound past the expected start, it queues.
        queued = await gate.submit_or_decline(BIG, within_s=quote.start_s + 1)
        assert queued.state == "queued"
        await queued.cancel()
        await queued.wait_ended()
        lease = await ticket.wait_admitted()
        async with gate.hold(lease):
            pass


async def test_submit_or_decline_names_a_full_queue_and_a_request_that_cannot_fit() -> None:
    async with _gate(("RTX4090-24GB",), queue_limit=1) as (gate, _):
        huge = GenerationRequest(model="t2v-A14B", width=1280, height=720, frames=81, steps=40, max_level="none")
        with pytest.raises(Declined) as caught:
            await gate.submit_or_decline(huge)
        assert caught.value.code == "does_not_fit"
        running = await gate.submit_or_decline(SMALL)
        waiting = await gate.submit_or_decline(SMALL, within_s=None)
        assert (running.state, waiting.state) == ("admitted", "queued")
        with pytest.raises(Declined) as full:
            await gate.submit_or_decline(SMALL, within_s=None)
        assert full.value.code == "queue_full"
        assert gate.statistics().submitted == 2
        await waiting.cancel()
        lease = await running.wait_admitted()
        async with gate.hold(lease):
            pass


def _plan(vram_mb: int, seconds: float, gpu: str = "H100-80GB") -> Plan:
    params = RunParams(model="m", task="t2v", width=832, height=480, frames=81, steps=40)
    requirement = ResourceRequirement(vram_mb=vram_mb, ram_mb=0, estimated_time_seconds=seconds, gpu=gpu)
    return Plan(params=params, requirement=requirement, gpu=gpu)


def _ledger(index: int, free_mb: int, reserved_mb: int) -> DeviceLedgerStatistics:
    return DeviceLedgerStatistics(
        index=index,
        gpu="H100-80GB",
        capacity_mb=80_000,
        margin_mb=4_000,
        reserved_mb=reserved_mb,
        others_mb=0,
        others_raw_mb=0,
        free_mb=free_mb,
        leases=1 if reserved_mb else 0,
        sample_age_s=0.0,
        lost=False,
    )


def test_expected_start_replays_lease_ends_and_the_queue_in_order() -> None:
    # Two devices, each running one 60 GB lease: they end at 100 s and 300 s (admitted at 0, now 50).
    leases = (
        LeaseSnapshot(
            lease_id="l1", request_id="a", devices=(0,), reservation_mb=60_000, plan=_plan(60_000, 100), admitted_at=0
        ),
        LeaseSnapshot(
            lease_id="l2", request_id="b", devices=(1,), reservation_mb=60_000, plan=_plan(60_000, 300), admitted_at=0
        ),
    )
    ledgers = [_ledger(0, 16_000, 60_000), _ledger(1, 16_000, 60_000)]
    idle = AdmissionSnapshot(leases=leases)
    small = {"H100-80GB": _plan(10_000, 20)}
    big = {"H100-80GB": _plan(50_000, 40)}
    assert expected_start(idle, ledgers, small, 50.0) == (50.0, small["H100-80GB"], 14)
    start = expected_start(idle, ledgers, big, 50.0)
    assert start is not None
    assert (start.at, start.slots) == (100.0, 2)
    # A big request waiting first takes device 0 at 100 s; the next big one waits for device 1 at 300 s.
    waiting = AdmissionSnapshot(leases=leases, waiting=(SubmitRequest(request_id="c", plans=big),))
    later = expected_start(waiting, ledgers, big, 50.0)
    assert later is not None
    assert later.at == 140.0
    # Compressed time: the leases end sooner.
    scaled = expected_start(idle, ledgers, big, 0.0, time_scale=0.5)
    assert scaled is not None
    assert scaled.at == 50.0
    # Never: more than a device can ever hold; nothing on a lost device.
    assert expected_start(idle, ledgers, {"H100-80GB": _plan(77_000, 10)}, 50.0) is None
    lost = [msgspec.structs.replace(ledger, lost=True) for ledger in ledgers]
    assert expected_start(AdmissionSnapshot(), lost, small, 0.0) is None


def test_quotes_and_declines_are_messages() -> None:
    from vramgate.messages import decode_json, encode_json

    quote = Quote(request_id="r1", fits=True, start_s=1.5, run_s=2.0, finish_s=3.5, node="n1")
    declined = SubmitDeclined(request_id="r1", code="too_late", reason="later", retry_after_s=1.5, quote=quote)
    assert decode_json(encode_json(declined), SubmitDeclined) == declined
