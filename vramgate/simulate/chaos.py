"""The reliability campaign: the vramgate policy under every fault, its invariants, and a replay.

:func:`campaign` generates seeded traces, runs them under :data:`~vramgate.simulate.faults.ALL_FAULTS` (or the
given spec), runs each again with the same seed, and sums what must hold: no over-commit, no leaked lease, exactly
one terminal state per request, and the same event digest on replay. Its runs skip the speed-aware makespan
bound, which says nothing about these invariants and would plan every request again on every GPU kind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from vramgate.policy.estimate import Estimator
from vramgate.policy.gpus import GpuSpec
from vramgate.simulate._truth import Truth
from vramgate.simulate.faults import ALL_FAULTS, FaultSpec
from vramgate.simulate.run import simulate
from vramgate.simulate.trace import Trace


class ChaosReport(msgspec.Struct, kw_only=True):
    """What a campaign injected and what it found (every count but ``requests`` and ``faults`` must be 0)."""

    requests: int = 0
    chunks: int = 0
    faults: dict[str, int] = {}
    overcommits: int = 0
    leaked_leases: int = 0
    terminal_violations: int = 0
    divergences: int = 0
    oom_events: int = 0
    completed: int = 0
    states: dict[str, int] = {}
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.overcommits or self.leaked_leases or self.terminal_violations or self.divergences)


def campaign(
    make_trace: Callable[[int], Trace],
    devices: Sequence[GpuSpec],
    *,
    chunks: int,
    seed: int = 0,
    faults: FaultSpec = ALL_FAULTS,
    replay: bool = True,
    progress: Callable[[int, ChaosReport], None] | None = None,
) -> ChaosReport:
    """Run ``chunks`` traces (``make_trace(chunk_seed)``) under ``faults``, each replayed once with its seed."""
    report = ChaosReport()
    estimator = Estimator()
    for chunk in range(chunks):
        chunk_seed = seed * 1_000_003 + chunk
        trace = make_trace(chunk_seed)
        truth = Truth(estimator, devices[0], mem_spread=0.02, time_spread=0.1)
        result, sim = simulate(
            trace, devices, "vramgate", seed=chunk_seed, faults=faults, estimator=estimator, truth=truth, bound=False
        )
        report.chunks += 1
        report.requests += result.requests
        report.wall_s += result.wall_s
        for kind, count in result.faults.items():
            report.faults[kind] = report.faults.get(kind, 0) + count
        report.overcommits += result.overcommits
        report.leaked_leases += result.leaked_leases
        report.terminal_violations += result.terminal_violations
        report.oom_events += result.oom_events
        report.completed += result.completed
        for job in sim.jobs:
            state = job.state or "none"
            report.states[state] = report.states.get(state, 0) + 1
        if replay:
            again, _ = simulate(
                trace,
                devices,
                "vramgate",
                seed=chunk_seed,
                faults=faults,
                estimator=estimator,
                truth=Truth(estimator, devices[0], mem_spread=0.02, time_spread=0.1),
                bound=False,
            )
            report.wall_s += again.wall_s
            if again.digest != result.digest or msgspec.structs.replace(again, wall_s=0.0) != msgspec.structs.replace(
                result, wall_s=0.0
            ):
                report.divergences += 1
        if progress is not None:
            progress(chunk, report)
    return report
