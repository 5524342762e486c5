"""Admission's inputs and its statistics: submit, release, cancel, tick, device loss.

The admission core answers these with the lifecycle events of :mod:`vramgate.messages.lifecycle`
(``RequestQueued``, ``RequestAdmitted``, ``RequestRejected``, ``LeaseReleased``, ``RequestEnded``).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from vramgate.messages._base import MB, Ident, Message, Seconds
from vramgate.messages.lifecycle import Outcome
from vramgate.messages.plans import Plan
from vramgate.messages.residency import HostLedgerStatistics, ResidentModel

#: The key of a plan that any device may use.
ANY_DEVICE = "*"


class SubmitRequest(Message, frozen=True):
    """Ask for a lease for one request.

    ``plans`` maps where a plan may run to the plan made for it: a device index written as a string (``"0"``), a
    GPU name as the devices are configured (``"H100-80GB"``; catalog aliases match too) or ``"*"`` for any device.
    A device uses its index's plan, else its GPU's, else ``"*"``'s. With ``fallback``, a device that has none of
    these may run a plan made for another GPU (re-optimized for it when the core has a re-optimizer, else only
    when it fits as it is). ``arrival`` defaults to the time the core handles the message; ``max_wait_s`` bounds
    the time in the queue (``None``: no bound). ``owner`` is the process that runs it (``""``: the process that
    embeds the gate): its resident models of the plan's model and dtype count for it (see
    :mod:`vramgate.messages.residency`).
    """

    request_id: Ident
    plans: dict[str, Plan]
    priority: Annotated[int, msgspec.Meta(ge=-1000, le=1000)] = 0
    arrival: Seconds | None = None
    max_wait_s: Annotated[float, msgspec.Meta(gt=0.0)] | None = None
    fallback: bool = True
    owner: Ident = ""


class ReleaseLease(Message, frozen=True):
    """Return a lease's reservation: the run ended with ``outcome`` (``ok`` completes the request)."""

    lease_id: Ident
    outcome: Outcome = "ok"
    reason: str = ""


class CancelRequest(Message, frozen=True):
    """Cancel a request. A queued request leaves the queue; a running one ends when its lease is released."""

    request_id: Ident
    reason: str = ""


class AdmissionTick(Message, frozen=True):
    """Time passes: expire waits, notice stale samples, re-examine the queue."""


class DeviceLost(Message, frozen=True):
    """A device is gone: nothing more is admitted on it until a sample reports it present again."""

    index: int
    reason: str = ""


class DeviceLedgerStatistics(Message, frozen=True):
    """One device's ledger: ``free_mb = capacity - margin - others - reserved`` (never negative).

    ``others_mb`` is the smoothed use by everything but this system's leases; ``others_raw_mb`` the latest
    measured figure; ``sample_age_s`` is ``None`` before the first sample. ``blocked`` says why nothing is
    admitted on the device now (empty when it admits). ``permanent_mb`` is others' use that never came free
    (a CUDA context, a neighbour that stays), and ``attainable_mb = capacity - margin - permanent`` the most
    reservations can ever have on the device: no request is queued for more. ``resident`` lists the models
    loaded there (their ``resident_mb`` is in neither ``reserved_mb`` nor ``others_mb``, and ``free_mb`` leaves
    it out); ``unloading_mb`` is what unloaded models held until a sample shows it gone.
    """

    index: int
    gpu: str
    capacity_mb: MB
    margin_mb: MB
    reserved_mb: MB
    others_mb: MB
    others_raw_mb: MB
    free_mb: MB
    leases: int
    sample_age_s: float | None
    lost: bool
    blocked: str = ""
    permanent_mb: MB = 0
    attainable_mb: MB | None = None
    resident_mb: MB = 0
    unloading_mb: MB = 0
    resident: tuple[ResidentModel, ...] = ()


class AdmissionStatistics(Message, frozen=True):
    """A snapshot of the admission core: its ledgers, its queue and its counters since it started.

    ``stalled_since``: since when requests have waited with no lease running on any device the first of them
    could use (the queue is not moving); ``None`` when it is empty or moving. ``host`` is the host RAM ledger;
    ``evictions`` counts the evictions ordered.
    """

    devices: tuple[DeviceLedgerStatistics, ...]
    queue_length: int
    queue_limit: int
    running: int
    submitted: int
    admitted: int
    backfilled: int
    rejected: int
    timed_out: int
    cancelled: int
    completed: int
    failed: int
    mean_wait_s: float
    max_wait_s: float
    stalled_since: float | None = None
    host: HostLedgerStatistics | None = None
    evictions: int = 0


class LeaseSnapshot(Message, frozen=True):
    """A live lease, as a restarted admission core takes it back: what ``RequestAdmitted`` said, and when.

    ``admitted_at`` is the time it was granted (its expected end is that plus the plan's estimated time);
    ``cancel_requested`` marks a running request whose client has cancelled it; ``ram_mb`` is its host RAM
    reservation and ``owner`` the process that runs it.
    """

    lease_id: Ident
    request_id: Ident
    devices: tuple[int, ...]
    reservation_mb: MB
    plan: Plan
    admitted_at: Seconds
    cancel_requested: bool = False
    ram_mb: MB = 0
    owner: Ident = ""


class AdmissionSnapshot(Message, frozen=True):
    """What an admission core must know to go on after a restart: its live leases and its waiting requests.

    ``waiting`` holds the waiting requests' submits in queue order, each with its ``arrival`` set, so that their
    order, aging and deadlines are kept. ``lease_counter`` is the number of the last lease granted (restored
    leases named ``lease-<n>`` raise it too), so that no lease id is used twice. ``resident`` holds the resident
    models (their eviction orders too). Ledger figures are not kept: the next ``ResourceSample`` gives them again.
    """

    leases: tuple[LeaseSnapshot, ...] = ()
    waiting: tuple[SubmitRequest, ...] = ()
    lease_counter: Annotated[int, msgspec.Meta(ge=0)] = 0
    taken_at: Seconds | None = None
    resident: tuple[ResidentModel, ...] = ()
