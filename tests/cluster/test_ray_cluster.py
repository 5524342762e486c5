"""vramgate on a real local Ray cluster (separate raylets, never a mock of Ray), in a loopback-only namespace.

Skipped without the ``ray`` extra, and outside a loopback-only network namespace (CI runs them inside one:
``unshare --net sh -c 'ip link set lo up && exec "$@"' -- pytest tests/cluster``). One cluster for the module.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import pytest

pytest.importorskip("ray", reason="needs the ray extra: pip install -e '.[ray]'")

from vramgate.cluster.demo import burst_requests, run_burst
from vramgate.cluster.local import LocalCluster, local_cluster
from vramgate.cluster.netns import is_loopback, other_interfaces, unshare_prefix
from vramgate.cluster.router import ClusterRouter
from vramgate.messages import GenerationRequest, decode_json
from vramgate.messages.cluster import NodeStatistics

pytestmark = pytest.mark.skipif(
    bool(other_interfaces()),
    reason=f"Ray runs only in a loopback-only network namespace: {unshare_prefix()} pytest tests/cluster",
)

TIME_SCALE = 0.0005


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with local_cluster(2) as local:
        yield local


def _budget_held(stats: list[NodeStatistics]) -> bool:
    return all(d.ledger.reserved_mb <= d.ledger.capacity_mb - d.ledger.margin_mb for s in stats for d in s.gate.devices)


async def _statistics(handles: dict[str, Any]) -> list[NodeStatistics]:
    answers = await asyncio.gather(*(h.statistics.remote() for h in handles.values()))
    return [decode_json(a, NodeStatistics) for a in answers]


def test_every_socket_ray_listens_on_is_loopback(cluster: LocalCluster) -> None:
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert len(listening) >= 5  # the GCS, two raylets, the object stores' and workers' servers
    assert [c.laddr for c in listening if not is_loopback(c.laddr.ip)] == []
    # Nothing but loopback can be reached from here at all.
    with pytest.raises(OSError, match="unreachable"), socket.create_connection(("192.0.2.1", 80), timeout=1):
        pass


def test_two_routers_racing_never_over_commit(cluster: LocalCluster) -> None:
    async def main() -> tuple[list[Any], list[NodeStatistics], list[bool]]:
        handles = await cluster.start_gates(time_scale=TIME_SCALE, queue_limit=8)
        routers = [ClusterRouter(handles, policy="vramgate", seed=i) for i in range(2)]
        burst = [r for r in burst_requests(20) if r.max_wait_s is None]
        held: list[bool] = []
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                held.append(_budget_held(await _statistics(handles)))
                await asyncio.sleep(0.05)

        watcher = asyncio.ensure_future(watch())
        try:
            bursts = (run_burst(router, burst, prefix=f"router{i}") for i, router in enumerate(routers))
            reports = await asyncio.gather(*bursts)
        finally:
            done.set()
            await watcher
        final = await _statistics(handles)
        LocalCluster.stop_gates(handles)
        return list(reports), final, held

    reports, final, held = asyncio.run(main())
    for report in reports:
        assert report.violations == 0
        assert report.over_commits == 0
        assert report.completed + report.rejected == report.requests
        assert report.rejected == 1  # the request no device here can hold
    assert len(held) > 3
    assert all(held)
    # Both nodes worked for both routers, and each gate ran what it took.
    assert sum(s.gate.completed for s in final) == sum(r.completed for r in reports)
    assert all(s.gate.completed > 0 and s.over_commits == 0 for s in final)


def test_a_node_killed_mid_burst_loses_no_request(cluster: LocalCluster) -> None:
    async def main() -> Any:
        handles = await cluster.start_gates(time_scale=TIME_SCALE * 4, queue_limit=8)
        router = ClusterRouter(handles, policy="vramgate")
        burst = [GenerationRequest(model="ti2v-5B", width=1280, height=704, frames=121, steps=50)] * 12
        report = await run_burst(router, burst, kill=(cluster, "node-2"), kill_after=2)
        LocalCluster.stop_gates({n: h for n, h in handles.items() if n not in router.dead})
        return report, router

    try:
        report, router = asyncio.run(main())
    finally:
        if "node-2" not in cluster.raylets:
            cluster.add_node("node-2")
    assert report.killed == "node-2"
    assert router.dead == {"node-2"}
    assert report.violations == 0  # every request ended exactly once for the client
    assert report.completed == report.requests  # re-routed to node-1, under the same id
    assert report.rerouted > 0
    assert report.per_node.get("node-1", 0) > 0
    assert sum(report.per_node.values()) == report.completed


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Serve's own use of deprecated pydantic calls
def test_a_serve_deployment_of_gates_answers_over_http_on_loopback(cluster: LocalCluster) -> None:
    import httpx
    from ray import serve

    from vramgate.cluster.serve import gate_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        app = gate_app(("RTX4090-24GB",), replicas=2, queue_limit=1, time_scale=TIME_SCALE, min_run_s=1.5)
        serve.run(app, name="vramgate", route_prefix="/v1/generations")
        small = {"model": "ti2v-5B", "width": 1280, "height": 704, "frames": 121, "steps": 50}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            ok = client.post("/v1/generations", json=small)
            assert ok.status_code == 200, ok.text
            assert ok.json()["state"] == "completed"
            bad = client.post("/v1/generations", json={**small, "width": 0})
            assert bad.status_code == 422
            assert bad.json()["path"] == "$.width"
            # A burst past both gates' room (a run and one waiting each): the gates answer 429 with Retry-After.
            with ThreadPoolExecutor(max_workers=10) as pool:
                answers = list(pool.map(lambda _: client.post("/v1/generations", json=small), range(10)))
        codes = sorted(answer.status_code for answer in answers)
        assert set(codes) == {200, 429}, codes
        # One gate holds at most two (a run and one waiting): more than two accepted means both replicas took work.
        assert codes.count(200) >= 3
        for answer in answers:
            if answer.status_code == 429:
                assert int(answer.headers["Retry-After"]) >= 1
                assert answer.json()["error"] == "queue_full"
        listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert port in {c.laddr.port for c in listening}
        # The proxy binds loopback as told. Serve's replicas bind their inter-deployment gRPC server to "[::]:0"
        # whatever they are told (ray/serve/_private/replica.py): the one exception, and why Ray runs here only
        # in a loopback-only namespace (and why operators firewall every node).
        wide = [(c.laddr, psutil.Process(c.pid).name()) for c in listening if not is_loopback(c.laddr.ip)]
        assert {name for _, name in wide} <= {"ray::ServeReplica:vramgate:vramgate"}, wide
        assert len(wide) <= 2  # one per replica
    finally:
        serve.shutdown()
