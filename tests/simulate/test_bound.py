"""The speed-aware makespan bound: the fractional assignment of the work to GPU kinds, checked against answers
worked by hand, and against the simulated makespans it must bound."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest

from vramgate.simulate import compare, load_trace, parse_devices, simulate
from vramgate.simulate.bound import fractional_makespan
from vramgate.simulate.trace import Trace

TRACES = Path(__file__).resolve().parents[2] / "bench" / "traces"


def test_one_kind_is_the_work_over_the_devices() -> None:
    assert fractional_makespan([[100.0], [300.0]], [2]) == pytest.approx(200.0)


def test_two_kinds_split_the_work_where_each_is_fastest() -> None:
    # 100 s on the fast kind or 400 s on the slow one: 80 % fast, 20 % slow, both busy 80 s.
    assert fractional_makespan([[100.0, 400.0]], [1, 1]) == pytest.approx(80.0, rel=1e-6)
    # A request that runs only on the slow kind counts there in full.
    assert fractional_makespan([[math.inf, 50.0], [100.0, 400.0]], [1, 1]) == pytest.approx(
        (100.0 * 400.0 + 100.0 * 50.0) / 500.0, rel=1e-6
    )


def test_more_kinds_give_a_valid_bound_close_to_the_optimum() -> None:
    costs = [[90.0, 90.0, 90.0]] * 3  # the same speed everywhere: the optimum is 90 s
    found = fractional_makespan(costs, [1, 1, 1])
    assert found <= 90.0 + 1e-9
    assert found >= 0.98 * 90.0


def test_the_speed_aware_bound_bounds_the_simulated_makespans() -> None:
    trace = load_trace(TRACES / "mixed-hetero.jsonl")
    trace = Trace(arrivals=trace.arrivals[:30], outside=trace.outside)
    results = compare(
        trace,
        parse_devices("2xH100-80GB,2xRTX4090-24GB"),
        ("vramgate",),
        placements=("earliest_finish", "best_fit"),
    )
    assert [r.policy for r in results] == ["vramgate:earliest_finish", "vramgate:best_fit"]
    for result in results:
        assert result.completed == 30
        assert 0 < result.speed_bound_makespan_s <= result.makespan_s


def test_a_run_without_the_bound_measures_the_rest_the_same() -> None:
    trace = load_trace(TRACES / "mixed-hetero.jsonl")
    trace = Trace(arrivals=trace.arrivals[:20], outside=trace.outside)
    devices = parse_devices("1xH100-80GB,1xRTX4090-24GB")
    with_bound, _ = simulate(trace, devices, "vramgate", seed=3)
    without, _ = simulate(trace, devices, "vramgate", seed=3, bound=False)
    assert with_bound.speed_bound_makespan_s > 0
    assert without.speed_bound_makespan_s == 0.0
    same = {"wall_s": 0.0, "speed_bound_makespan_s": 0.0}
    assert msgspec.structs.replace(without, **same) == msgspec.structs.replace(with_bound, **same)
