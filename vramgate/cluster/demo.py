"""``vramgate cluster demo``: a mixed burst through the memory-aware router, random and power-of-two routing.

A local Ray cluster of ``nodes`` raylets (a simulated RTX 4090 and a simulated H100 in turn), a fresh node gate on
each for each router, the same burst for each router in turn (compressed time), optionally one node killed
mid-burst (and a fresh one started for the next router). Each request's client retries a ``QueueFull`` after its
retry-after. Per router: requests, completed, makespan, over-commits, terminal-state violations, re-routed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from vramgate.cluster.local import LocalCluster, local_cluster
from vramgate.cluster.router import POLICIES, ClusterRouter
from vramgate.errors import QueueFull
from vramgate.messages import GenerationRequest
from vramgate.messages.cluster import RouteOutcome


class RouterReport(msgspec.Struct, frozen=True, kw_only=True):
    """One router's burst: what ended how, how long it took, and the invariants checked."""

    router: str
    requests: int
    completed: int
    rejected: int
    failed: int
    other: int
    makespan_s: float
    over_commits: int
    violations: int
    rerouted: int
    queue_full_answers: int
    per_node: dict[str, int]
    killed: str = ""


def burst_requests(count: int) -> list[GenerationRequest]:
    """The demo's mixed burst (the shipped 20 requests, repeated), without ids."""
    from vramgate.demo import demo_requests

    base = demo_requests()
    return [base[i % len(base)] for i in range(count)]


async def _client(router: ClusterRouter, request: GenerationRequest, retries: list[int]) -> RouteOutcome:
    """A client: send, and on ``QueueFull`` wait its retry-after and send again (as a 429's client would)."""
    while True:
        try:
            return await router.route(request)
        except QueueFull as full:
            retries[0] += 1
            await asyncio.sleep(min(2.0, max(0.05, full.retry_after_s)))


async def run_burst(
    router: ClusterRouter,
    requests: Sequence[GenerationRequest],
    *,
    kill: tuple[LocalCluster, str] | None = None,
    kill_after: int = 0,
    prefix: str = "",
) -> RouterReport:
    """Send ``requests`` at once through ``router`` (ids ``<prefix or policy>-000``...); kill ``kill``'s node
    after ``kill_after`` have ended."""
    retries = [0]
    started = time.monotonic()
    outcomes: list[RouteOutcome] = []
    ids = [f"{prefix or router.policy}-{i:03d}" for i in range(len(requests))]
    tasks = [
        asyncio.ensure_future(_client(router, msgspec.structs.replace(req, request_id=rid), retries))
        for req, rid in zip(requests, ids, strict=True)
    ]
    killed = ""
    for done in asyncio.as_completed(tasks):
        outcomes.append(await done)
        if kill is not None and not killed and len(outcomes) >= kill_after:
            killed = kill[1]
            kill[0].kill_node(killed)
    makespan = time.monotonic() - started
    by_id: dict[str, int] = {}
    for outcome in outcomes:
        by_id[outcome.request_id] = by_id.get(outcome.request_id, 0) + 1
    violations = sum(1 for rid in ids if by_id.get(rid, 0) != 1)
    states = [o.state for o in outcomes]
    per_node: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.state == "completed":
            per_node[outcome.node] = per_node.get(outcome.node, 0) + 1
    counted = states.count("completed") + states.count("rejected") + states.count("failed")
    return RouterReport(
        router=router.policy,
        requests=len(requests),
        completed=states.count("completed"),
        rejected=states.count("rejected"),
        failed=states.count("failed"),
        other=len(states) - counted,
        makespan_s=round(makespan, 2),
        over_commits=sum(router.over_commits.values()),
        violations=violations,
        rerouted=len(router.rerouted),
        queue_full_answers=retries[0],
        per_node=dict(sorted(per_node.items())),
        killed=killed,
    )


async def _demo(
    local: LocalCluster,
    *,
    requests: int,
    kill_node: bool,
    time_scale: float,
    log_dir: Path,
    routers: Sequence[str],
) -> list[RouterReport]:
    burst = burst_requests(requests)
    reports: list[RouterReport] = []
    victim = sorted(local.gpus)[0]
    for policy in routers:
        if victim not in local.raylets:
            local.add_node(victim)  # in the main thread: a raylet sets signal handlers
        handles = await local.start_gates(time_scale=time_scale, log_dir=log_dir, tag=f"{policy}-")
        router = ClusterRouter(handles, policy=policy, seed=0, log_path=log_dir / f"router-{policy}.jsonl")
        try:
            kill = (local, victim) if kill_node else None
            reports.append(await run_burst(router, burst, kill=kill, kill_after=max(1, requests // 4)))
        finally:
            router.close()
            LocalCluster.stop_gates({n: h for n, h in handles.items() if n not in router.dead})
    return reports


def run_cluster_demo(
    *,
    nodes: int = 2,
    requests: int = 40,
    kill_node: bool = False,
    time_scale: float = 0.004,
    log_dir: str | Path = "vramgate-cluster-logs",
    routers: Sequence[str] = POLICIES,
) -> list[RouterReport]:
    """Start the local cluster, run the burst through each router, stop the cluster; one report per router."""
    logs = Path(log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    with local_cluster(nodes) as local:
        return asyncio.run(
            _demo(local, requests=requests, kill_node=kill_node, time_scale=time_scale, log_dir=logs, routers=routers)
        )
