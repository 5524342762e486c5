"""A local Ray cluster of several raylets, each a node with its own simulated GPUs and its own node gate.

For the demo and the tests. It starts only in a loopback-only network namespace (:mod:`vramgate.cluster.netns`),
with no dashboard, and stops every raylet it started on exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vramgate.cluster.netns import require_loopback_only
from vramgate.cluster.node import node_gate_actor

#: The simulated GPUs of the demo's nodes, in turn.
NODE_GPUS = (("RTX4090-24GB",), ("H100-80GB",))


def node_resource(name: str) -> str:
    """The custom resource that pins a node gate to its raylet."""
    return f"vramgate-{name}"


class LocalCluster:
    """A running local cluster: ``gpus`` maps each node's name to its simulated GPUs."""

    def __init__(self, cluster: Any, gpus: dict[str, tuple[str, ...]]) -> None:
        self.cluster = cluster
        self.gpus = gpus
        self.raylets: dict[str, Any] = {}

    def add_node(self, name: str) -> None:
        """Start the node's raylet (one CPU; its resource places its gate there)."""
        self.raylets[name] = self.cluster.add_node(num_cpus=1, resources={node_resource(name): 1})

    def kill_node(self, name: str) -> None:
        """Kill the node's raylet and everything on it at once (no graceful shutdown)."""
        self.cluster.remove_node(self.raylets.pop(name), allow_graceful=False)

    async def start_gates(
        self, *, time_scale: float, queue_limit: int = 16, log_dir: Path | None = None, tag: str = ""
    ) -> dict[str, Any]:
        """A fresh node gate on every live node; returns name -> actor handle once every gate is open."""
        actor = node_gate_actor()
        handles: dict[str, Any] = {}
        for name in self.raylets:
            log_path = str(log_dir / f"{tag}{name}.jsonl") if log_dir is not None else None
            handles[name] = actor.options(resources={node_resource(name): 1}).remote(
                name, self.gpus[name], time_scale=time_scale, queue_limit=queue_limit, log_path=log_path
            )
        await asyncio.gather(*(handle.start.remote() for handle in handles.values()))
        return handles

    @staticmethod
    def stop_gates(handles: dict[str, Any]) -> None:
        import ray

        for handle in handles.values():
            ray.kill(handle, no_restart=True)


@contextmanager
def local_cluster(nodes: int, gpus: Sequence[tuple[str, ...]] = NODE_GPUS) -> Iterator[LocalCluster]:
    """Start a head (no dashboard, one CPU for routers) and ``nodes`` raylets; stop them all on exit."""
    require_loopback_only()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray.cluster_utils import Cluster

    cluster: Any = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        names = {f"node-{i + 1}": tuple(gpus[i % len(gpus)]) for i in range(nodes)}
        local = LocalCluster(cluster, names)
        for name in names:
            local.add_node(name)
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
        try:
            yield local
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()
