"""Lifecycle events: what happened to a request, from acceptance to its one terminal state."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from vramgate.messages._base import MB, Ident, Message, Seconds
from vramgate.messages.plans import Plan, ResourceRequirement
from vramgate.messages.requests import GenerationRequest

Outcome = Literal["ok", "oom", "error", "cancelled"]
TerminalState = Literal["completed", "rejected", "failed", "cancelled", "timed_out"]
RejectCode = Literal[
    "bad_request", "does_not_fit", "queue_full", "shutting_down", "device_lost", "host_ram_does_not_fit"
]


class RequestAccepted(Message, frozen=True):
    """The gate accepted a decoded request and gave it its id."""

    request_id: Ident
    request: GenerationRequest


class RequirementEstimated(Message, frozen=True):
    """Preflight: the estimator's requirement for a request, as given, on one GPU model."""

    request_id: Ident
    requirement: ResourceRequirement


class PlanOptimized(Message, frozen=True):
    """The optimizer's plan for a request on a budget (it may say it does not fit)."""

    request_id: Ident
    plan: Plan


class RequestQueued(Message, frozen=True):
    """The request waits for memory; ``position`` is 1-based."""

    request_id: Ident
    position: Annotated[int, msgspec.Meta(ge=1)]
    reason: str = ""


class RequestAdmitted(Message, frozen=True):
    """A lease was granted: ``reservation_mb`` on each of ``devices`` is held for this run until it is released.

    ``ram_mb`` is its host RAM reservation. ``reservation_mb`` leaves out the plan's weights already resident
    there (``resident_mb`` of them): the run uses them without reserving them again.
    """

    request_id: Ident
    lease_id: Ident
    devices: tuple[int, ...]
    reservation_mb: MB
    plan: Plan
    waited_s: Seconds = 0.0
    ram_mb: MB = 0
    resident_mb: MB = 0


class RequestRejected(Message, frozen=True):
    """The request cannot run. ``needed_mb`` and ``smallest_gpu`` say what it would take.

    ``retry_after_s`` (for ``queue_full``) estimates when the queue will have room again. ``needed_ram_mb``
    (for ``host_ram_does_not_fit``) is the host RAM it needs and ``available_ram_mb`` the most the host can give.
    """

    request_id: Ident
    code: RejectCode
    reason: str
    needed_mb: MB | None = None
    smallest_gpu: str | None = None
    best_plan: Plan | None = None
    retry_after_s: Seconds | None = None
    needed_ram_mb: MB | None = None
    available_ram_mb: MB | None = None


class RunProgress(Message, frozen=True):
    """The run reports step ``step`` of ``total_steps``."""

    request_id: Ident
    lease_id: Ident
    step: Annotated[int, msgspec.Meta(ge=0)]
    total_steps: Annotated[int, msgspec.Meta(ge=1)]


class ObservedPeak(Message, frozen=True):
    """Peaks a run observed: torch's allocator peaks for this process, and NVML's device-wide peak used."""

    torch_peak_allocated_mb: MB | None = None
    torch_peak_reserved_mb: MB | None = None
    nvml_peak_used_mb: MB | None = None

    def best_mb(self) -> int | None:
        """The figure that best matches a reservation: reserved, else allocated, else NVML's."""
        for value in (self.torch_peak_reserved_mb, self.torch_peak_allocated_mb, self.nvml_peak_used_mb):
            if value is not None:
                return value
        return None


class RunFinished(Message, frozen=True):
    """A run ended, with its outcome and what it observed."""

    request_id: Ident
    lease_id: Ident
    outcome: Outcome
    observed: ObservedPeak = ObservedPeak()
    seconds: Seconds | None = None
    error: str = ""


class CleanupReport(Message, frozen=True):
    """What a cleanup did and freed. ``unavailable`` says what it could not do (no torch, no CUDA)."""

    device: int | None = None
    request_id: Ident | None = None
    aggressive: bool = False
    trigger: Literal["post_run", "proactive", "manual"] = "post_run"
    gc_collected: int = 0
    torch_reserved_before_mb: MB | None = None
    torch_reserved_after_mb: MB | None = None
    torch_allocated_before_mb: MB | None = None
    torch_allocated_after_mb: MB | None = None
    device_used_before_mb: MB | None = None
    device_used_after_mb: MB | None = None
    freed_mb: int = 0
    actions: tuple[str, ...] = ()
    unavailable: tuple[str, ...] = ()
    seconds: Seconds = 0.0


class CleanupRequest(Message, frozen=True):
    """Ask for a cleanup now (``device``: a device index, or every device when ``None``)."""

    device: int | None = None
    aggressive: bool = False


class DeferredCleanup(Message, frozen=True):
    """The cleanup actor's timer: run the post-run cleanup that runs ended within the last interval share."""


class LeaseReleased(Message, frozen=True):
    """The reservation of a lease was returned to the ledger."""

    request_id: Ident
    lease_id: Ident
    devices: tuple[int, ...]
    reservation_mb: MB


class RequestEnded(Message, frozen=True):
    """The one terminal state of a request."""

    request_id: Ident
    state: TerminalState
    reason: str = ""
