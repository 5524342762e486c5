"""Builders shared by the admission tests: plans, submits, samples and a driver that records every event."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from vramgate.messages import (
    DeviceSample,
    Message,
    Plan,
    RequestAdmitted,
    RequestEnded,
    ResourceRequirement,
    ResourceSample,
    RunParams,
    TorchMemory,
)
from vramgate.messages.admission import SubmitRequest
from vramgate.policy.admission import AdmissionCore
from vramgate.policy.ledger import DeviceConfig

H100_MB = 81559
PARAMS = RunParams(model="t2v-A14B", task="t2v", width=1280, height=720, frames=81, steps=40)


def plan(vram_mb: int, *, seconds: float = 10.0, world: int = 1, gpu: str = "") -> Plan:
    requirement = ResourceRequirement(
        vram_mb=vram_mb, ram_mb=1024, estimated_time_seconds=seconds, world_size=world, gpu=gpu
    )
    return Plan(params=PARAMS, requirement=requirement, gpu=gpu)


def submit(
    request_id: str,
    vram_mb: int = 0,
    *,
    priority: int = 0,
    seconds: float = 10.0,
    world: int = 1,
    max_wait_s: float | None = None,
    arrival: float | None = None,
    plans: Mapping[str, Plan] | None = None,
    fallback: bool = True,
) -> SubmitRequest:
    return SubmitRequest(
        request_id=request_id,
        plans=dict(plans) if plans is not None else {"*": plan(vram_mb, seconds=seconds, world=world)},
        priority=priority,
        max_wait_s=max_wait_s,
        arrival=arrival,
        fallback=fallback,
    )


def h100(index: int, *, margin_mb: int | None = None) -> DeviceConfig:
    return DeviceConfig(index=index, gpu="H100-80GB", capacity_mb=H100_MB, margin_mb=margin_mb)


def device_sample(
    index: int, used_mb: int, *, total_mb: int = H100_MB, ours_mb: int | None = None, lost: bool = False
) -> DeviceSample:
    torch = None
    if ours_mb is not None:
        torch = TorchMemory(
            allocated_mb=ours_mb,
            reserved_mb=ours_mb,
            active_mb=ours_mb,
            peak_allocated_mb=ours_mb,
            peak_reserved_mb=ours_mb,
        )
    return DeviceSample(
        index=index,
        name="H100-80GB",
        uuid=f"GPU-{index}",
        backend="simulated",
        total_mb=total_mb,
        free_mb=max(0, total_mb - used_mb),
        used_mb=used_mb,
        torch=torch,
        simulated=True,
        lost=lost,
    )


def sample(at: float, used: Mapping[int, int], *, ours: Mapping[int, int] | None = None) -> ResourceSample:
    return ResourceSample(
        at=at,
        devices=tuple(
            device_sample(i, u, ours_mb=None if ours is None else ours.get(i, 0)) for i, u in sorted(used.items())
        ),
    )


class Driver:
    """Feeds a core and records what it says: admissions by request, terminal states, every event."""

    def __init__(self, core: AdmissionCore) -> None:
        self.core = core
        self.events: list[Message] = []
        self.admitted: dict[str, RequestAdmitted] = {}
        self.ended: dict[str, RequestEnded] = {}
        self.ends = Counter[str]()

    def send(self, message: Message, now: float) -> list[Message]:
        out = self.core.handle(message, now)
        for event in out:
            if isinstance(event, RequestAdmitted):
                assert event.request_id not in self.admitted, event
                self.admitted[event.request_id] = event
            elif isinstance(event, RequestEnded):
                self.ends[event.request_id] += 1
                assert self.ends[event.request_id] == 1, f"{event.request_id} ended twice"
                self.ended[event.request_id] = event
        self.events.extend(out)
        self.core.check_invariants()
        return out
