"""The example server's response bodies: plain msgspec structs, encoded with msgspec (no pydantic on the hot path)."""

from __future__ import annotations

from typing import Literal

import msgspec

from vramgate.messages import (
    DeviceSample,
    HostLedgerStatistics,
    HostSample,
    OptimizationSuggestion,
    Plan,
    ResourceSample,
)
from vramgate.messages.gate import DeviceStatistics

#: What a client sees of a request: the gate's ticket states, with ``admitted`` shown as ``running``, and the
#: terminal state once it ended.
Status = Literal["preflight", "queued", "running", "completed", "rejected", "failed", "cancelled", "timed_out"]
TERMINAL: frozenset[str] = frozenset({"completed", "rejected", "failed", "cancelled", "timed_out"})


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    step: int
    total_steps: int


class PlanView(msgspec.Struct, frozen=True, kw_only=True):
    """The plan a request runs with: its level, predicted VRAM, GPU kind, and each change from the request."""

    level: str
    vram_mb: int
    ram_mb: int
    estimated_time_seconds: float
    gpu: str
    width: int
    height: int
    frames: int
    steps: int
    suggestions: tuple[OptimizationSuggestion, ...] = ()

    @classmethod
    def of(cls, plan: Plan) -> PlanView:
        params = plan.params
        return cls(
            level=plan.level,
            vram_mb=plan.requirement.vram_mb,
            ram_mb=plan.requirement.ram_mb,
            estimated_time_seconds=plan.requirement.estimated_time_seconds,
            gpu=plan.gpu or plan.requirement.gpu,
            width=params.width,
            height=params.height,
            frames=params.frames,
            steps=params.steps,
            suggestions=plan.suggestions,
        )


class GenerationStatus(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/generations/{id}``: where a request is, what it runs with, and how far it got."""

    request_id: str
    state: Status
    position: int | None = None
    device: int | None = None
    reservation_mb: int | None = None
    plan: PlanView | None = None
    progress: Progress | None = None
    eta_s: float | None = None
    waited_s: float | None = None
    outcome: str | None = None
    reason: str = ""
    reject_code: str | None = None
    needed_mb: int | None = None
    smallest_gpu: str | None = None


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /v1/generations`` answered 202: the server's id for the request, and where it is now."""

    request_id: str
    state: Status
    position: int | None
    status_url: str
    events_url: str


class GenerationList(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/generations?client=...``: a client's latest requests, newest first."""

    client: str
    requests: tuple[GenerationStatus, ...]


class ServerShutdown(msgspec.Struct, frozen=True, kw_only=True):
    """The last server-sent event of a request that the server, shutting down, keeps queued for its next start."""

    request_id: str
    state: Status
    reason: str = "shutdown"


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Every error answer: a code, a sentence, and for bad input the field path (``$.width``)."""

    error: str
    detail: str
    path: str | None = None
    retry_after_s: float | None = None


class DeviceView(msgspec.Struct, frozen=True, kw_only=True):
    """One device as a client sees it: its name and memory. Never the other processes on it (their PIDs and
    names), its UUID, or what this process's allocator holds."""

    index: int
    name: str
    backend: str
    total_mb: int
    free_mb: int
    used_mb: int
    utilization_pct: float | None = None
    simulated: bool = False
    lost: bool = False

    @classmethod
    def of(cls, device: DeviceSample) -> DeviceView:
        return cls(
            index=device.index,
            name=device.name,
            backend=device.backend,
            total_mb=device.total_mb,
            free_mb=device.free_mb,
            used_mb=device.used_mb,
            utilization_pct=device.utilization_pct,
            simulated=device.simulated,
            lost=device.lost,
        )


class HostView(msgspec.Struct, frozen=True, kw_only=True):
    """The host as a client sees it: its RAM and CPUs (not its paths)."""

    ram_total_mb: int
    ram_available_mb: int
    cpu_count: int

    @classmethod
    def of(cls, host: HostSample) -> HostView:
        return cls(ram_total_mb=host.ram_total_mb, ram_available_mb=host.ram_available_mb, cpu_count=host.cpu_count)


class SampleView(msgspec.Struct, frozen=True, kw_only=True):
    """The latest measurement as a client sees it (the monitor's warnings, which name files, are left out)."""

    at: float
    devices: tuple[DeviceView, ...]
    host: HostView | None

    @classmethod
    def of(cls, sample: ResourceSample) -> SampleView:
        host = HostView.of(sample.host) if sample.host is not None else None
        return cls(at=sample.at, devices=tuple(DeviceView.of(d) for d in sample.devices), host=host)


class DevicesBody(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/devices``: each device's admission ledger (its resident models too), the latest sample of every
    device and the host, and the host RAM ledger."""

    devices: tuple[DeviceStatistics, ...]
    sample: SampleView
    queue_length: int
    running: int
    host: HostLedgerStatistics | None = None


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /healthz``: ``degraded`` (with ``reason``) while the queue has not moved for a while or the message log
    cannot be written (the server keeps serving; recording stopped)."""

    status: Literal["ok", "closing", "degraded"]
    devices: int
    queue_length: int
    queue_limit: int
    running: int
    tracked: int
    finished: int
    reason: str = ""
    queue_stalled_s: float | None = None
