"""Ray Serve: a deployment whose replicas each embed a node gate, and a memory-aware request router.

Each replica owns its node's GPUs (whole GPUs: ``ray_actor_options={"num_gpus": N}`` on real ones) and hosts a
:class:`~vramgate.cluster.node.NodeGate`; it answers ``POST`` with a JSON ``GenerationRequest`` by running it to
its end (200 with the :class:`~vramgate.messages.cluster.NodeResult`), 422 for bad input or a request that fits
no device there, and 429 with ``Retry-After`` when its gate's queue is full. ``max_ongoing_requests`` is set
above the gate's queue limit, so that the gate, not Serve, decides what waits. :class:`MemoryAwareRouter` ranks
replicas by their gates' load per device (from ``record_routing_stats``) and the requests it has sent them.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, RequestRouter, RunningReplica

from vramgate.cluster.node import NodeGate
from vramgate.cluster.routing import ReplicaLoad, rank_replicas
from vramgate.errors import DecodeError
from vramgate.messages import GenerationRequest, decode_json, encode_json
from vramgate.messages.cluster import NodeAccepted, NodeResult, NodeStatistics
from vramgate.messages.quote import SubmitDeclined


class MemoryAwareRouter(FIFOMixin, RequestRouter):
    """Serve's request router for node-gate replicas: least load per device first, counting its own requests."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._in_flight: dict[str, int] = {}
        self._sent: dict[str, str] = {}

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        loads = {rid: _load(replica.routing_stats) for rid, replica in by_id.items()}
        order = rank_replicas(loads, self._in_flight)
        return [[by_id[rid]] for rid in order]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        key = replica_id.unique_id
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        self._sent[pending_request.metadata.internal_request_id] = key

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        key = self._sent.pop(internal_request_id, replica_id.unique_id)
        self._in_flight[key] = max(0, self._in_flight.get(key, 0) - 1)


def _load(stats: dict[str, Any] | None) -> ReplicaLoad | None:
    if not stats or "devices" not in stats:
        return None
    return ReplicaLoad(
        waiting=int(stats.get("queue_length", 0)) + int(stats.get("running", 0)),
        devices=max(1, int(stats["devices"])),
        free_mb=int(stats.get("free_mb", 0)),
    )


class GateReplica:
    """One replica: a node gate on ``gpus`` (simulated here), answering HTTP requests."""

    def __init__(self, gpus: Sequence[str], queue_limit: int, time_scale: float, min_run_s: float) -> None:
        self.node = NodeGate(
            f"replica-{secrets.token_hex(4)}", gpus, time_scale=time_scale, queue_limit=queue_limit, min_run_s=min_run_s
        )

    async def record_routing_stats(self) -> dict[str, Any]:
        await self.node.start()
        stats = decode_json(await self.node.statistics(), NodeStatistics).gate
        return {
            "queue_length": stats.queue_length,
            "running": stats.running,
            "devices": len(stats.devices),
            "free_mb": max((d.ledger.free_mb for d in stats.devices), default=0),
        }

    async def __call__(self, http_request: Any) -> Any:
        from starlette.responses import JSONResponse

        await self.node.start()
        body = await http_request.body()
        try:
            request = decode_json(body, GenerationRequest)
        except DecodeError as error:
            return JSONResponse({"error": "bad_request", "detail": error.reason, "path": error.path}, status_code=422)
        if not request.request_id:
            import msgspec

            request = msgspec.structs.replace(request, request_id=f"s{secrets.token_hex(8)}")
        answer = decode_json(await self.node.submit(encode_json(request), None), NodeAccepted | SubmitDeclined)  # type: ignore[arg-type]
        if isinstance(answer, SubmitDeclined):
            if answer.code == "queue_full":
                retry = max(1, math.ceil(answer.retry_after_s))
                content = {"error": "queue_full", "detail": answer.reason, "retry_after_s": answer.retry_after_s}
                return JSONResponse(content, status_code=429, headers={"Retry-After": str(retry)})
            return JSONResponse({"error": answer.code, "detail": answer.reason}, status_code=422)
        result = decode_json(await self.node.result(request.request_id), NodeResult)
        return JSONResponse({"request_id": result.request_id, "state": result.state, "reason": result.reason})


def gate_app(
    gpus: Sequence[str] = ("H100-80GB",),
    *,
    replicas: int = 2,
    queue_limit: int = 4,
    time_scale: float = 0.001,
    min_run_s: float = 0.2,
    stats_period_s: float = 0.5,
) -> Any:
    """The Serve application: ``replicas`` gate replicas behind :class:`MemoryAwareRouter`.

    ``max_ongoing_requests`` is the gate's queue limit plus its devices, twice over: the gate answers 429 first.
    """
    settings: dict[str, Any] = {
        "request_router_class": MemoryAwareRouter,
        "request_routing_stats_period_s": stats_period_s,
    }
    router = RequestRouterConfig(**settings)
    deployment: Any = serve.deployment(
        name="vramgate",
        num_replicas=replicas,
        max_ongoing_requests=2 * (queue_limit + len(gpus)),
        request_router_config=router,
        ray_actor_options={"num_cpus": 0},
    )(GateReplica)
    return deployment.bind(tuple(gpus), queue_limit, time_scale, min_run_s)
