from __future__ import annotations

import itertools

import pytest

from vramgate.messages.trace import Arrival
from vramgate.simulate import compare, parse_devices, simulate
from vramgate.simulate.faults import FaultSpec
from vramgate.simulate.policies import seed_estimate_mb

from ._helpers import A14B_FLAGS, small, trace

RTX = parse_devices("RTX4090-24GB")
H100S = parse_devices("2xH100-80GB")


def burst(count: int = 12):  # type: ignore[no-untyped-def]
    records = []
    for i in range(count):
        if i % 2:
            request = small(i, model="t2v-A14B", width=832, height=480, frames=33, steps=20, options=A14B_FLAGS)
        else:
            request = small(i, priority=i % 3)
        records.append(Arrival(at=float(i), request=request))
    return trace(*records)


def test_seed_estimates_follow_the_replaced_formula() -> None:
    assert seed_estimate_mb("t2v-A14B", 1280, 720, 50, 0) == 6500
    assert seed_estimate_mb("ti2v-5B", 1280, 704, 50, 0) == 4500
    assert seed_estimate_mb("i2v-A14B", 832, 480, 40, 1) == int(6000 * 0.6 * (1 - 10 / 50 * 0.3) * 1.15)
    assert seed_estimate_mb("t2v-A14B", 1920, 1080, 50, 2) == int(6500 * 2.4 * 1.3)


def test_vramgate_never_runs_out_of_memory_or_over_commits_and_completes_the_most() -> None:
    for devices in (RTX, H100S):
        results = {r.policy: r for r in compare(burst(), devices, seed=1)}
        ours = results["vramgate"]
        assert ours.oom_events == 0
        assert ours.overcommits == 0
        assert ours.leaked_leases == 0
        assert ours.terminal_violations == 0
        assert ours.completed >= max(r.completed for r in results.values())
        assert results["seed"].oom_events > 0  # its estimates are far too low


def test_serial_runs_one_at_a_time_per_device() -> None:
    _, sim = simulate(burst(), H100S, "serial", seed=0, timeline=True)
    assert sim.timeline is not None
    for device in range(2):
        bars = sorted((start, end) for d, start, end, _, _ in sim.timeline.bars if d == device)
        assert bars
        assert all(prev_end <= start for (_, prev_end), (start, _) in itertools.pairwise(bars))


def test_check_then_run_races_on_a_burst() -> None:
    result, _ = simulate(burst(), H100S, "check-then-run", seed=0)
    assert result.oom_events > 0  # concurrent starts all saw the same free memory
    assert result.terminal_violations == 0


def test_retry_on_oom_shrinks_and_retries() -> None:
    result, sim = simulate(burst(), RTX, "retry-on-oom", seed=0)
    assert result.oom_events > 0
    assert result.runs > result.requests - result.rejected_upfront
    retried = [j for j in sim.jobs if j.attempts > 1]
    assert retried
    assert all(j.run is not None and j.run.level != "none" for j in retried if j.attempts > 1)


def test_admission_core_crashes_lose_nothing() -> None:
    faults = FaultSpec(core=3600.0)  # about one crash a second
    result, sim = simulate(burst(20), H100S, "vramgate", seed=2, faults=faults)
    assert result.faults["admission_crash"] > 5
    assert result.completed == result.requests
    assert result.leaked_leases == 0
    assert result.terminal_violations == 0
    assert result.overcommits == 0
    assert sim.policy.lost_leases == 0  # type: ignore[attr-defined]


def test_priorities_wait_less_under_vramgate() -> None:
    records = [Arrival(at=float(i), request=small(i, priority=5 if i % 4 == 0 else 0, frames=121)) for i in range(40)]
    result, _ = simulate(trace(*records), RTX, "vramgate", seed=0)
    waits = result.p95_wait_by_priority
    assert waits["5"] < waits["0"]


def test_unknown_policy() -> None:
    from vramgate.errors import InvalidParameter
    from vramgate.simulate.run import policy_names

    with pytest.raises(InvalidParameter, match="unknown policy"):
        policy_names("fifo")
    assert policy_names("all")[0] == "vramgate"
    assert policy_names("serial,seed") == ("serial", "seed")
