"""A crashed admission actor goes on from its last consistent state, not from a half-updated core.

The fault strikes inside the core's handling of a release, after the core released the lease and admitted the
next request but before those events got out: the core then holds a lease nobody was told about. The actor must
rebuild its core from what it had told the world (its leases and its queue), and the supervisor's redelivery of
the release must then do exactly what it would have done the first time.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from vramgate.actors import Actor, ActorSystem, Envelope, Recorder
from vramgate.actors.admission import AdmissionShell, admission_actor, build_core
from vramgate.clock import ManualClock
from vramgate.messages import (
    LeaseReleased,
    LogHeader,
    Message,
    Plan,
    RequestAdmitted,
    RequestEnded,
    RequestQueued,
    ResourceRequirement,
    RunParams,
)
from vramgate.messages.admission import DeviceLost, ReleaseLease, SubmitRequest
from vramgate.messages.log import CoreSpec
from vramgate.policy.admission import AdmissionConfig, AdmissionCore
from vramgate.policy.ledger import DeviceConfig
from vramgate.replay import replay

pytestmark = pytest.mark.anyio

H100_MB = 81559
DEVICES = [DeviceConfig(index=i, gpu="H100-80GB", capacity_mb=H100_MB) for i in range(2)]
CONFIG = AdmissionConfig(stale_after_s=None)
RECORDED = admission_actor(DEVICES, CONFIG, events_to="router").config
PARAMS = RunParams(model="t2v-A14B", task="t2v", width=1280, height=720, frames=81, steps=40)


def submit(request_id: str, vram_mb: int, *, priority: int = 0) -> SubmitRequest:
    requirement = ResourceRequirement(vram_mb=vram_mb, ram_mb=1024, estimated_time_seconds=30.0)
    return SubmitRequest(
        request_id=request_id, plans={"*": Plan(params=PARAMS, requirement=requirement)}, priority=priority
    )


class FaultyCore(AdmissionCore):
    """Raises on the ``crash_on``-th release, after handling it (its state moved on, its events are lost)."""

    def __init__(self, crash_on: int) -> None:
        super().__init__(DEVICES, CONFIG)
        self.crash_on = crash_on
        self.releases = 0

    def handle(self, message: Message, now: float) -> list[Message]:
        out = super().handle(message, now)
        if isinstance(message, ReleaseLease):
            self.releases += 1
            if self.releases == self.crash_on:
                raise RuntimeError(f"fault after handling a release ({len(out)} events lost)")
        return out


class Router(Actor[Message]):
    """What the gate's router knows: the live leases, and every admission and end by request."""

    def __init__(self) -> None:
        self.live: dict[str, RequestAdmitted] = {}
        self.admitted: Counter[str] = Counter()
        self.lease_ids: Counter[str] = Counter()
        self.ended: Counter[str] = Counter()
        self.queued: set[str] = set()

    async def receive(self, message: Message, envelope: Envelope) -> None:
        if isinstance(message, RequestAdmitted):
            self.live[message.lease_id] = message
            self.admitted[message.request_id] += 1
            self.lease_ids[message.lease_id] += 1
        elif isinstance(message, LeaseReleased):
            del self.live[message.lease_id]
        elif isinstance(message, RequestEnded):
            self.ended[message.request_id] += 1
        elif isinstance(message, RequestQueued):
            self.queued.add(message.request_id)

    def reserved_by_device(self) -> list[int]:
        per_device = [0] * len(DEVICES)
        for admitted in self.live.values():
            for index in admitted.devices:
                per_device[index] += admitted.reservation_mb
        return per_device


def faulty_shell(crash_on: int) -> AdmissionShell:
    shell = build_core(LogHeader(), CoreSpec(name="admission", kind="admission", config=RECORDED))
    shell.core = FaultyCore(crash_on)
    return shell


async def test_a_crash_mid_burst_loses_no_lease_doubles_none_and_ends_every_request_once(tmp_path: Path) -> None:
    clock = ManualClock()
    log = tmp_path / "run.jsonl"
    system = ActorSystem(clock=clock, recorder=Recorder(log))
    actor = admission_actor(DEVICES, CONFIG, events_to="router")
    actor.shell.core = FaultyCore(crash_on=3)
    router = Router()
    system.spawn(router, name="router")
    admission = system.spawn(actor, name="admission")
    sizes = [20000, 30000, 12000, 25000, 8000]
    requests = [f"r{i:02d}" for i in range(36)]
    async with system:
        for i, rid in enumerate(requests[:24]):
            await admission.tell(submit(rid, sizes[i % len(sizes)], priority=i % 3))
        await system.wait_idle()
        assert len(router.live) >= 6
        assert len(router.queued) >= 12
        released = 0
        while router.live:
            clock.advance(1.0)
            oldest = min(router.live.values(), key=lambda a: int(a.lease_id.split("-")[1]))
            await admission.tell(ReleaseLease(lease_id=oldest.lease_id))
            await system.wait_idle()
            released += 1
            core = actor.admission
            core.check_invariants()
            reserved = [device.reserved_mb for device in core.statistics().devices]
            assert reserved == router.reserved_by_device(), f"after release {released}"
            assert core.running == len(router.live)
            if released == 4:  # the burst goes on after the crash
                for i, rid in enumerate(requests[24:]):
                    await admission.tell(submit(rid, sizes[i % len(sizes)]))
                await system.wait_idle()
        assert admission.statistics().restarts == 1
        assert actor.admission.queue_length == 0
    assert router.admitted == Counter(dict.fromkeys(requests, 1))  # every request admitted once
    assert max(router.lease_ids.values()) == 1  # no lease id given twice
    assert router.ended == Counter(dict.fromkeys(requests, 1))  # and every request ended exactly once
    result = replay(log, cores={"admission": lambda header: faulty_shell(crash_on=3)})
    assert result.identical, result.summary()  # the same fault replays to the same rebuild and decisions


async def test_the_rebuilt_core_takes_samples_and_lost_devices_it_had_seen() -> None:
    """A device lost before the crash stays lost; the next admission goes where the first core would have put it."""
    clock = ManualClock()
    system = ActorSystem(clock=clock)
    actor = admission_actor(DEVICES, CONFIG, events_to="router")
    actor.shell.core = FaultyCore(crash_on=1)
    router = Router()
    system.spawn(router, name="router")
    admission = system.spawn(actor, name="admission")
    async with system:
        await admission.tell(DeviceLost(index=1, reason="fell off the bus"))
        await admission.tell(submit("a", 60000))
        await admission.tell(submit("b", 60000))  # waits: device 1 is lost
        await system.wait_idle()
        assert [a.devices for a in router.live.values()] == [(0,)]
        lease = next(iter(router.live))
        await admission.tell(ReleaseLease(lease_id=lease))  # crashes after handling, then is redelivered
        await system.wait_idle()
        assert admission.statistics().restarts == 1
        assert [(a.request_id, a.devices) for a in router.live.values()] == [("b", (0,))]
        await admission.tell(submit("c", 60000))
        await system.wait_idle()
        assert "c" in router.queued  # device 1 is still lost
        assert router.admitted["c"] == 0
