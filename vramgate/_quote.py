"""Quotes and conditional submits: what a router needs from a gate to route requests across nodes.

:func:`expected_start` is the decision, sans-io: from admission's snapshot (its leases and its queue, in order)
and its ledgers, when a new request would be admitted, replaying the leases' expected ends and admitting the
queue first come, first served. :func:`quote` and :func:`submit_or_decline` are the gate's edges
(:meth:`vramgate.gate.Gate.quote`, :meth:`vramgate.gate.Gate.submit_or_decline`). A quote reserves nothing.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from vramgate.errors import CapacityError, QueueFull
from vramgate.messages import GenerationRequest, Plan, RequestRejected
from vramgate.messages.admission import ANY_DEVICE, AdmissionSnapshot, DeviceLedgerStatistics
from vramgate.messages.quote import Quote, SubmitDeclined

if TYPE_CHECKING:
    from vramgate._facade import ReadGate
    from vramgate._ticket import Ticket


class Declined(CapacityError):
    """The gate declined a conditional submit; nothing was reserved or kept (``declined`` says why)."""

    def __init__(self, declined: SubmitDeclined) -> None:
        self.declined = declined
        self.code = declined.code
        self.retry_after_s = declined.retry_after_s
        super().__init__(f"request {declined.request_id} declined ({declined.code}): {declined.reason}")


class Start(NamedTuple):
    """When a request is expected to be admitted (absolute time), its plan, and how many runs of that plan the
    devices hold at once when this system's leases have ended."""

    at: float
    plan: Plan
    slots: int


def _plan_for(plans: Mapping[str, Plan], ledger: DeviceLedgerStatistics) -> Plan | None:
    return plans.get(str(ledger.index)) or plans.get(ledger.gpu) or plans.get(ANY_DEVICE)


