"""A speed-aware lower bound on a trace's makespan, from the plans vramgate makes for each kind of GPU.

Each request has, on each GPU kind it fits, the plan the optimizer makes there (at what a dedicated device of that
kind gives a reservation: capacity less the safety margin and the CUDA context) and that plan's true GPU-seconds
(its time times its world size). Relaxing placement to fractions and ignoring memory, the shortest makespan ``T``
satisfies, for a fractional assignment ``x[j][k]`` (summing to 1 per request) of requests to kinds with ``n[k]``
devices: ``sum_j x[j][k] * c[j][k] <= n[k] * T`` for every kind. By LP duality, every weight vector ``w >= 0``
with ``sum_k w[k] * n[k] = 1`` gives ``sum_j min_k w[k] * c[j][k] <= T`` (a lower bound whatever ``w``); the
bound is its maximum: exact for one or two kinds (a concave function of one variable, maximized by golden
section), and the best of a multiplicative ascent for more. It is also no shorter than any request's arrival
(after the first) plus its fastest run. The simulator's older bound takes every device to be as fast as the
fastest, which hides a slow kind.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from vramgate.errors import VramgateError
from vramgate.hardware.simulated import DEFAULT_CONTEXT_OVERHEAD_MB
from vramgate.policy.estimate import Estimator
from vramgate.policy.gpus import GpuSpec
from vramgate.policy.ledger import default_margin_mb
from vramgate.policy.optimize import Optimizer

if TYPE_CHECKING:
    from vramgate.simulate._truth import Truth
    from vramgate.simulate.engine import Simulation

#: Each truth's planned GPU-seconds per (request, kind) and fastest run (policies of one comparison share a truth).
_COSTS: weakref.WeakKeyDictionary[Truth, dict[tuple[object, str], tuple[float, float] | None]] = (
    weakref.WeakKeyDictionary()
)


def fractional_makespan(costs: Sequence[Sequence[float]], counts: Sequence[int], *, rounds: int = 200) -> float:
    """The fractional lower bound for ``costs[j][k]`` GPU-seconds of request ``j`` on kind ``k`` (``inf``: it
    cannot run there) on ``counts[k]`` devices of each kind (see the module docstring)."""
    kinds = len(counts)
    rows = [row for row in costs if any(math.isfinite(c) for c in row)]
    if not rows or kinds == 0:
        return 0.0

    def value(weights: Sequence[float]) -> float:
        return sum(min(w * c for w, c in zip(weights, row, strict=True) if math.isfinite(c)) for row in rows)

    if kinds == 1:
        return value([1.0 / counts[0]])
    if kinds == 2:
        # w0 in [0, 1/n0], w1 = (1 - w0 * n0) / n1: concave in w0.
        def at(w0: float) -> float:
            return value([w0, (1.0 - w0 * counts[0]) / counts[1]])

        lo, hi = 0.0, 1.0 / counts[0]
        ratio = (math.sqrt(5.0) - 1.0) / 2.0
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        fa, fb = at(a), at(b)
        for _ in range(rounds):
            if fa < fb:
                lo, a, fa = a, b, fb
                b = lo + ratio * (hi - lo)
                fb = at(b)
            else:
                hi, b, fb = b, a, fa
                a = hi - ratio * (hi - lo)
                fa = at(a)
        return max(fa, fb, at(0.0), at(1.0 / counts[0]))
    # More kinds: multiplicative ascent on the load shares; every iterate is a valid bound, keep the best.
    shares = [1.0 / kinds] * kinds
    best = 0.0
    for step in range(rounds):
        weights = [s / n for s, n in zip(shares, counts, strict=True)]
        best = max(best, value(weights))
        load = [0.0] * kinds
        for row in rows:
            k = min((k for k in range(kinds) if math.isfinite(row[k])), key=lambda k: weights[k] * row[k])
            load[k] += row[k] / counts[k]
        total = sum(load) or 1.0
        rate = 1.0 / math.sqrt(step + 1.0)
        shares = [s * math.exp(rate * (x / total - 1.0 / kinds)) for s, x in zip(shares, load, strict=True)]
        norm = sum(shares)
        shares = [s / norm for s in shares]
    return best


def speed_bound_makespan(sim: Simulation) -> float:
    """The speed-aware makespan lower bound of a simulation's trace on its devices (see the module docstring)."""
    estimator = sim.estimator
    if not isinstance(estimator, Estimator):
        return 0.0
    kinds: dict[str, tuple[GpuSpec, int]] = {}
    for spec in sim.specs:
        kind = kinds.get(spec.name)
        kinds[spec.name] = (spec, 1 if kind is None else kind[1] + 1)
    cache = _COSTS.setdefault(sim.truth, {})
    optimizer = Optimizer(estimator)
    first = min((job.arrival for job in sim.jobs), default=0.0)
    costs: list[list[float]] = []
    latest = 0.0
    for job in sim.jobs:
        if job.reason.startswith("bad request"):
            continue
        key_request = msgspec.structs.replace(job.request, request_id="", priority=0, prompt="", max_wait_s=None)
        row: list[float] = []
        fastest = math.inf
        for name, (spec, _) in kinds.items():
            key = (key_request, name)
            if key not in cache:
                budget = spec.memory_mib - default_margin_mb(spec.memory_mib) - DEFAULT_CONTEXT_OVERHEAD_MB
                try:
                    plan = optimizer.optimize(
                        job.request, gpu=name, budget_mb=budget, ram_budget_mb=None, max_level=job.request.max_level
                    )
                except VramgateError:
                    plan = None
                if plan is not None and plan.fits:
                    seconds = sim.truth.estimate(plan.params, spec)[1]
                    cache[key] = (seconds * plan.requirement.world_size, seconds)
                else:
                    cache[key] = None
            found = cache[key]
            if found is None:
                row.append(math.inf)
            else:
                row.append(found[0] * job.time_ratio)
                fastest = min(fastest, found[1] * job.time_ratio)
        if math.isfinite(fastest):
            costs.append(row)
            latest = max(latest, job.arrival - first + fastest)
    counts = [count for _, count in kinds.values()]
    return max(fractional_makespan(costs, counts), latest)
