"""The router's sans-io core: ranking by expected completion, counting its own in-flight requests; baselines."""

from __future__ import annotations

import random
import subprocess
import sys

from vramgate.cluster.routing import (
    ReplicaLoad,
    RouterCore,
    pow2_order,
    random_order,
    rank_replicas,
    retry_after,
    worth_trying,
)
from vramgate.messages.quote import Quote


def _quote(node: str, *, start_s: float = 0.0, run_s: float = 10.0, slots: int = 1, fits: bool = True) -> Quote:
    return Quote(
        request_id="r", fits=fits, start_s=start_s, run_s=run_s, finish_s=start_s + run_s, slots=slots, node=node
    )


def test_a_burst_of_simultaneous_quotes_spreads_by_expected_completion() -> None:
    # Every quote of the burst was taken before any request was sent: all see two idle nodes, "fast" twice as
    # fast. Counting its own unseen requests, the router sends about two thirds to "fast", not all 40.
    core = RouterCore()
    mark = core.mark()
    quotes = {"fast": _quote("fast", run_s=5.0), "slow": _quote("slow", run_s=10.0)}
    sent = {"fast": 0, "slow": 0}
    for i in range(40):
        best = core.rank(quotes, mark)[0]
        core.dispatched(f"r{i}", best.node, quotes[best.node].run_s)
        sent[best.node] += 1
    assert sent == {"fast": 27, "slow": 13}
    # Completion on each node is within one run of the other's.
    assert abs(sent["fast"] * 5.0 - sent["slow"] * 10.0) <= 10.0
    # A node with room for more runs at once shares the unseen work over its slots.
    wide = RouterCore()
    mark = wide.mark()
    wide_quotes = {"a": _quote("a", slots=4), "b": _quote("b", slots=1)}
    for i in range(10):
        best = wide.rank(wide_quotes, mark)[0]
        wide.dispatched(f"r{i}", best.node, 10.0)
    assert (wide.in_flight("a"), wide.in_flight("b")) == (8, 2)


def test_requests_accepted_before_a_quote_are_not_counted_twice() -> None:
    core = RouterCore()
    core.dispatched("r1", "a", 10.0)
    core.accepted("r1")
    mark = core.mark()  # a quote asked for now already sees r1 in the node's queue
    assert core.unseen("a", mark) == (0, 0.0)
    core.dispatched("r2", "a", 7.0)  # sent after the quote: unseen until accepted, and after it too for this quote
    core.accepted("r2")
    assert core.unseen("a", mark) == (1, 7.0)
    assert core.unseen("a", core.mark()) == (0, 0.0)
    ranked = core.rank({"a": _quote("a", start_s=2.0), "b": _quote("b", run_s=30.0)}, mark)
    assert [r.node for r in ranked] == ["a", "b"]
    assert ranked[0].expected_s == 12.0 + 7.0
    assert ranked[0].within_s == 2.0 + 7.0 + 2.5  # the start, the unseen work, and a quarter of the run's slack


def test_nodes_that_do_not_fit_are_left_out_and_ties_go_by_name() -> None:
    core = RouterCore()
    ranked = core.rank({"c": _quote("c"), "b": _quote("b"), "a": _quote("a", fits=False)}, core.mark())
    assert [r.node for r in ranked] == ["b", "c"]


def test_a_lost_node_returns_its_requests_in_flight_for_routing_again() -> None:
    core = RouterCore()
    core.dispatched("r1", "a", 1.0)
    core.dispatched("r2", "b", 1.0)
    core.dispatched("r3", "a", 1.0)
    core.accepted("r3")
    assert sorted(core.node_lost("a")) == ["r1", "r3"]
    assert core.in_flight() == 1
    core.done("r2")
    assert core.in_flight() == 0


def test_baselines_and_retry_after() -> None:
    nodes = ["a", "b", "c"]
    assert sorted(random_order(nodes, random.Random(0))) == nodes
    orders = {random_order(nodes, random.Random(seed))[0] for seed in range(30)}
    assert orders == set(nodes)
    for seed in range(30):
        order = pow2_order(nodes, {"a": 5, "b": 0, "c": 1}, random.Random(seed))
        assert sorted(order) == nodes
        assert order[0] != "a"  # of any two nodes, the busiest is never first
    assert pow2_order(["a"], {}, random.Random(0)) == ["a"]
    assert retry_after({"a": 3.0, "b": 1.5}) == 1.5
    assert retry_after({}) == 0.1


def test_the_core_and_the_gate_import_no_ray() -> None:
    code = (
        "import sys, vramgate, vramgate.gate, vramgate._quote, vramgate.cluster, vramgate.cluster.routing, "
        "vramgate.cli; print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_serve_replicas_rank_by_load_per_device_counting_the_router_s_own_requests() -> None:
    loads = {
        "a": ReplicaLoad(waiting=2, devices=1, free_mb=0),
        "b": ReplicaLoad(waiting=2, devices=2, free_mb=10_000),
        "c": None,  # no report yet
    }
    assert rank_replicas(loads, {}) == ["c", "b", "a"]
    # The router sent 3 to "c" since; its own count is the load until "c" reports.
    assert rank_replicas(loads, {"c": 3}) == ["b", "a", "c"]
    # A report older than the router's own requests does not hide them ("b" before "c": as loaded, more free).
    assert rank_replicas(loads, {"b": 6, "c": 3}) == ["a", "b", "c"]
    # Ties go to the most free memory.
    even = {"x": ReplicaLoad(1, 1, 5_000), "y": ReplicaLoad(1, 1, 9_000)}
    assert rank_replicas(even, {}) == ["y", "x"]


def test_a_wait_bound_puts_nodes_that_would_start_too_late_last_and_bounds_the_ask() -> None:
    core = RouterCore()
    quotes = {"soon": _quote("soon", start_s=5.0, run_s=40.0), "late": _quote("late", start_s=20.0, run_s=1.0)}
    mark = core.mark()
    assert [r.node for r in core.rank(quotes, mark)] == ["late", "soon"]  # 21 s against 45 s to completion
    bounded = core.rank(quotes, mark, max_wait_s=8.0)
    assert [r.node for r in bounded] == ["soon", "late"]
    assert [r.within_s for r in bounded] == [8.0, 8.0]  # "late" will decline: it cannot start within 8 s


def test_a_full_queue_counts_the_wait_for_room_and_stops_the_worse_nodes() -> None:
    core = RouterCore()
    fast_but_full = Quote(
        request_id="r", fits=True, run_s=2.0, finish_s=2.0, slots=1, queue_length=4, queue_limit=4, retry_after_s=3.0
    )
    quotes = {"h100": fast_but_full, "slow": _quote("slow", run_s=20.0), "mid": _quote("mid", run_s=4.0)}
    ranked = core.rank(quotes, core.mark())
    assert [(r.node, r.expected_s, r.full) for r in ranked] == [
        ("mid", 4.0, False),
        ("h100", 5.0, True),
        ("slow", 20.0, False),
    ]
    # Ask "mid"; if it declines, wait for the H100's room rather than run 20 s on "slow".
    assert [r.node for r in worth_trying(ranked)] == ["mid"]
