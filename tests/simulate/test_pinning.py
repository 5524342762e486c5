"""Pinned reservations in the simulator: outside consumers that arrive after a start cannot take a run's memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from vramgate.messages.trace import Arrival
from vramgate.policy.estimate import Estimator, copy_estimator
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG
from vramgate.policy.optimize import Optimizer
from vramgate.simulate import load_trace, parse_devices, simulate
from vramgate.simulate.engine import Simulation
from vramgate.simulate.gate import VramgatePolicy

from ._helpers import A14B_FLAGS, StartAll, arrivals, outside, small, trace

H100 = DEFAULT_GPU_CATALOG.get("H100-80GB")
RTX = DEFAULT_GPU_CATALOG.get("RTX4090-24GB")
ESTIMATOR = Estimator()
TRACES = Path(__file__).resolve().parents[2] / "bench" / "traces"


def run(records: list, policy: StartAll) -> Simulation:  # type: ignore[type-arg]
    sim = Simulation(trace(*records), [H100], policy, estimator=ESTIMATOR, load_weights=False)  # type: ignore[arg-type]
    sim.run()
    return sim


def _race(peak_mb: int, grab_mb: int) -> list:  # type: ignore[type-arg]
    # The run starts at 0 and allocates at 5 s (5 % of 100 s); the other process arrives at 1 s.
    return [*arrivals(1, true_seconds=100.0, true_peak_mb=peak_mb), outside(1.0, 0, grab_mb, 50.0)]


def test_an_outside_consumer_after_the_start_takes_an_unpinned_runs_memory() -> None:
    sim = run(_race(60_000, 30_000), StartAll(planned_mb=60_000))
    assert sim.jobs[0].state == "failed"
    assert sim.jobs[0].run is not None
    assert sim.jobs[0].run.outcome == "oom"
    assert sim.counters.oom_events == 1
    assert sim.counters.outside_denied_mb == 0


def test_a_pinned_run_keeps_its_memory_and_the_outside_consumer_is_refused() -> None:
    policy = StartAll(planned_mb=60_000, pin=True)
    sim = run(_race(60_000, 30_000), policy)
    assert policy.ended == [("r0", "ok", pytest.approx(100.0))]
    assert sim.counters.oom_events == 0
    assert sim.counters.outside_denied_mb == 30_000
    assert sim.counters.pin_failures == 0
    assert sim.leaked_allocations() == 0
    assert sim.gpus[0].pins() == {}


def test_an_outside_consumer_that_fits_beside_the_pin_is_served() -> None:
    exact = H100.memory_mib - 512 - 60_000  # what the pin leaves, to the MiB
    sim = run(_race(60_000, exact), StartAll(planned_mb=60_000, pin=True))
    assert sim.counters.outside_denied_mb == 0
    assert sim.counters.oom_events == 0
    sim = run(_race(60_000, exact + 1), StartAll(planned_mb=60_000, pin=True))
    assert sim.counters.outside_denied_mb == exact + 1
    assert sim.counters.oom_events == 0


def test_a_true_peak_above_the_pin_still_runs_out_when_the_rest_is_taken() -> None:
    exact = H100.memory_mib - 512 - 60_000
    sim = run(_race(60_001, exact), StartAll(planned_mb=60_000, pin=True))
    assert sim.counters.oom_events == 1  # one MiB above the reservation, and nothing else free
    sim = run(_race(60_001, exact - 1), StartAll(planned_mb=60_000, pin=True))
    assert sim.counters.oom_events == 0  # the one MiB above the pin is free
    assert sim.leaked_allocations() == 0


def test_a_pin_that_does_not_fit_at_the_start_is_not_taken() -> None:
    records = [outside(0.0, 0, 30_000, 500.0), *arrivals(1, every=0.0, true_seconds=10.0, true_peak_mb=1_000)]
    records[1] = Arrival(at=0.5, request=small(0), true_seconds=10.0, true_peak_mb=1_000)
    policy = StartAll(planned_mb=60_000, pin=True)
    sim = run(records, policy)
    assert sim.counters.pin_failures == 1
    assert policy.ended == [("r0", "ok", pytest.approx(10.5))]  # it ran unprotected (and fitted)
    assert sim.leaked_allocations() == 0


def test_samples_show_a_pin_as_the_systems_own_memory() -> None:
    policy = StartAll(planned_mb=60_000, pin=True)
    sim = Simulation(trace(*_race(60_000, 30_000)), [H100], policy, estimator=ESTIMATOR, load_weights=False)  # type: ignore[arg-type]
    policy.attach(sim)
    job = sim.jobs[0]
    sim.start(job, (0,), sim.as_given(job), 60_000, pin=True)
    sim._refresh_samples()
    assert sim.gpus[0].pins() == {"r0": 60_000}
    assert sim.measured_other_mb(0) == 512  # the context only: the pin is not someone else's


def _vramgate(records: list, *, pin: bool):  # type: ignore[no-untyped-def,type-arg]
    devices = [RTX]
    # The policy learns on its own estimator (an OOM teaches it more VRAM), as make_policy gives it.
    policy = VramgatePolicy(Optimizer(copy_estimator(ESTIMATOR)), pin=pin)
    sim = Simulation(trace(*records), devices, policy, estimator=ESTIMATOR)
    sim.run()
    return sim


def test_the_vramgate_policy_pins_what_it_admits() -> None:
    request = small(0, model="t2v-A14B", width=1280, height=720, frames=81, steps=40, options=A14B_FLAGS)
    first = _vramgate([Arrival(at=0.0, request=request)], pin=True)
    run_ = first.jobs[0].run
    assert run_ is not None
    assert run_.outcome == "ok"
    reservation, peak = run_.planned_mb, run_.true_peak_mb
    # Another process asks, a second after admission, for all but one MiB of what the run will need.
    grab = RTX.memory_mib - 512 - peak + 1
    records = [Arrival(at=0.0, request=request), outside(1.0, 0, grab, 10.0 * run_.work)]
    unpinned = _vramgate(records, pin=False)
    assert unpinned.counters.oom_events == 1
    assert unpinned.counters.outside_denied_mb == 0
    pinned = _vramgate(records, pin=True)
    assert pinned.counters.oom_events == 0
    assert pinned.jobs[0].state == "completed"
    assert pinned.counters.outside_denied_mb == (grab if grab > RTX.memory_mib - 512 - reservation else 0)


def test_the_day_trace_has_no_oom_with_pinning() -> None:
    specs = parse_devices("2xH100-80GB,RTX4090-24GB")
    result, sim = simulate(load_trace(TRACES / "day-diurnal.jsonl"), specs, "vramgate", seed=0)
    assert result.oom_events == 0
    assert result.overcommits == 0
    assert result.leaked_leases == 0
    assert result.completed == result.requests
    assert all(gpu.pins() == {} for gpu in sim.gpus)
