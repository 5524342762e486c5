"""What a simulation measured, per policy: one immutable record, and the side-by-side table."""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from vramgate.simulate.bound import speed_bound_makespan
from vramgate.simulate.engine import Simulation


class PolicyResult(msgspec.Struct, frozen=True, kw_only=True):
    """The metrics of one policy on one trace (times in seconds, memory use as a fraction of capacity).

        ``overcommits``: starts after which the memory the policy had committed on a device (its own per-run
        figures) plus what its latest sample showed in use by others exceeded the capacity. ``bound_makespan_s``: the
        shortest makespan possible ignoring memory (the total work, as given on the fastest device, over the devices,
        and no shorter than any single request's arrival plus run time). ``speed_bound_makespan_s``: the
        speed-aware lower bound (:mod:`vramgate.simulate.bound`: vramgate's plans' times on each GPU kind, the work
        split fractionally over the kinds). ``terminal_violations``: requests without
        exactly one terminal state. ``digest``: SHA-256 of the event sequence. ``outside_denied_mb``: memory outside
    consumers asked for and were refused because it was not free (pinned blocks make more of them refused).
    ``pin_failures``: runs whose planned memory could not be pinned when they started (they ran unprotected).
    ``load_gpu_s``: GPU-seconds spent loading weights that were not resident (not counted in ``useful_gpu_s`` or
    ``wasted_gpu_s``); ``loads``: runs that loaded, ``disk_loads`` those that read from disk, not the page cache.
    ``host_oom_kills``: runs killed because their host RAM did not fit (they end ``failed``).
    """

    policy: str
    requests: int
    completed: int
    rejected_upfront: int
    rejected: int
    failed_oom: int
    failed: int
    cancelled: int
    timed_out: int
    oom_events: int
    wasted_gpu_s: float
    useful_gpu_s: float
    makespan_s: float
    mean_wait_s: float
    p95_wait_s: float
    p95_wait_by_priority: dict[str, float]
    mean_memory_use: float
    overcommits: int
    bound_makespan_s: float
    runs: int
    faults: dict[str, int]
    leaked_leases: int
    terminal_violations: int
    digest: str
    speed_bound_makespan_s: float = 0.0
    outside_denied_mb: int = 0
    pin_failures: int = 0
    load_gpu_s: float = 0.0
    loads: int = 0
    disk_loads: int = 0
    host_oom_kills: int = 0
    wall_s: float = 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else math.inf


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def bound_makespan(sim: Simulation) -> float:
    """The makespan lower bound ignoring memory (see :class:`PolicyResult`)."""
    kinds = {spec.name: spec for spec in sim.specs}
    total = 0.0
    latest = 0.0
    first = min((job.arrival for job in sim.jobs), default=0.0)
    for job in sim.jobs:
        if job.reason.startswith("bad request"):
            continue
        params = sim.truth.as_given(job.request)
        work = min(sim.truth.estimate(params, gpu)[1] for gpu in kinds.values()) * job.time_ratio
        total += work * params.options.gpus
        latest = max(latest, job.arrival - first + work)
    return max(total / len(sim.specs), latest)


def collect(sim: Simulation, *, wall_s: float = 0.0, bound: bool = True) -> PolicyResult:
    """Summarize a finished simulation; without ``bound``, skip the speed-aware bound (it plans every request
    again on every GPU kind; ``speed_bound_makespan_s`` is then 0)."""
    jobs = sim.jobs
    waits = [job.first_start - job.arrival for job in jobs if job.first_start is not None]
    by_priority: dict[int, list[float]] = {}
    for job in jobs:
        if job.first_start is not None:
            by_priority.setdefault(job.priority, []).append(job.first_start - job.arrival)
    states: dict[str, int] = {}
    for job in jobs:
        states[job.state or "none"] = states.get(job.state or "none", 0) + 1
    failed_oom = sum(1 for job in jobs if job.state == "failed" and job.run is not None and job.run.outcome == "oom")
    c = sim.counters
    return PolicyResult(
        policy=sim.policy.name,
        requests=len(jobs),
        completed=states.get("completed", 0),
        rejected_upfront=sim.rejected_upfront,
        rejected=states.get("rejected", 0),
        failed_oom=failed_oom,
        failed=states.get("failed", 0),
        cancelled=states.get("cancelled", 0),
        timed_out=states.get("timed_out", 0),
        oom_events=c.oom_events,
        wasted_gpu_s=round(c.wasted_gpu_s, 3),
        useful_gpu_s=round(c.useful_gpu_s, 3),
        makespan_s=round(sim.makespan, 3),
        mean_wait_s=round(sum(waits) / len(waits), 3) if waits else 0.0,
        p95_wait_s=round(percentile(waits, 95), 3),
        p95_wait_by_priority={str(p): round(percentile(w, 95), 3) for p, w in sorted(by_priority.items())},
        mean_memory_use=round(sim.mean_memory_use(), 4),
        overcommits=c.overcommits,
        bound_makespan_s=round(bound_makespan(sim), 3),
        speed_bound_makespan_s=round(speed_bound_makespan(sim), 3) if bound else 0.0,
        runs=c.runs,
        faults=dict(sorted(c.faults.items())),
        leaked_leases=sim.policy.open_leases() + sim.leaked_allocations(),
        terminal_violations=sum(1 for job in jobs if job.terminals != 1),
        digest=sim.digest,
        outside_denied_mb=c.outside_denied_mb,
        pin_failures=c.pin_failures,
        load_gpu_s=round(c.load_gpu_s, 3),
        loads=c.loads,
        disk_loads=c.disk_loads,
        host_oom_kills=c.host_oom_kills,
        wall_s=wall_s,
    )
