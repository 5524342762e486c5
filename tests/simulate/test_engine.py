from __future__ import annotations

import pytest

from vramgate.policy.estimate import Estimator
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG
from vramgate.simulate.engine import Simulation
from vramgate.simulate.faults import FaultSpec

from ._helpers import StartAll, arrivals, outside, trace

H100 = DEFAULT_GPU_CATALOG.get("H100-80GB")
ESTIMATOR = Estimator()


def run(records: list, policy: StartAll | None = None, **kw: object) -> tuple[Simulation, StartAll]:  # type: ignore[type-arg]
    policy = policy or StartAll()
    kw.setdefault("load_weights", False)  # compute and memory alone (tests/simulate/test_weights.py has the loads)
    sim = Simulation(trace(*records), [H100], policy, estimator=ESTIMATOR, **kw)  # type: ignore[arg-type]
    sim.run()
    return sim, policy


def test_one_run_takes_its_true_time() -> None:
    sim, policy = run(arrivals(1, true_seconds=100.0, true_peak_mb=1000))
    assert policy.ended == [("r0", "ok", pytest.approx(100.0))]
    assert sim.makespan == pytest.approx(100.0)
    assert sim.counters.useful_gpu_s == pytest.approx(100.0)
    assert sim.jobs[0].state == "completed"


def test_runs_sharing_a_gpu_share_its_compute() -> None:
    _, policy = run(arrivals(2, true_seconds=100.0, true_peak_mb=1000))
    assert [end for _, _, end in policy.ended] == [pytest.approx(200.0), pytest.approx(200.0)]
    # A third run arriving later slows the others from then on.
    _, policy = run(arrivals(2, every=50.0, true_seconds=100.0, true_peak_mb=1000))
    # r0 alone for 50 s (50 done), then both at half speed: r0 ends at 150, r1 (50 done) ends at 200.
    assert [(rid, end) for rid, _, end in policy.ended] == [("r0", pytest.approx(150.0)), ("r1", pytest.approx(200.0))]


def test_allocation_past_capacity_kills_the_run_that_made_it() -> None:
    sim, policy = run(arrivals(2, true_seconds=100.0, true_peak_mb=50_000))
    # Both reach 5 % of their work at t=10 (half speed); r0 allocates first, r1 runs out of memory then.
    assert policy.ended[0] == ("r1", "oom", pytest.approx(10.0))
    assert policy.ended[1] == ("r0", "ok", pytest.approx(105.0))
    assert sim.counters.oom_events == 1
    assert sim.counters.wasted_gpu_s == pytest.approx(5.0)
    assert sim.jobs[1].state == "failed"
    assert sim.leaked_allocations() == 0


def test_outside_consumers_take_memory_until_they_leave() -> None:
    records = [outside(0.0, 0, 70_000, 500.0), *arrivals(1, true_seconds=10.0, true_peak_mb=20_000)]
    _, policy = run(records)
    assert policy.ended == [("r0", "oom", pytest.approx(0.5))]
    later = [outside(0.0, 0, 70_000, 500.0)]
    from vramgate.messages.trace import Arrival

    from ._helpers import small

    later.append(Arrival(at=600.0, request=small(0), true_seconds=10.0, true_peak_mb=20_000))  # type: ignore[arg-type]
    _, policy = run(later)
    assert policy.ended == [("r0", "ok", pytest.approx(610.0))]


def test_an_outside_allocation_that_does_not_fit_fails_alone() -> None:
    records = [*arrivals(1, true_seconds=100.0, true_peak_mb=60_000), outside(50.0, 0, 30_000, 60.0)]
    sim, policy = run(records)
    assert policy.ended == [("r0", "ok", pytest.approx(100.0))]
    assert sim.counters.outside_denied_mb == 30_000


def test_the_planned_memory_is_checked_for_over_commits() -> None:
    sim, _ = run(arrivals(2, true_seconds=10.0, true_peak_mb=100), StartAll(planned_mb=50_000))
    assert sim.counters.overcommits == 1


def test_same_seed_same_events_other_seed_other_events() -> None:
    records = arrivals(20, every=30.0)  # no true figures: drawn from the estimate with noise
    first, _ = run(records, seed=3)
    again, _ = run(records, seed=3)
    other, _ = run(records, seed=4)
    assert first.digest == again.digest
    assert first.digest != other.digest
    assert [j.mem_ratio for j in first.jobs] == [j.mem_ratio for j in again.jobs]
    assert all(0.94 <= j.mem_ratio <= 1.06 for j in first.jobs)


def test_faults_crash_and_cancel_give_one_terminal_state_each() -> None:
    spec = FaultSpec(crash=0.5, cancel=0.5, cancel_mean_s=20.0)
    sim, _policy = run(arrivals(40, every=5.0, true_seconds=60.0, true_peak_mb=1000), seed=1, faults=spec)
    states = {j.state for j in sim.jobs}
    assert {"failed", "cancelled"} <= states
    assert all(j.terminals == 1 for j in sim.jobs)
    assert sim.counters.faults["run_crash"] > 0
    assert sim.counters.faults["client_cancel"] > 0
    assert sim.leaked_allocations() == 0


def test_bad_requests_are_rejected_up_front() -> None:
    from vramgate.messages.requests import GenerationRequest
    from vramgate.messages.trace import Arrival

    sim, policy = run([Arrival(at=0.0, request=GenerationRequest(model="no-such-model", width=64, height=64))])
    assert sim.jobs[0].state == "rejected"
    assert sim.rejected_upfront == 1
    assert policy.ended == []
