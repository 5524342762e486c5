"""The admission core: per-device ledgers, placement, a bounded priority queue with aging and backfilling.

Sans-io: :meth:`AdmissionCore.handle` takes one message and the time, and returns the lifecycle events it
caused. It reads no clock and does no I/O, and its lease ids come from a counter, so a recorded message log
replays to the same decisions.

Ordering. A waiting request's effective priority is ``priority + aging_per_s * (now - arrival)``. Since every waiting
request ages at the same rate, the order among them never changes; it is the order of the fixed key
``aging_per_s * arrival - priority`` (then arrival, then submission order), so the queue is kept sorted once, on
entry. Aging bounds starvation: after waiting ``W`` seconds a request outranks every newcomer of priority below
``priority + aging_per_s * W``.

Backfilling (EASY, as HPC schedulers do). The first request in order, the head, is admitted as soon as it fits.
While it does not, the core computes its shadow: the earliest time it would fit as running leases end at their
expected ends, and the memory its placement leaves over then. A later request may start first only if it fits
now and either is expected to end before that time (by the top of its time interval, when its plan has one) or
takes, on the head's devices, no more than what is left over. A request that cannot start within its bound (not
even once every running lease has ended, because others' use blocks it, or not before its ``max_wait_s``)
protects nothing: the first waiting request that can start takes the head's place for backfilling, so an
un-startable head never holds back what fits behind it.
Only the first ``backfill_depth`` waiting requests are examined per pass, so each decision is bounded.

Placement (``placement``). ``earliest_finish``, the default: a request goes where it is expected to finish first
(:func:`~vramgate.policy._placement.earliest_finish`): on each device its own plan's time (a faster GPU kind has
a shorter plan), started now where it fits now, or when the running leases there are expected to have returned
enough memory; so it may wait for a faster device that comes free soon rather than start on a slow one, but a
device that runs nothing never stays idle while something it could take waits: it takes the head, or a request
behind it that backfilling lets start now, whichever is slowed least there against its best time anywhere (see
:meth:`AdmissionCore._place_head`). Backfilled requests start only where they fit now (and wait when waiting
would finish them sooner). ``best_fit`` starts a request now on the devices left with the least
slack, ``spread`` on those left with the most; both wait only while nothing fits.

Liveness. Nothing is queued for memory that never comes free: a plan above what a device can ever give
(:attr:`~vramgate.policy.ledger.DeviceLedger.attainable_mb`, less the memory others never gave back) does not
count for that device, and a request with no such plan anywhere is rejected (also when that memory grows
while it waits). :meth:`AdmissionCore.standing` says what a waiting request waits for and when it is expected
to start; :meth:`AdmissionCore.statistics` gives ``stalled_since``: since when requests have waited while no
lease runs on any device the first of them could use (nothing that runs will make room: the queue is not
moving).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import islice

import msgspec

from vramgate.errors import ConfigError, InvalidParameter
from vramgate.messages._base import Message
from vramgate.messages.admission import (
    AdmissionSnapshot,
    AdmissionStatistics,
    AdmissionTick,
    CancelRequest,
    DeviceLedgerStatistics,
    DeviceLost,
    LeaseSnapshot,
    ReleaseLease,
    SubmitRequest,
)
from vramgate.messages.lifecycle import (
    LeaseReleased,
    RejectCode,
    RequestAdmitted,
    RequestEnded,
    RequestQueued,
    RequestRejected,
    TerminalState,
)
from vramgate.messages.plans import Plan
from vramgate.messages.residency import LeaseShrunk, ModelLoaded, ModelUnloaded
from vramgate.messages.resources import ResourceSample
from vramgate.policy._ends import End, Ends
from vramgate.policy._placement import (
    UNUSABLE,
    Choice,
    Group,
    Placement,
    Shadow,
    earliest_finish,
    place_groups,
    relative_cost,
    releases_of,
    shadow,
)
from vramgate.policy._plans import PlanResolver, Reoptimizer
from vramgate.policy._queue import DeadlineHeap, Key, SortedKeys
from vramgate.policy._resident import Residency, ram_weights_mb, weights_mb
from vramgate.policy._standing import Standing, waiting_reason
from vramgate.policy.admission_config import AdmissionConfig as AdmissionConfig
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG, GpuCatalog
from vramgate.policy.host_ledger import HostLedger
from vramgate.policy.ledger import DeviceConfig, DeviceLedger
from vramgate.policy.timing import expected_run_s, time_high_s

#: How many answers of placement the core keeps while the leases stay the same.
_MEMO_SIZE = 4


class _Waiting:
    """A queued request."""

    __slots__ = (
        "arrival",
        "deadline",
        "expected_s",
        "groups",
        "key",
        "message",
        "min_mb",
        "owner",
        "plans",
        "priority",
        "ram_max",
        "ram_mb",
        "request_id",
        "run_s",
        "seq",
    )

    def __init__(
        self,
        request_id: str,
        priority: int,
        arrival: float,
        deadline: float,
        order: tuple[float, float, int],
        plans: tuple[Plan | None, ...],
        groups: tuple[Group, ...],
        message: SubmitRequest,
        run_seconds: Callable[[float], float],
    ) -> None:
        #: The submit it came with (for snapshots).
        self.message = message
        self.request_id = request_id
        self.priority = priority
        self.arrival = arrival
        self.deadline = deadline
        self.seq = order[2]
        self.plans = plans
        self.owner = message.owner
        first = plans[0] if plans else None
        # one plan for every device is the common case: its figures are worked out once
        given = (
            [first.requirement]
            if first is not None and all(p is first for p in plans)
            else [p.requirement for p in plans if p is not None]
        )
        #: The longest any of its plans may run (the top of its time interval when it has one): backfilling lets
        #: it pass the protected request only if it ends before.
        self.expected_s = max((time_high_s(r) for r in given), default=0.0)
        #: How long that is expected to last here (the core's ``run_seconds`` of it).
        self.run_s = run_seconds(self.expected_s)
        #: The least host RAM any of its plans needs.
        self.ram_mb = min((r.ram_mb for r in given), default=0)
        self.ram_max = max((r.ram_mb for r in given), default=0)
        self.groups = groups
        self.min_mb = 0
        self.regroup(groups)
        self.key: Key = (*order, self.min_mb)

    def regroup(self, groups: tuple[Group, ...]) -> None:
        """Take the groups anew (resident weights changed what it needs where)."""
        self.groups = groups
        #: The least any of its plans needs per GPU.
        self.min_mb = min((g.need_mb for g in groups), default=0)


class _Lease:
    """A granted lease."""

    __slots__ = (
        "admitted_at",
        "cancel_requested",
        "devices",
        "end",
        "expected_end",
        "late_end",
        "lease_id",
        "owner",
        "placement",
        "ram_mb",
        "request_id",
        "seq",
    )

    def __init__(
        self,
        lease_id: str,
        request_id: str,
        placement: Placement,
        admitted_at: float,
        seq: int,
        devices: tuple[int, ...],
        expected_s: float,
        late_s: float,
        owner: str = "",
        ram_mb: int = 0,
    ) -> None:
        self.owner = owner
        self.ram_mb = ram_mb
        self.lease_id = lease_id
        self.request_id = request_id
        self.placement = placement
        #: The device indices of ``placement.positions``.
        self.devices = devices
        self.admitted_at = admitted_at
        self.expected_end = admitted_at + expected_s
        #: When it ends at the latest expected (the top of its time interval): what ``retry_after`` counts on.
        self.late_end = admitted_at + late_s
        self.cancel_requested = False
        self.seq = seq
        #: Its entry in the core's :class:`~vramgate.policy._ends.Ends`.
        self.end: End = (self.expected_end, placement.positions, placement.need_mb)


class AdmissionCore:
    """Admits plans against per-device VRAM ledgers; see the module docstring for the policy."""

    def __init__(
        self,
        devices: Sequence[DeviceConfig],
        config: AdmissionConfig | None = None,
        *,
        reoptimize: Reoptimizer | None = None,
        catalog: GpuCatalog = DEFAULT_GPU_CATALOG,
        time_scale: float = 1.0,
        min_run_s: float = 0.0,
        host_ledger: bool = True,
    ) -> None:
        if not (time_scale > 0 and math.isfinite(time_scale)):
            raise ConfigError(f"time_scale={time_scale!r} must be a positive finite number")
        if not (min_run_s >= 0 and math.isfinite(min_run_s)):
            raise ConfigError(f"min_run_s={min_run_s!r} must be a finite number >= 0")
        self.time_scale = time_scale
        self.min_run_s = min_run_s
        if not devices:
            raise ConfigError("admission needs at least one device")
        indices = [d.index for d in devices]
        if len(set(indices)) != len(indices):
            raise ConfigError(f"device indices must be distinct, got {indices}")
        self.config = config if config is not None else AdmissionConfig()
        self._devices = tuple(sorted(devices, key=lambda d: d.index))
        self._position = {d.index: pos for pos, d in enumerate(self._devices)}
        self._ledgers = [
            DeviceLedger(
                d,
                stale_after_s=self.config.stale_after_s,
                others_decay_s=self.config.others_decay_s,
                permanent_after_s=self.config.permanent_after_s,
            )
            for d in self._devices
        ]
        self._plans = PlanResolver(self._devices, self._ledgers, catalog, reoptimize)
        self._host = HostLedger(
            self.config.ram_budget_mb(),
            self.config.ram_margin_mb(),
            others_decay_s=self.config.others_decay_s,
            permanent_after_s=self.config.permanent_after_s,
            bounds=host_ledger,
        )
        self._resident = Residency(self._ledgers, self._host, self._position)
        self._spread = self.config.placement == "spread"
        self._earliest = self.config.placement == "earliest_finish"
        self._queue: SortedKeys = SortedKeys()
        self._waiting: dict[str, _Waiting] = {}
        self._by_seq: dict[int, _Waiting] = {}
        self._deadlines = DeadlineHeap()
        self._leases: dict[str, _Lease] = {}
        self._lease_of_request: dict[str, str] = {}
        #: The running leases' (expected end, positions, MiB per position), in order, in all and per position.
        self._ends = Ends(len(self._ledgers))
        self._seq = 0
        self._lease_counter = 0
        self._now = -math.inf
        #: When the latest scheduling pass ran (a sample that changes nothing it saw needs no new pass).
        self._pass_at = -math.inf
        self._counts: dict[str, int] = dict.fromkeys(
            ("submitted", "admitted", "backfilled", "rejected", "timed_out", "cancelled", "completed", "failed"), 0
        )
        self._wait_total = 0.0
        self._wait_max = 0.0
        #: Since when requests have waited with no lease running on a device the first of them could use.
        self._stalled_since: float | None = None
        #: :meth:`_earliest_finish`'s latest answers (groups, avail, later, now, answer), for ``_memo_version``.
        self._memo: list[tuple[Sequence[Group], list[int], list[int], float, Choice | None]] = []
        self._memo_version = -1
        #: What :meth:`_free` and :meth:`_later` saw at a time, until the ledgers change (:meth:`_changed`).
        self._seen_free: tuple[float, list[int]] | None = None
        self._seen_later: tuple[float, list[int], list[bool]] | None = None
        #: :meth:`offered`: the devices' statistics as of the latest sample or loss.
        self._offered: tuple[DeviceLedgerStatistics, ...] | None = None

    # ================================================================== queries

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._leases)

    def room(self) -> int:
        """How many more requests the queue takes now."""
        return self.config.queue_limit - len(self._queue)

    def queue_position(self, request_id: str) -> int | None:
        """The 1-based position of a waiting request, or ``None`` when it is not waiting."""
        waiting = self._waiting.get(request_id)
        return None if waiting is None else self._queue.rank(waiting.key) + 1

    def attainable_mb(self) -> dict[str, int]:
        """For each kind of GPU, the most one of its devices can ever give a reservation: capacity less the margin
        and the memory others never gave back (lost devices too: they may come back). A plan within it is never
        queued for memory that cannot come free."""
        best: dict[str, int] = {}
        for ledger in self._ledgers:
            gpu = ledger.config.gpu
            best[gpu] = max(best.get(gpu, 0), ledger.attainable_mb)
        return best

    def lease_of(self, request_id: str) -> str | None:
        """The lease id of a running request, or ``None``."""
        return self._lease_of_request.get(request_id)

    def run_seconds(self, estimated_s: float) -> float:
        """How long a run whose plan estimates ``estimated_s`` seconds is expected to last: times ``time_scale``,
        at least ``min_run_s`` (``[run] time_scale`` and ``min_seconds``; a server whose runs are compressed or
        simulated says so). Expected ends, the backfill and ``retry_after`` use it."""
        return expected_run_s(estimated_s, self.time_scale, self.min_run_s)

    def retry_after(self, now: float) -> float:
        """Seconds until the queue is expected to have room: 0 when it has room now, else the sooner of the
        head's expected start (a running lease ends and the head is admitted) and the next wait to expire. Running
        leases count as ending at the top of their time interval, so that a client told to come back then finds
        room more often than not."""
        if self.room() > 0:
            return 0.0
        now = max(now, self._now)
        soonest = math.inf
        if self._queue:
            head = self._by_seq[self._queue.first()[2]]
            late = sorted(
                (max(now, lease.late_end), lease.placement.positions, lease.placement.need_mb)
                for lease in self._leases.values()
            )
            soonest = self._shadow(head, self._free(now), now, late).time - now
        if self._deadlines:
            self._drop_dead_deadlines()
            entry = self._deadlines.peek()
            if entry is not None:
                soonest = min(soonest, entry[0] - now)
        if not math.isfinite(soonest):
            ends = [lease.late_end - now for lease in self._leases.values()]
            soonest = min(ends) if ends else self.config.retry_after_default_s
        return max(self.config.min_retry_after_s, soonest)

    def statistics(self) -> AdmissionStatistics:
        """A snapshot, with sample ages as of the latest message handled."""
        now = self._now if math.isfinite(self._now) else 0.0
        devices = tuple(
            DeviceLedgerStatistics(
                index=ledger.index,
                gpu=ledger.config.gpu,
                capacity_mb=ledger.capacity_mb,
                margin_mb=ledger.margin_mb,
                reserved_mb=ledger.reserved_mb,
                others_mb=ledger.others_mb,
                others_raw_mb=ledger.others_raw_mb,
                free_mb=ledger.free_mb(now),
                leases=ledger.leases,
                sample_age_s=ledger.sample_age_s(now),
                lost=ledger.lost,
                blocked=ledger.blocked(now),
                permanent_mb=ledger.permanent_mb,
                attainable_mb=ledger.attainable_mb,
                resident_mb=ledger.resident_mb,
                unloading_mb=ledger.unloading_mb,
                resident=self._resident.on(pos),
            )
            for pos, ledger in enumerate(self._ledgers)
        )
        admitted = self._counts["admitted"]
        return AdmissionStatistics(
            devices=devices,
            queue_length=len(self._queue),
            queue_limit=self.config.queue_limit,
            running=len(self._leases),
            mean_wait_s=self._wait_total / admitted if admitted else 0.0,
            max_wait_s=self._wait_max,
            stalled_since=self._stalled_since,
            host=self._host.statistics(now),
            evictions=self._resident.evictions,
            **self._counts,
        )

    def offered(self) -> tuple[DeviceLedgerStatistics, ...]:
        """The devices' statistics (as :meth:`statistics` gives them) taken anew only after a sample or a lost device,
        so cheap enough to ask for with every message: what they offer a plan (capacity, margin, others' use and
        what never came free, lost) is current; their leases' figures and sample ages are as of then."""
        offered = self._offered
        if offered is None:
            offered = self._offered = self.statistics().devices
        return offered

    def check_invariants(self) -> None:
        """Raise :class:`AssertionError` when the bookkeeping disagrees with itself (for tests)."""
        per_device = [0] * len(self._ledgers)
        for lease in self._leases.values():
            for pos in lease.placement.positions:
                per_device[pos] += lease.placement.need_mb
            assert self._lease_of_request[lease.request_id] == lease.lease_id
        for ledger, total in zip(self._ledgers, per_device, strict=True):
            assert ledger.reserved_mb == total, (ledger.index, ledger.reserved_mb, total)
            holders = sum(1 for lease in self._leases.values() if ledger.index in lease.devices)
            assert all(lease.devices == self._lease_devices(lease.placement) for lease in self._leases.values())
            assert ledger.leases == holders, (ledger.index, ledger.leases, holders)
        assert len(self._lease_of_request) == len(self._leases)
        # the ends kept as leases come and go are those worked out from scratch
        ends = sorted(
            (lease.expected_end, lease.placement.positions, lease.placement.need_mb) for lease in self._leases.values()
        )
        assert self._ends.all == ends, (self._ends.all, ends)
        assert self._ends.per == releases_of(ends, len(self._ledgers)), self._ends.per
        # what the core saw of the ledgers is what they say
        if self._seen_free is not None:
            at, free = self._seen_free
            assert free == [ledger.free_mb(at) for ledger in self._ledgers], (at, free)
        if self._seen_later is not None:
            at, later, usable = self._seen_later
            assert later == [ledger.headroom_mb() if ledger.admits(at) else UNUSABLE for ledger in self._ledgers]
            assert usable == [ledger.admits(at) for ledger in self._ledgers]
        assert len(self._queue) == len(self._waiting) == len(self._by_seq)
        for waiting in self._waiting.values():  # a key carries what its request needs
            assert waiting.key[2:] == (waiting.seq, waiting.min_mb), (waiting.key, waiting.seq, waiting.min_mb)
            assert self._by_seq[waiting.seq] is waiting
        assert not (self._waiting.keys() & self._lease_of_request.keys())
        assert len(self._queue) <= self.config.queue_limit
        assert self._host.reserved_mb == sum(lease.ram_mb for lease in self._leases.values())
        assert self._host.leases == sum(1 for lease in self._leases.values() if lease.ram_mb)
        for entry in self._resident.entries():
            assert entry.users <= self._leases.keys(), (entry.ledger_key, entry.users)
            assert self._ledgers[entry.pos].resident_of(entry.ledger_key) == entry.loaded.vram_mb

    # ================================================================== snapshot and restore

    def snapshot(self, now: float | None = None) -> AdmissionSnapshot:
        """The live leases and the waiting requests (in queue order), from which :meth:`restore` rebuilds a core."""
        leases = tuple(
            LeaseSnapshot(
                lease_id=lease.lease_id,
                request_id=lease.request_id,
                devices=lease.devices,
                reservation_mb=lease.placement.need_mb,
                plan=lease.placement.plan,
                admitted_at=max(0.0, lease.admitted_at),
                cancel_requested=lease.cancel_requested,
                ram_mb=lease.ram_mb,
                owner=lease.owner,
            )
            for lease in sorted(self._leases.values(), key=lambda lease: lease.seq)
        )
        waiting = tuple(self._submit_of(self._by_seq[key[2]]) for key in self._queue)
        taken_at = now if now is not None else (self._now if math.isfinite(self._now) else None)
        return AdmissionSnapshot(
            leases=leases,
            waiting=waiting,
            lease_counter=self._lease_counter,
            taken_at=None if taken_at is None else max(0.0, taken_at),
            resident=self._resident.snapshot(),
        )

    def restore(self, snapshot: AdmissionSnapshot, now: float) -> list[Message]:
        """Take back the leases and waiting requests of ``snapshot`` (a crashed core's, or one its shell kept).

        The core must be new (no lease, nothing waiting). Leases keep their ids and devices, and their memory is
        reserved again without a fit check (it is in use already); waiting requests keep their order, arrival and
        deadline. Nothing is admitted until the devices admit again (with ``stale_after_s``, a fresh sample each).
        Returns the events this caused: rejections of waiting requests no device can take any more, admissions
        when the devices admit already, and the ends of requests whose wait expired meanwhile.
        """
        if self._leases or self._queue:
            raise InvalidParameter("snapshot", "restore", "the core must be new: it already holds leases or requests")
        now = max(now, self._now)
        self._now = now
        self._changed()
        out: list[Message] = []
        seen: set[str] = set()
        self._resident.restore(snapshot.resident)
        for item in snapshot.leases:
            self._restore_lease(item, seen)
        self._lease_counter = max(self._lease_counter, snapshot.lease_counter)
        self._changed()
        for message in snapshot.waiting:
            if message.request_id in seen:
                raise InvalidParameter("request_id", message.request_id, "appears twice in the snapshot")
            seen.add(message.request_id)
            self._restore_waiting(message, now, out)
        self._expire(now, out)
        if self._queue:
            self._schedule(now, out)
        self._note_stall(now)
        return out

    def _restore_lease(self, item: LeaseSnapshot, seen: set[str]) -> None:
        self._changed()
        if item.request_id in seen or item.lease_id in self._leases:
            raise InvalidParameter("lease_id", item.lease_id, "the lease or its request appears twice in the snapshot")
        seen.add(item.request_id)
        positions: list[int] = []
        for index in item.devices:
            pos = self._position.get(index)
            if pos is None:
                raise InvalidParameter("devices", index, "no such device", valid=str(sorted(self._position)))
            positions.append(pos)
        if not positions or len(set(positions)) != len(positions):
            raise InvalidParameter("devices", item.devices, "a lease needs one or more distinct devices")
        placement = Placement(tuple(sorted(positions)), item.plan, item.reservation_mb)
        if item.reservation_mb < item.plan.requirement.vram_mb and len(positions) == 1:
            _, extra = self._resident.discount(item.plan, item.owner, positions[0])
            placement = placement._replace(extra_s=extra)
        number = item.lease_id.removeprefix("lease-")
        seq = int(number) if number.isdigit() else 0
        self._lease_counter = max(self._lease_counter, seq)
        lease = _Lease(
            item.lease_id,
            item.request_id,
            placement,
            item.admitted_at,
            seq,
            self._lease_devices(placement),
            self.run_seconds(placement.seconds),
            self.run_seconds(time_high_s(item.plan.requirement) + placement.extra_s),
            item.owner,
            item.ram_mb,
        )
        lease.cancel_requested = item.cancel_requested
        for pos in placement.positions:
            self._ledgers[pos].restore(item.lease_id, item.reservation_mb, item.admitted_at)
        if item.ram_mb:
            self._host.restore(item.lease_id, item.ram_mb, item.admitted_at)
        self._resident.use(
            item.lease_id, item.plan, item.owner, placement.positions, item.reservation_mb, item.admitted_at
        )
        self._leases[item.lease_id] = lease
        self._lease_of_request[item.request_id] = item.lease_id
        self._ends.add(lease.end)

    def _placeable_plans(self, message: SubmitRequest, out: list[Message]) -> tuple[Plan | None, ...] | None:
        """The plan each device would run, or ``None`` after rejecting a request that no device can ever take."""
        if not message.plans:
            self._reject(out, message.request_id, "bad_request", "the request has no plan")
            return None
        plans = self._plans.resolve(message)
        problem = self._plans.never_fits(plans, message) or self._host_never_fits(
            message.request_id, plans, message.owner
        )
        if problem is not None:
            out.append(problem)
            self._counts["rejected"] += 1
            self._end(out, message.request_id, "rejected", problem.reason)
            return None
        return plans

    def _host_never_fits(self, request_id: str, plans: Sequence[Plan | None], owner: str) -> RequestRejected | None:
        """The rejection of a request whose every plan needs more host RAM than the host can ever give."""
        attainable = self._host.attainable_or_none()
        given = [p for p in plans if p is not None]
        if attainable is None or not given or given[0].requirement.ram_mb <= attainable:
            return None  # (what resident models hold for a plan only lowers what it needs)
        # A resident model's RAM the request would use counts for it; other resident models can be evicted.
        held = self._resident.ram_held
        best = min(given, key=lambda p: p.requirement.ram_mb - held(p, owner))
        need = best.requirement.ram_mb - held(best, owner)
        if need <= attainable:
            return None
        return RequestRejected(
            request_id=request_id,
            code="host_ram_does_not_fit",
            reason=(
                f"the smallest plan needs {best.requirement.ram_mb:,} MiB of host RAM; the host can give at most "
                f"{attainable:,} MiB (capacity {self._host.capacity_mb:,} less the margin {self._host.margin_mb:,}"
                f" and {self._host.permanent_mb:,} MiB that others never gave back)"
            ),
            needed_mb=best.requirement.vram_mb,
            best_plan=best,
            needed_ram_mb=best.requirement.ram_mb,
            available_ram_mb=attainable,
        )

    def _restore_waiting(self, message: SubmitRequest, now: float, out: list[Message]) -> None:
        request_id = message.request_id
        plans = self._placeable_plans(message, out)
        if plans is None:
            return
        if len(self._queue) >= self.config.queue_limit:
            self._reject(out, request_id, "queue_full", "the admission queue was full when it was restored")
            return
        arrival = message.arrival if message.arrival is not None else now
        self._seq += 1
        order = (self.config.aging_per_s * arrival - message.priority, arrival, self._seq)
        deadline = arrival + message.max_wait_s if message.max_wait_s is not None else math.inf
        groups = self._resident.groups(plans, message.owner)
        waiting = _Waiting(
            request_id, message.priority, arrival, deadline, order, plans, groups, message, self.run_seconds
        )
        self._enqueue(waiting)

    def _submit_of(self, waiting: _Waiting) -> SubmitRequest:
        message = waiting.message
        if message.arrival == waiting.arrival:
            return message
        return msgspec.structs.replace(message, arrival=max(0.0, waiting.arrival))

    # ================================================================== input

    def handle(self, message: Message, now: float) -> list[Message]:
        """Handle one message at time ``now``; return the events it caused, in order."""
        now = max(now, self._now)
        self._now = now
        out: list[Message] = []
        dirty = self._expire(now, out)
        if isinstance(message, ResourceSample):
            dirty = self._sample(message, now, out) or dirty
        elif isinstance(message, SubmitRequest):
            self._submit(message, now, out)
        elif isinstance(message, ReleaseLease):
            dirty = self._release(message, now, out) or dirty
        elif isinstance(message, CancelRequest):
            dirty = self._cancel(message, out) or dirty
        elif isinstance(message, DeviceLost):
            self._device_lost(message, now, out)
            dirty = True
        elif isinstance(message, ModelLoaded):
            dirty = self._loaded(message, now, out) or dirty
        elif isinstance(message, ModelUnloaded):
            dirty = self._unloaded(message, now) or dirty
        elif not isinstance(message, AdmissionTick):
            raise InvalidParameter("message", type(message).__name__, "admission does not handle this message")
        if dirty and self._queue:
            self._schedule(now, out)
        if self._queue and self._resident:
            self._evict(now, out)
        self._note_stall(now)
        return out

    # ------------------------------------------------------------------ submit

    def _submit(self, message: SubmitRequest, now: float, out: list[Message]) -> None:
        request_id = message.request_id
        if request_id in self._waiting or request_id in self._lease_of_request:
            raise InvalidParameter("request_id", request_id, "a request with this id is already waiting or running")
        self._counts["submitted"] += 1
        plans = self._placeable_plans(message, out)
        if plans is None:
            return
        arrival = message.arrival if message.arrival is not None else now
        groups = self._resident.groups(plans, message.owner)
        if not self._queue:
            host_free = self._host.free_mb(now)
            startable = groups
            if any(p is not None and p.requirement.ram_mb > host_free for p in plans):
                ram = self._resident.ram_need
                startable = tuple(g for g in groups if ram(g.plan, message.owner, g.positions[:1]) <= host_free)
            found = self._place(startable, self._free(now), now) if startable else None
            if found is not None and self._host_fits(found, message.owner, host_free):
                self._admit(out, request_id, found, now, arrival, backfilled=False, owner=message.owner)
                return
        elif len(self._queue) >= self.config.queue_limit:
            retry = self.retry_after(now)
            out.append(
                RequestRejected(
                    request_id=request_id,
                    code="queue_full",
                    reason=f"the admission queue is full ({len(self._queue)} waiting); retry after {retry:.1f} s",
                    retry_after_s=retry,
                )
            )
            self._counts["rejected"] += 1
            self._end(out, request_id, "rejected", "queue_full")
            return
        self._seq += 1
        order = (self.config.aging_per_s * arrival - message.priority, arrival, self._seq)
        deadline = arrival + message.max_wait_s if message.max_wait_s is not None else math.inf
        waiting = _Waiting(
            request_id, message.priority, arrival, deadline, order, plans, groups, message, self.run_seconds
        )
        key = waiting.key
        self._enqueue(waiting)
        head_key = self._queue.first()
        if head_key == key:
            self._schedule(now, out)
        else:
            self._schedule(now, out, only=waiting)
        if request_id in self._waiting:
            ahead = self._queue.rank(key)
            out.append(
                RequestQueued(
                    request_id=request_id, position=ahead + 1, reason=self._why_waiting(waiting, now, None, ahead)
                )
            )

    def _release(self, message: ReleaseLease, now: float, out: list[Message]) -> bool:
        lease = self._leases.pop(message.lease_id, None)
        if lease is None:
            return False
        self._changed()
        del self._lease_of_request[lease.request_id]
        self._ends.remove(lease.end)
        for pos in lease.placement.positions:
            self._ledgers[pos].release(lease.lease_id, now)
        if lease.ram_mb:
            self._host.release(lease.lease_id, now)
        self._resident.done(lease.lease_id, now)
        out.append(
            LeaseReleased(
                request_id=lease.request_id,
                lease_id=lease.lease_id,
                devices=lease.devices,
                reservation_mb=lease.placement.need_mb,
            )
        )
        state: TerminalState
        if message.outcome == "ok":
            state = "completed"
        elif message.outcome == "cancelled" or lease.cancel_requested:
            state = "cancelled"
        else:
            state = "failed"
        self._counts[state] += 1
        reason = message.reason or (f"the run ended with {message.outcome}" if message.outcome != "ok" else "")
        self._end(out, lease.request_id, state, reason)
        return True

    def _cancel(self, message: CancelRequest, out: list[Message]) -> bool:
        waiting = self._waiting.get(message.request_id)
        if waiting is not None:
            self._dequeue(waiting)
            self._counts["cancelled"] += 1
            self._end(out, waiting.request_id, "cancelled", message.reason or "cancelled while waiting")
            return True
        lease_id = self._lease_of_request.get(message.request_id)
        if lease_id is not None:
            self._leases[lease_id].cancel_requested = True
        return False

    def _expire(self, now: float, out: list[Message]) -> bool:
        expired = False
        while True:
            entry = self._deadlines.peek()
            if entry is None or entry[0] > now:
                break
            self._deadlines.pop()
            waiting = self._by_seq.get(entry[1])
            if waiting is None:
                continue
            self._dequeue(waiting)
            self._counts["timed_out"] += 1
            waited = max(0.0, now - waiting.arrival)
            self._end(out, waiting.request_id, "timed_out", f"waited {waited:.1f} s without being admitted")
            expired = True
        return expired

    def _drop_dead_deadlines(self) -> None:
        if len(self._deadlines) > 2 * len(self._by_seq) + 1024:
            self._deadlines.keep_only(set(self._by_seq))
        while (entry := self._deadlines.peek()) is not None and entry[1] not in self._by_seq:
            self._deadlines.pop()

    # ------------------------------------------------------------------ samples, devices

    def _sample(self, message: ResourceSample, now: float, out: list[Message]) -> bool:
        """Take a sample; ``True`` when it may let a waiting request in: it changed a ledger's figures, or it
        refreshed a device that was stale when the latest pass ran (a sample that only confirms what that pass
        saw changes nothing for it)."""
        self._offered = None
        self._changed()
        at = min(message.at, now)
        newly_lost = False
        shrunk = False  # what a device can ever give fell: a waiting request may never fit any more
        changed = False
        position = self._position
        ledgers = self._ledgers
        pass_at = self._pass_at
        for device in message.devices:
            pos = position.get(device.index)
            if pos is None:
                continue
            ledger = ledgers[pos]
            was_lost = ledger.lost
            before = (ledger.others_mb, ledger.capacity_mb, ledger.unloading_mb)
            attainable = ledger.attainable_mb
            if was_lost or not ledger.admits(pass_at):
                changed = True
            ledger.observe(device, at)
            if ledger.lost != was_lost or (ledger.others_mb, ledger.capacity_mb, ledger.unloading_mb) != before:
                changed = True
                newly_lost = newly_lost or ledger.lost
            shrunk = shrunk or ledger.attainable_mb < attainable
        host = self._host
        if message.host is not None:
            before = (host.others_mb, host.capacity_mb, host.unloading_mb)
            attainable = host.attainable_mb
            host.observe(message.host, at)
            changed = changed or (host.others_mb, host.capacity_mb, host.unloading_mb) != before
            shrunk = shrunk or host.attainable_mb < attainable
        if (newly_lost or shrunk) and self._waiting:
            self._reject_unplaceable(out)
        return changed

    def _device_lost(self, message: DeviceLost, now: float, out: list[Message]) -> None:
        pos = self._position.get(message.index)
        if pos is None:
            raise InvalidParameter("index", message.index, "no such device", valid=str(sorted(self._position)))
        self._ledgers[pos].mark_lost(message.reason)
        self._offered = None
        self._changed()
        self._reject_unplaceable(out)

    def _reject_unplaceable(self, out: list[Message]) -> None:
        """Reject the waiting requests that no remaining device can ever take (lost, or others never leave)."""
        plans = self._plans
        for waiting in [w for w in self._waiting.values() if not plans.fits_ever(w.plans, with_lost=False)]:
            self._dequeue(waiting)
            code: RejectCode = "device_lost" if plans.fits_ever(waiting.plans, with_lost=True) else "does_not_fit"
            rejection = plans.rejection(waiting.request_id, code, [p for p in waiting.plans if p is not None])
            out.append(rejection)
            self._counts["rejected"] += 1
            self._end(out, waiting.request_id, "rejected", rejection.reason)
        for waiting in list(self._waiting.values()):
            host_rejection = self._host_never_fits(waiting.request_id, waiting.plans, waiting.owner)
            if host_rejection is not None:
                self._dequeue(waiting)
                out.append(host_rejection)
                self._counts["rejected"] += 1
                self._end(out, waiting.request_id, "rejected", host_rejection.reason)

    # ------------------------------------------------------------------ resident models

    def _loaded(self, message: ModelLoaded, now: float, out: list[Message]) -> bool:
        """Count a declared load; a running lease of that process and model on that device that reserved the
        weights uses the resident ones from now, and its reservation shrinks by them."""
        self._changed()
        entry = self._resident.load(message, now)
        if entry is None:
            raise InvalidParameter("device", message.device, "no such device", valid=str(sorted(self._position)))
        key = entry.key
        for lease in self._leases.values():
            placement = lease.placement
            plan = placement.plan
            if (
                placement.positions != (entry.pos,)
                or plan.requirement.world_size != 1
                or (lease.owner, plan.params.model, plan.params.options.dit_dtype) != key
                or self._resident.uses(lease.lease_id)
            ):
                continue
            taken = self._ledgers[entry.pos].shrink(lease.lease_id, min(message.vram_mb, weights_mb(plan)), now)
            lease.placement = placement._replace(need_mb=placement.need_mb - taken)
            self._ends.remove(lease.end)
            lease.end = (lease.expected_end, placement.positions, lease.placement.need_mb)
            self._ends.add(lease.end)
            if lease.ram_mb:
                ram = self._host.shrink(lease.lease_id, min(message.ram_mb, ram_weights_mb(plan)), now)
                lease.ram_mb -= ram
                if not lease.ram_mb:
                    self._host.release(lease.lease_id, now)
            self._resident.adopt(lease.lease_id, entry, now)
            out.append(
                LeaseShrunk(
                    request_id=lease.request_id,
                    lease_id=lease.lease_id,
                    devices=lease.devices,
                    reservation_mb=lease.placement.need_mb,
                    ram_mb=lease.ram_mb,
                    resident_mb=taken,
                )
            )
        self._regroup()
        return True

    def _unloaded(self, message: ModelUnloaded, now: float) -> bool:
        self._changed()
        if not self._resident.unload(message, now):
            return False
        self._regroup()
        return True

    def _regroup(self) -> None:
        resident = self._resident
        queue = self._queue
        for waiting in self._waiting.values():
            least = waiting.min_mb
            waiting.regroup(resident.groups(waiting.plans, waiting.owner))
            if waiting.min_mb != least:  # its key carries what it needs: the same place, a new key
                queue.remove(waiting.key)
                waiting.key = (*waiting.key[:3], waiting.min_mb)
                queue.add(waiting.key)

    def _evict(self, now: float, out: list[Message]) -> None:
        """Order idle resident models out for the first waiting request (of the first ``1 + backfill_depth``) that
        fits nowhere now but would then; nothing more while what is ordered out already makes room for it."""
        ledgers = self._ledgers
        free = self._free(now)
        usable = [ledger.admits(now) for ledger in ledgers]
        host_free = self._host.free_mb(now)
        by_seq = self._by_seq
        for key in islice(self._queue, 0, 1 + self.config.backfill_depth):
            waiting = by_seq[key[2]]
            orders = self._resident.evict_for(
                waiting.request_id, waiting.groups, waiting.owner, free, usable, host_free
            )
            if orders is not None:
                out.extend(orders)
                return

    def _host_groups(self, waiting: _Waiting, allowed: int) -> tuple[Group, ...]:
        """``waiting``'s groups whose host RAM fits within ``allowed`` MiB (it can start now only with those)."""
        if waiting.ram_max <= allowed:
            return waiting.groups
        need = self._resident.ram_need
        return tuple(g for g in waiting.groups if need(g.plan, waiting.owner, g.positions[:1]) <= allowed)

    def _host_fits(self, placed: Placement, owner: str, allowed: int) -> bool:
        """Whether the host RAM a placement reserves fits within ``allowed`` MiB."""
        return self._resident.ram_need(placed.plan, owner, placed.positions) <= allowed

    # ================================================================== scheduling

    def _free(self, now: float) -> list[int]:
        """What each device can take now (a list of the caller's own)."""
        seen = self._seen_free
        if seen is None or seen[0] != now:
            seen = self._seen_free = (now, [ledger.free_mb(now) for ledger in self._ledgers])
        return list(seen[1])

    def _changed(self) -> None:
        """The ledgers changed: what :meth:`_free` and :meth:`_later` saw is gone."""
        self._seen_free = self._seen_later = None

    def _timeline(self, now: float) -> list[End]:
        """The running leases' (expected end, positions, MiB per position), in order; overdue ones end ``now``.
        Not to be changed by the caller."""
        ends = self._ends.all
        if ends and ends[0][0] < now:
            # Leases past their expected end are expected to end now; they stay first, in one group.
            ends = [(now, positions, mb) if end < now else (end, positions, mb) for end, positions, mb in ends]
        return ends

    def _shadow(
        self,
        waiting: _Waiting,
        free: list[int],
        now: float,
        ends: list[End] | None = None,
    ) -> Shadow:
        """When ``waiting`` can start as the running leases (or ``ends``) end, and what it leaves over then."""
        ledgers = self._ledgers
        _, headroom, usable = self._seen_at(now)
        if self._earliest:
            avail = [f if ok else UNUSABLE for f, ok in zip(free, usable, strict=True)]
            if all(usable):  # the headroom of every device is at hand
                later = [min(f, room) for f, room in zip(avail, headroom, strict=True)]
            else:
                later = [min(f, ledger.headroom_mb()) for f, ledger in zip(avail, ledgers, strict=True)]
            if ends is None:
                choice = self._earliest_finish(waiting.groups, avail, later, now)
            else:
                releases = releases_of(ends, len(ledgers))
                choice = earliest_finish(waiting.groups, avail, later, releases, now=now, run_seconds=self.run_seconds)
            # its own copy of what is left over: backfilling takes from it
            return Shadow(math.inf, {}) if choice is None else Shadow(choice.start, dict(choice.extra))
        # What each device will have once leases end: the headroom, which may be below zero (others grew).
        free = [min(f, ledger.headroom_mb()) for f, ledger in zip(free, ledgers, strict=True)]
        return shadow(
            waiting.groups, free, usable, self._timeline(now) if ends is None else ends, now=now, spread=self._spread
        )

    def _place(
        self, groups: Sequence[Group], avail: list[int], now: float, free: list[int] | None = None
    ) -> Placement | None:
        """Where a request starts now on ``avail``, or ``None`` when it waits: it fits nowhere, or (earliest
        finish) it is expected to finish sooner on a device that is not free yet. A backfilled request (``avail``
        is what backfilling lets it use, ``free`` what is free) waits when it would finish sooner by waiting on
        ``free``; otherwise it starts where it finishes first among the devices ``avail`` lets it start on now."""
        if not self._earliest:
            return place_groups(groups, avail, spread=self._spread)
        choice = self._earliest_finish(groups, free if free is not None else avail, self._later(now), now)
        if choice is None or not choice.ready:
            return None
        if free is None or free is avail:
            return choice.placement
        choice = self._earliest_finish(groups, avail, [UNUSABLE] * len(avail), now)
        return None if choice is None else choice.placement

    def _earliest_finish(
        self, groups: Sequence[Group], avail: list[int], later: list[int], now: float
    ) -> Choice | None:
        """:func:`earliest_finish` on the running leases' ends. The latest few answers are kept while the leases
        stay the same: a pass asks the same question more than once (where the head goes, then its shadow; where
        a new request goes, then why it waits). The answer is shared: not to be changed."""
        memo = self._memo
        version = self._ends.version
        if self._memo_version != version:
            memo.clear()
            self._memo_version = version
        for entry in memo:
            if entry[0] is groups and entry[3] == now and entry[1] == avail and entry[2] == later:
                return entry[4]
        choice = earliest_finish(groups, avail, later, self._ends.per, now=now, run_seconds=self.run_seconds)
        if len(memo) >= _MEMO_SIZE:
            memo.pop(0)
        memo.append((groups, list(avail), list(later), now, choice))
        return choice

    def _place_head(self, head: _Waiting, free: list[int], now: float) -> tuple[_Waiting, Placement] | None:
        """What starts now in the head's turn, and where (``None``: the head waits and nothing starts).

        Earliest finish: when only the liveness rule starts the head now (on an idle device, where it would rather
        wait for a faster one, within its ``max_wait_s``), the idle devices go to the request, the head or one
        behind it that backfilling lets start now, whose time there is the least over its best time anywhere (the
        work a device is comparatively best at; ties go to the head, then to queue order). The head then waits
        for the device it prefers, protected by backfilling."""
        host_free = self._host.free_mb(now)
        head_groups = self._host_groups(head, host_free)
        if not head_groups:
            return None  # it waits for host RAM
        if not self._earliest:
            placed = place_groups(head_groups, free, spread=self._spread)
            return None if placed is None else (head, placed)
        releases = self._releases(now)
        run_seconds = self.run_seconds
        choice = self._earliest_finish(head_groups, free, self._later(now), now)
        if choice is None or not choice.ready:
            return None
        wanted = choice.preferred
        if wanted is None or not self.config.backfill or wanted.start > head.deadline:
            return head, choice.placement
        ledgers = self._ledgers
        idle = [not releases[pos] and ledgers[pos].admits(now) for pos in range(len(ledgers))]
        guarded = [min(f, wanted.extra[pos]) if pos in wanted.extra else f for pos, f in enumerate(free)]
        nothing_later = [UNUSABLE] * len(free)
        best = choice
        best_ratio = relative_cost(choice, head_groups, run_seconds)
        picked = head
        by_seq = self._by_seq
        host_guard = host_free - head.ram_mb  # what the others may take: the head keeps what it needs
        for key in islice(self._queue, 1, 1 + self.config.backfill_depth):
            waiting = by_seq[key[2]]
            groups = self._host_groups(waiting, host_guard)
            if not groups:
                continue
            ends_before = now + waiting.run_s <= wanted.start
            room = free if ends_before else guarded
            avail = [mb if ok else UNUSABLE for mb, ok in zip(room, idle, strict=True)]
            if waiting.min_mb > max(avail):
                continue
            found = earliest_finish(groups, avail, nothing_later, releases, now=now, run_seconds=run_seconds)
            if found is None:
                continue
            ratio = relative_cost(found, groups, run_seconds)
            if ratio < best_ratio:
                best, best_ratio, picked = found, ratio, waiting
        return picked, best.placement

    def _later(self, now: float) -> list[int]:
        """What each device will have once its leases end: the headroom (below zero when others grew);
        ``UNUSABLE`` on devices that admit nothing now."""
        return list(self._seen_at(now)[1])

    def _seen_at(self, now: float) -> tuple[float, list[int], list[bool]]:
        """``_later(now)`` and whether each device admits now, kept until the ledgers change: not to be changed."""
        seen = self._seen_later
        if seen is None or seen[0] != now:
            usable = [ledger.admits(now) for ledger in self._ledgers]
            later = [ledger.headroom_mb() if ok else UNUSABLE for ledger, ok in zip(self._ledgers, usable, strict=True)]
            seen = self._seen_later = (now, later, usable)
        return seen

    def _releases(self, now: float) -> list[list[End]]:
        """The running leases' expected ends per position, in order (:func:`releases_of` of the timeline; ends
        before ``now`` are kept as they are: placement counts them as ending ``now``)."""
        return self._ends.per

    def _protector(self, free: list[int], now: float) -> tuple[_Waiting | None, Shadow]:
        """The first waiting request (of the first ``1 + backfill_depth``) that can start within its bound (once
        running leases end, before its deadline), with its shadow: backfilling must not delay it. ``None`` when
        none can: then nothing is protected."""
        by_seq = self._by_seq
        for key in islice(self._queue, 0, 1 + self.config.backfill_depth):
            waiting = by_seq[key[2]]
            found = self._shadow(waiting, free, now)
            if found.time < math.inf and found.time <= waiting.deadline:
                return waiting, found
        return None, Shadow(math.inf, {})

    def _schedule(self, now: float, out: list[Message], only: _Waiting | None = None) -> None:
        """Admit the head while it fits; then backfill behind it (only ``only``, when given). Without backfilling,
        only the first request that can start may pass an un-startable head."""
        self._pass_at = now
        free = self._free(now)
        if only is None:
            while self._queue:
                head = self._by_seq[self._queue.first()[2]]
                start = self._place_head(head, free, now)
                if start is None:
                    break
                # The head, or a request behind it that took an idle device the head would have taken.
                starter, placed = start
                if not self._host_fits(placed, starter.owner, self._host.free_mb(now)):
                    break  # it waits for host RAM
                self._dequeue(starter)
                self._admit(
                    out,
                    starter.request_id,
                    placed,
                    now,
                    starter.arrival,
                    backfilled=starter is not head,
                    owner=starter.owner,
                )
                for pos in placed.positions:
                    free[pos] -= placed.need_mb
        if not self._queue:
            return
        top = max(free)
        if top <= 0:
            return
        small: list[_Waiting]
        if only is not None:
            small = [only] if only.min_mb <= top else []
        else:
            # Taken before any of them is admitted; those too large for every device now are left out at once (the
            # free memory only shrinks as candidates start; each is checked again in its turn).
            by_seq = self._by_seq
            keys = self._queue.window(1, 1 + self.config.backfill_depth)
            small = [by_seq[key[2]] for key in keys if key[3] <= top]
        if not small:
            return
        backfill = self.config.backfill
        # The protected request and its shadow, computed anew for the first candidate after it started.
        protected: Shadow | None
        protector, protected = self._protector(free, now)
        # Host RAM a candidate that runs past the protected start may use: what the protected request leaves.
        host_spare = self._host.free_mb(now) - (protector.ram_mb if protector is not None else 0)
        # What a candidate that runs past the protected start may use: on its devices, only the spare.
        extra = protected.extra
        guarded = [min(f, extra[pos]) if pos in extra else f for pos, f in enumerate(free)]
        top_guarded = max(guarded)
        # While this request is protected, what the others may take only shrinks as they start: the candidates
        # that could not start now are left out at once (each is checked again in its turn); once it started, the
        # rest are taken one by one.
        turns: list[_Waiting]
        if not backfill:
            turns = [protector] if protector in small else []
        elif (limit := protected.time) < math.inf:
            turns = [w for w in small if w.min_mb <= top_guarded or now + w.run_s <= limit or w is protector]
        else:
            turns = [w for w in small if w.min_mb <= top_guarded or w is protector]
        turn = 0
        while turn < len(turns):
            waiting = turns[turn]
            turn += 1
            if waiting.min_mb > top:
                continue
            if protected is None:
                protector, protected = self._protector(free, now)
                host_spare = self._host.free_mb(now) - (protector.ram_mb if protector is not None else 0)
                # What a candidate that runs past the protected start may use: on its devices, only the spare.
                extra = protected.extra
                guarded = [min(f, extra[pos]) if pos in extra else f for pos, f in enumerate(free)]
                top_guarded = max(guarded)
            mine = waiting is protector
            if not (backfill or mine):
                continue
            ends_before = mine or now + waiting.run_s <= protected.time < math.inf
            if not ends_before and waiting.min_mb > top_guarded:
                continue
            host_allowed = self._host.free_mb(now) if ends_before else host_spare
            groups = self._host_groups(waiting, host_allowed)
            if not groups:
                continue
            found = self._place(groups, free if ends_before else guarded, now, free)
            if found is None:
                continue
            ram = self._resident.ram_need(found.plan, waiting.owner, found.positions)
            if ram > host_allowed:
                continue
            if not ends_before:
                host_spare -= ram
            self._dequeue(waiting)
            self._admit(out, waiting.request_id, found, now, waiting.arrival, backfilled=True, owner=waiting.owner)
            for pos in found.positions:
                free[pos] -= found.need_mb
                guarded[pos] = min(guarded[pos], free[pos])
                if not ends_before and pos in protected.extra:
                    protected.extra[pos] -= found.need_mb
                    guarded[pos] = min(free[pos], protected.extra[pos])
            if mine:
                protected = None  # the next request that can start is protected now
                turns = small[small.index(waiting) + 1 :]  # the candidates after it, one by one
                turn = 0
            top = max(free)
            top_guarded = max(guarded)
            if top <= 0:
                break

    # ================================================================== what a waiting request waits for

    def standing(self, request_id: str, now: float) -> Standing | None:
        """Where a waiting request stands: its position, what it waits for, and when it is expected to start
        (``None`` when that is unknown: others' use blocks it); ``None`` when it is not waiting."""
        waiting = self._waiting.get(request_id)
        if waiting is None:
            return None
        now = max(now, self._now)
        ahead = self._queue.rank(waiting.key)
        free = self._free(now)
        own = self._shadow(waiting, free, now)
        start = own.time
        if ahead and start < math.inf:
            protector, protected = self._protector(free, now)
            if protector is not None and protector is not waiting and protected.time < math.inf:
                # Behind the request backfilling protects: it starts first and holds its memory while it runs.
                need = protector.min_mb
                held = [f - need if pos in protected.extra else f for pos, f in enumerate(free)]
                ends = sorted(
                    [
                        *self._timeline(now),
                        (protected.time + protector.run_s, tuple(protected.extra), need),
                    ]
                )
                start = max(protected.time, self._shadow(waiting, held, now, ends).time)
        return Standing(
            position=ahead + 1,
            reason=self._why_waiting(waiting, now, free, ahead),
            starts_at=start if start < math.inf else None,
        )

    def stalled(self, now: float) -> tuple[float, str] | None:
        """Since when the queue has not moved (requests wait, and no lease runs on any device the first of them
        could use) and what that request waits for; ``None`` when the queue is empty or moving."""
        since = self._stalled_since
        if since is None or not self._queue:
            return None
        head = self._by_seq[self._queue.first()[2]]
        now = max(now, self._now)
        return since, self._why_waiting(head, now, self._free(now), 0)

    def _note_stall(self, now: float) -> None:
        if not self._queue:
            self._stalled_since = None
            return
        head = self._by_seq[self._queue.first()[2]]
        ledgers = self._ledgers
        if any(ledgers[pos].leases for group in head.groups for pos in group.positions):
            self._stalled_since = None
        elif self._stalled_since is None:
            self._stalled_since = now

    def _why_waiting(self, waiting: _Waiting, now: float, free: list[int] | None = None, ahead: int = -1) -> str:
        free = self._free(now) if free is None else free
        ahead = self._queue.rank(waiting.key) if ahead < 0 else ahead
        reason = waiting_reason(waiting.plans, self._ledgers, free, now, ahead)
        host_free = self._host.free_mb(now)
        if waiting.ram_mb > host_free:
            host = self._host
            reason += (
                f"; waiting for {waiting.ram_mb - host_free:,} MiB of host RAM: held by {host.leases} running "
                f"lease{'s' if host.leases != 1 else ''}, {host.resident_mb:,} MiB of resident models and "
                f"{host.others_mb:,} MiB of others"
            )
        if self._earliest and place_groups(waiting.groups, free, spread=False) is not None:
            choice = self._earliest_finish(waiting.groups, free, self._later(now), now)
            if choice is not None and not choice.ready:
                where = ", ".join(f"gpu{self._devices[pos].index}" for pos in choice.placement.positions)
                reason += f"; it is expected to finish sooner on {where}, free in {choice.start - now:,.0f} s"
        return reason

    # ================================================================== bookkeeping

    def _enqueue(self, waiting: _Waiting) -> None:
        self._queue.add(waiting.key)
        self._waiting[waiting.request_id] = waiting
        self._by_seq[waiting.seq] = waiting
        if math.isfinite(waiting.deadline):
            self._deadlines.push(waiting.deadline, waiting.seq, waiting.request_id)
            if len(self._deadlines) > 2 * len(self._by_seq) + 1024:
                self._deadlines.keep_only(set(self._by_seq))

    def _dequeue(self, waiting: _Waiting) -> None:
        self._queue.remove(waiting.key)
        del self._waiting[waiting.request_id]
        del self._by_seq[waiting.seq]

    def _admit(
        self,
        out: list[Message],
        request_id: str,
        found: Placement,
        now: float,
        arrival: float,
        *,
        backfilled: bool,
        owner: str = "",
    ) -> None:
        self._changed()
        self._lease_counter += 1
        lease_id = f"lease-{self._lease_counter}"
        ram = self._resident.ram_need(found.plan, owner, found.positions)
        if ram:
            self._host.reserve(lease_id, ram, now)
        for pos in found.positions:
            self._ledgers[pos].reserve(lease_id, found.need_mb, now)
        resident_mb = self._resident.use(lease_id, found.plan, owner, found.positions, found.need_mb, now)
        lease = _Lease(
            lease_id,
            request_id,
            found,
            now,
            self._lease_counter,
            self._lease_devices(found),
            self.run_seconds(found.seconds),
            self.run_seconds(time_high_s(found.plan.requirement) + found.extra_s),
            owner,
            ram,
        )
        self._leases[lease_id] = lease
        self._lease_of_request[request_id] = lease_id
        self._ends.add(lease.end)
        waited = float(max(0.0, now - arrival))
        self._counts["admitted"] += 1
        if backfilled:
            self._counts["backfilled"] += 1
        self._wait_total += waited
        self._wait_max = max(self._wait_max, waited)
        out.append(
            RequestAdmitted(
                request_id=request_id,
                lease_id=lease_id,
                devices=lease.devices,
                reservation_mb=found.need_mb,
                plan=found.plan,
                waited_s=waited,
                ram_mb=ram,
                resident_mb=resident_mb,
            )
        )

    def _lease_devices(self, placement: Placement) -> tuple[int, ...]:
        devices = self._devices
        return tuple([devices[pos].index for pos in placement.positions])

    def _reject(self, out: list[Message], request_id: str, code: RejectCode, reason: str) -> None:
        out.append(RequestRejected(request_id=request_id, code=code, reason=reason))
        self._counts["rejected"] += 1
        self._end(out, request_id, "rejected", reason)

    def _end(self, out: list[Message], request_id: str, state: TerminalState, reason: str) -> None:
        out.append(RequestEnded(request_id=request_id, state=state, reason=reason))
