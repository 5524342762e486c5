"""A node gate: one process that owns a node's GPUs and hosts an open gate, as a Ray actor.

:class:`NodeGate` is a plain class (it imports no Ray); :func:`node_gate_actor` makes it an async Ray actor. The
gate opens in a task that lives as long as the actor; every method runs on the actor's event loop. Methods take
and return JSON-encoded messages, decoded (validated) on arrival. Only this gate's ledger reserves the node's
memory; a lease dies with the process that holds it. Request ids are idempotent: a request the node already
took is never run twice, and its result is answered again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from vramgate._quote import Declined
from vramgate.config import AdmissionSettings, CleanupConfig, DevicesConfig, GateConfig
from vramgate.errors import BadRequest
from vramgate.gate import Gate, Ticket, open_gate
from vramgate.messages import GenerationRequest, Message, RequestAdmitted, decode_json, encode_json
from vramgate.messages.cluster import NodeAccepted, NodeResult, NodeStatistics
from vramgate.messages.quote import SubmitDeclined
from vramgate.runners import RunTruth, SimulatedRun


class NodeGate:
    """The gate of one node, with its simulated GPUs ``gpus`` (runs take estimated seconds times ``time_scale``).

    ``log_path`` records the node's own message log. Call :meth:`start` once before anything else.
    """

    def __init__(
        self,
        node: str,
        gpus: Sequence[str],
        *,
        time_scale: float = 0.01,
        min_run_s: float = 0.0,
        queue_limit: int = 16,
        log_path: str | None = None,
    ) -> None:
        self.node = node
        self.config = GateConfig(
            devices=DevicesConfig(use_real_gpus=False, simulate=tuple(gpus)),
            admission=AdmissionSettings(queue_limit=queue_limit, ram_budget="256GiB"),
            cleanup=CleanupConfig(after_run=False),
            log_path=log_path,
        )
        self.time_scale = time_scale
        self.min_run_s = min_run_s
        self._gate: Gate | None = None
        self._serving: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._runs: dict[str, asyncio.Task[NodeResult]] = {}
        self._states: dict[str, str] = {}
        self._over_commits = 0

    # ------------------------------------------------------------------ lifetime

    async def start(self) -> str:
        """Open the gate (in a task that lives as long as the actor) and return the node's name when it is open."""
        if self._serving is None:
            self._ready, self._stop = asyncio.Event(), asyncio.Event()
            self._serving = asyncio.get_running_loop().create_task(self._serve())
        assert self._ready is not None
        ready = asyncio.ensure_future(self._ready.wait())
        done, _ = await asyncio.wait({ready, self._serving}, return_when=asyncio.FIRST_COMPLETED)
        if self._serving in done:
            ready.cancel()
            self._serving.result()  # raises why the gate did not open
        return self.node

    async def stop(self) -> None:
        """Close the gate: requests still waiting end; the actor may then exit."""
        if self._stop is not None and self._serving is not None:
            self._stop.set()
            await self._serving

    async def _serve(self) -> None:
        assert self._ready is not None
        assert self._stop is not None
        async with open_gate(self.config) as gate:
            self._gate = gate
            gate.add_listener(self._watch)
            self._ready.set()
            await self._stop.wait()
        self._gate = None

    def _watch(self, message: Message) -> None:
        """Count over-commits: a grant after which some device's reservations exceed its budget."""
        if not isinstance(message, RequestAdmitted) or self._gate is None:
            return
        for device in self._gate.statistics().devices:
            ledger = device.ledger
            if ledger.reserved_mb > ledger.capacity_mb - ledger.margin_mb:
                self._over_commits += 1

    def _require(self) -> Gate:
        if self._gate is None:
            raise RuntimeError(f"node {self.node}: the gate is not open (call start first)")
        return self._gate

    # ------------------------------------------------------------------ what a router calls

    async def quote(self, request: bytes) -> bytes:
        """The node's :class:`~vramgate.messages.quote.Quote` for a request (JSON in, JSON out)."""
        gate = self._require()
        decoded = decode_json(request, GenerationRequest)
        return encode_json(await gate.quote(decoded, time_scale=self.time_scale, node=self.node))

    async def submit(self, request: bytes, within_s: float | None = 0.0) -> bytes:
        """Take the request if it is expected to start within ``within_s`` (``None``: whenever it fits and the
        queue has room): a :class:`NodeAccepted`, or a :class:`SubmitDeclined` having kept nothing."""
        gate = self._require()
        try:
            decoded = decode_json(request, GenerationRequest)
        except BadRequest as error:
            return encode_json(SubmitDeclined(request_id="", code="bad_request", reason=str(error)))
        rid = decoded.request_id
        if not rid:
            return encode_json(SubmitDeclined(request_id="", code="bad_request", reason="a request_id is required"))
        if rid in self._runs:
            return encode_json(NodeAccepted(request_id=rid, node=self.node, state=self._states.get(rid, "ended")))
        try:
            ticket = await gate.submit_or_decline(
                decoded, within_s=within_s, time_scale=self.time_scale, node=self.node
            )
        except Declined as declined:
            return encode_json(declined.declined)
        except BadRequest as error:
            return encode_json(SubmitDeclined(request_id=rid, code="bad_request", reason=str(error)))
        self._states[rid] = ticket.state
        self._runs[rid] = asyncio.get_running_loop().create_task(self._run(gate, ticket))
        return encode_json(NodeAccepted(request_id=rid, node=self.node, state=ticket.state))

    async def result(self, request_id: str) -> bytes:
        """Wait for a request this node took to end; its :class:`NodeResult`."""
        run = self._runs.get(request_id)
        if run is None:
            unknown = NodeResult(request_id=request_id, node=self.node, state="failed", reason="not taken here")
            return encode_json(unknown)
        return encode_json(await asyncio.shield(run))

    async def statistics(self) -> bytes:
        """The node's :class:`NodeStatistics`."""
        gate = self._require()
        return encode_json(NodeStatistics(node=self.node, gate=gate.statistics(), over_commits=self._over_commits))

    async def _run(self, gate: Gate, ticket: Ticket) -> NodeResult:
        rid = ticket.request_id
        runner = SimulatedRun(
            gate.clock, time_scale=self.time_scale, min_seconds=self.min_run_s, truth=RunTruth(gate.estimator)
        )
        ran_s = 0.0
        try:
            lease = await ticket.wait_admitted()
            self._states[rid] = "admitted"
            async with gate.hold(lease):
                started = gate.clock.now()
                await runner(lease)
                ran_s = gate.clock.now() - started
        except Exception:  # reported: the gate ended the ticket with the run's outcome
            if ticket.ended is None and ticket.lease is None:
                raise
        ended = await ticket.wait_ended()
        self._states[rid] = "ended"
        admitted = ticket.admitted
        return NodeResult(
            request_id=rid,
            node=self.node,
            state=ended.state,
            reason=ended.reason,
            devices=admitted.devices if admitted is not None else (),
            reservation_mb=admitted.reservation_mb if admitted is not None else 0,
            waited_s=admitted.waited_s if admitted is not None else 0.0,
            ran_s=ran_s,
            over_commits=self._over_commits,
        )


def node_gate_actor(**options: Any) -> Any:
    """:class:`NodeGate` as a Ray actor class (``options`` as for ``ray.remote``: ``resources`` to place it on a
    node; ``num_gpus`` whole GPUs only, all of the node's, when it owns real ones)."""
    import ray

    gpus = options.get("num_gpus", 0)
    if gpus and gpus != int(gpus):
        raise ValueError("a node gate owns whole GPUs: num_gpus must be a whole number")
    defaults: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0, "max_concurrency": 1000}
    return ray.remote(**(defaults | options))(NodeGate)
