"""Run policies against a trace: one at a time, or all of them side by side with the same seed."""

from __future__ import annotations

import time
from collections.abc import Sequence

import msgspec

from vramgate.errors import InvalidParameter
from vramgate.policy.admission_config import Placement
from vramgate.policy.estimate import Estimator, copy_estimator
from vramgate.policy.gpus import GpuSpec
from vramgate.policy.optimize import Optimizer
from vramgate.simulate._truth import Truth
from vramgate.simulate._weights import SimulatedHost
from vramgate.simulate.engine import Policy, Simulation
from vramgate.simulate.faults import FaultSpec
from vramgate.simulate.gate import SIMULATED_ADMISSION, VramgatePolicy
from vramgate.simulate.metrics import PolicyResult, collect
from vramgate.simulate.policies import CheckThenRunPolicy, RetryOnOomPolicy, SeedPolicy, SerialPolicy
from vramgate.simulate.trace import Trace

#: Every policy, in the order tables list them (``vramgate-cold``: the vramgate policy with no resident weights).
POLICIES = ("vramgate", "vramgate-cold", "serial", "check-then-run", "retry-on-oom", "seed")


def make_policy(name: str, estimator: Estimator, *, placement: Placement | None = None) -> Policy:
    """A fresh policy by name (``placement``: the vramgate policy's, else the admission core's default). The
    vramgate policy learns on a copy of ``estimator``, so that each run of it starts from what ``estimator`` knows."""
    if name in ("vramgate", "vramgate-cold"):
        optimizer = Optimizer(copy_estimator(estimator))
        config = SIMULATED_ADMISSION
        if placement is not None:
            config = msgspec.structs.replace(SIMULATED_ADMISSION, placement=placement)
        return VramgatePolicy(optimizer, config, keep_weights=name == "vramgate")
    if name == "serial":
        return SerialPolicy()
    if name == "check-then-run":
        return CheckThenRunPolicy()
    if name == "retry-on-oom":
        return RetryOnOomPolicy(Optimizer(estimator))
    if name == "seed":
        return SeedPolicy()
    raise InvalidParameter("policy", name, "unknown policy", valid=", ".join((*POLICIES, "all")))


def policy_names(name: str) -> tuple[str, ...]:
    """``all`` -> every policy; a comma-separated list -> those (each checked)."""
    if name == "all":
        return POLICIES
    names = tuple(part.strip() for part in name.split(",") if part.strip())
    for part in names:
        if part not in POLICIES:
            raise InvalidParameter("policy", part, "unknown policy", valid=", ".join((*POLICIES, "all")))
    if not names:
        raise InvalidParameter("policy", name, "no policy given", valid=", ".join((*POLICIES, "all")))
    return names


def simulate(
    trace: Trace,
    devices: Sequence[GpuSpec],
    policy: str,
    *,
    seed: int = 0,
    faults: FaultSpec | None = None,
    mem_spread: float = 0.02,
    time_spread: float = 0.1,
    timeline: bool = False,
    estimator: Estimator | None = None,
    truth: Truth | None = None,
    placement: Placement | None = None,
    host: SimulatedHost | None = None,
    bound: bool = True,
) -> tuple[PolicyResult, Simulation]:
    """Run one policy; returns its metrics and the finished simulation (for plots and checks). ``bound``: compute
    the speed-aware makespan bound (see :func:`~vramgate.simulate.metrics.collect`)."""
    estimator = estimator or Estimator()
    sim = Simulation(
        trace,
        devices,
        make_policy(policy, estimator, placement=placement),
        estimator=estimator,
        seed=seed,
        mem_spread=mem_spread,
        time_spread=time_spread,
        faults=faults,
        timeline=timeline,
        truth=truth,
        host=host,
    )
    started = time.perf_counter()
    sim.run()
    return collect(sim, wall_s=time.perf_counter() - started, bound=bound), sim


def compare(
    trace: Trace,
    devices: Sequence[GpuSpec],
    policies: Sequence[str] = POLICIES,
    *,
    seed: int = 0,
    faults: FaultSpec | None = None,
    mem_spread: float = 0.02,
    time_spread: float = 0.1,
    placements: Sequence[Placement] = (),
    host: SimulatedHost | None = None,
) -> list[PolicyResult]:
    """Every policy against the same trace, seed and faults (one shared estimator, so one shared truth); with
    ``placements``, the vramgate policy once with each of them (each result named ``vramgate:<placement>``)."""
    estimator = Estimator()
    truth = Truth(estimator, devices[0], mem_spread=mem_spread, time_spread=time_spread)
    results: list[PolicyResult] = []
    for name in policies:
        for placement in placements if name == "vramgate" and placements else (None,):
            result = simulate(
                trace,
                devices,
                name,
                seed=seed,
                faults=faults,
                estimator=estimator,
                truth=truth,
                placement=placement,
                host=host,
            )[0]
            if placement is not None:
                result = msgspec.structs.replace(result, policy=f"vramgate:{placement}")
            results.append(result)
    return results