def expected_start(
    snapshot: AdmissionSnapshot,
    ledgers: Sequence[DeviceLedgerStatistics],
    plans: Mapping[str, Plan],
    now: float,
    *,
    time_scale: float = 1.0,
) -> Start | None:
    """When a request with ``plans`` (keyed as in ``SubmitRequest``) would be admitted, or ``None`` if never.

    Leases end at their admission plus their plan's estimated seconds (times ``time_scale``; an overdue lease
    ends now); waiting requests are admitted in queue order before the new one, each at the first end that
    leaves room (no backfilling, so the figure errs late). Lost devices take nothing.
    """
    usable = [ledger for ledger in ledgers if not ledger.lost]
    free = {ledger.index: ledger.free_mb for ledger in usable}
    headroom = {ledger.index: max(0, ledger.capacity_mb - ledger.margin_mb - ledger.others_mb) for ledger in usable}
    ends: list[tuple[float, int, tuple[int, ...], int]] = []
    for seq, lease in enumerate(snapshot.leases):
        end = max(now, lease.admitted_at + lease.plan.requirement.estimated_time_seconds * time_scale)
        ends.append((end, seq, lease.devices, lease.reservation_mb))
    heapq.heapify(ends)
    seq = len(ends)

    def place(item: Mapping[str, Plan]) -> tuple[Plan, tuple[int, ...]] | None:
        best: tuple[float, Plan, tuple[int, ...]] | None = None
        for ledger in usable:
            plan = _plan_for(item, ledger)
            if plan is None or free[ledger.index] < plan.requirement.vram_mb:
                continue
            need, count = plan.requirement.vram_mb, plan.params.options.gpus
            same = [d.index for d in usable if _plan_for(item, d) is plan and free[d.index] >= need]
            if len(same) < count:
                continue
            devices = tuple(sorted(same, key=lambda i: free[i])[:count])
            run = plan.requirement.estimated_time_seconds
            if best is None or run < best[0]:
                best = (run, plan, devices)
        return None if best is None else (best[1], best[2])

    def ever_fits(item: Mapping[str, Plan]) -> bool:
        for ledger in usable:
            plan = _plan_for(item, ledger)
            if plan is not None:
                fitting = [
                    d for d in usable if _plan_for(item, d) is plan and headroom[d.index] >= plan.requirement.vram_mb
                ]
                if len(fitting) >= plan.params.options.gpus:
                    return True
        return False

    t = now
    queue = [waiting.plans for waiting in snapshot.waiting]
    for position, item in enumerate([*queue, plans]):
        last = position == len(queue)
        if not ever_fits(item):
            if last:
                return None
            continue  # admission rejects it; it holds nothing
        while True:
            while ends and ends[0][0] <= t:
                _, _, devices, mb = heapq.heappop(ends)
                for index in devices:
                    if index in free:
                        free[index] = min(headroom[index], free[index] + mb)
            found = place(item)
            if found is not None:
                break
            if not ends:  # nothing left to end: others' use holds the room (admission waits for them)
                return None
            t = ends[0][0]
        plan, devices = found
        if last:
            need = max(1, plan.requirement.vram_mb)
            per_device = sum(headroom[d.index] // need for d in usable if _plan_for(item, d) is plan)
            return Start(t, plan, per_device // max(1, plan.params.options.gpus))
        for index in devices:
            free[index] -= plan.requirement.vram_mb
        seq += 1
        end = t + plan.requirement.estimated_time_seconds * time_scale
        heapq.heappush(ends, (end, seq, devices, plan.requirement.vram_mb))
    raise AssertionError("unreachable")


async def _plans(gate: ReadGate, request: GenerationRequest) -> tuple[dict[str, Plan], str]:
    """The plans the request core would submit for ``request`` on each kind of GPU (none: with the reason)."""
    answer = await gate.plans(request)
    if isinstance(answer, RequestRejected):
        return {}, answer.reason
    rid = request.request_id
    return {gpu: msgspec.structs.replace(plan, request_id=rid) for gpu, plan in answer.plans.items()}, ""


async def quote(gate: ReadGate, request: GenerationRequest, *, time_scale: float = 1.0, node: str = "") -> Quote:
    """The gate's quote for ``request`` now: its plan, memory, expected start and finish; nothing is reserved."""
    rid = request.request_id
    stats = gate.statistics()
    common = {
        "request_id": rid,
        "queue_length": stats.queue_length,
        "queue_limit": stats.queue_limit,
        "retry_after_s": gate.retry_after_s() * time_scale,
        "node": node,
    }
    plans, reason = await _plans(gate, request)
    core = gate.admission_core
    if not plans or core is None:
        return Quote(fits=False, reason=reason or "the gate manages no usable GPU", **common)  # type: ignore[arg-type]
    now = gate.clock.now()
    ledgers = core.statistics().devices
    start = expected_start(core.snapshot(now), ledgers, plans, now, time_scale=time_scale)
    if start is None:
        need = min(plan.requirement.vram_mb for plan in plans.values())
        most = max((ledger.capacity_mb - ledger.margin_mb - ledger.others_mb for ledger in ledgers), default=0)
        return Quote(
            fits=False,
            reason=f"needs {need} MiB per GPU; the most a device here can free is {max(0, most)} MiB",
            **common,  # type: ignore[arg-type]
        )
    plan = start.plan
    wait = max(0.0, start.at - now)
    run = plan.requirement.estimated_time_seconds * time_scale
    return Quote(
        fits=True,
        plan=plan,
        vram_mb=plan.requirement.vram_mb,
        gpus=plan.params.options.gpus,
        admit_now=wait == 0.0 and core.queue_length == 0,
        start_s=wait,
        run_s=run,
        finish_s=wait + run,
        slots=start.slots,
        **common,  # type: ignore[arg-type]
    )


async def submit_or_decline(
    gate: ReadGate,
    submit: Callable[[GenerationRequest], Ticket],
    request: GenerationRequest,
    *,
    within_s: float | None = 0.0,
    time_scale: float = 1.0,
    node: str = "",
) -> Ticket:
    """Submit ``request`` with ``submit`` (the gate's ``submit_nowait``) only if it is expected to be admitted
    within ``within_s`` seconds (0: at once; ``None``: whenever, as long as it fits here and the queue has room);
    otherwise raise :class:`Declined`.

    Returns once the request is admitted or queued (so that the next quote here counts it). With ``within_s=0``
    a request that would wait leaves the queue before this returns, and nothing is kept.
    """
    rid = request.request_id
    answer = await quote(gate, request, time_scale=time_scale, node=node)

    def declined(code: str, reason: str) -> Declined:
        retry = answer.retry_after_s if code == "queue_full" else answer.start_s
        return Declined(SubmitDeclined(request_id=rid, code=code, reason=reason, retry_after_s=retry, quote=answer))

    if not answer.fits:
        raise declined("does_not_fit", answer.reason)
    if answer.queue_length >= answer.queue_limit:
        raise declined("queue_full", f"the admission queue is full ({answer.queue_length} waiting)")
    if within_s is not None and answer.start_s > within_s:
        raise declined("too_late", f"expected to start in {answer.start_s:.1f} s, later than {within_s:.1f} s")
    try:
        ticket = submit(request)
    except QueueFull as error:
        raise declined("queue_full", str(error)) from None
    state = await ticket.wait_placed()
    if state == "queued" and within_s is not None and within_s <= 0:
        await ticket.cancel("declined: it would have waited")
        while ticket.state not in ("admitted", "ended"):
            await ticket.wait_changed()
    if ticket.state != "ended":
        return ticket
    ended = ticket.ended
    assert ended is not None
    rejected = ticket.rejected
    code = "not_now" if ended.state == "cancelled" else (rejected.code if rejected is not None else ended.state)
    raise declined(code, ended.reason)
