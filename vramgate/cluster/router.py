"""A router across node gates on Ray: the memory-aware one, and the random and power-of-two baselines.

The memory-aware router asks every live node for a quote, ranks them with :class:`RouterCore` (expected
completion, counting its own unseen requests), and asks each in turn to take the request within its expected
start; when every node declines it raises :class:`~vramgate.errors.QueueFull` with a retry-after. A node that
dies (its actor or its raylet) takes its leases with it; its requests in flight are routed again under the same
id (at least once), and the caller gets exactly one :class:`RouteOutcome` per request. Each decision is logged.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vramgate.cluster.routing import RouterCore, pow2_order, random_order, retry_after, worth_trying
from vramgate.errors import QueueFull
from vramgate.messages import GenerationRequest, Message, decode_json, encode_json
from vramgate.messages.cluster import NodeAccepted, NodeResult, NodeStatistics, RouteDecision, RouteOutcome
from vramgate.messages.quote import Quote, SubmitDeclined

POLICIES = ("vramgate", "random", "pow2")


class ClusterRouter:
    """Routes requests to node gates (``nodes``: name -> Ray actor handle of a :class:`NodeGate`).

    ``policy`` is ``vramgate`` (memory-aware), ``random`` or ``pow2``; ``log_path`` appends the router's
    decisions as JSON Lines. Several routers may share the same nodes.
    """

    def __init__(
        self,
        nodes: Mapping[str, Any],
        *,
        policy: str = "vramgate",
        seed: int = 0,
        log_path: str | Path | None = None,
        quote_timeout_s: float = 10.0,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.nodes = dict(nodes)
        self.policy = policy
        self.core = RouterCore()
        self.dead: set[str] = set()
        self.rerouted: set[str] = set()
        #: The most over-commits each node reported with a result (a grant past a device's budget: never > 0).
        self.over_commits: dict[str, int] = {}
        self.quote_timeout_s = quote_timeout_s
        self._rng = random.Random(seed)
        self._log = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115 - closed by close()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _record(self, message: Message) -> None:
        if self._log is not None:
            self._log.write(encode_json(message) + b"\n")
            self._log.flush()

    def _lost(self, node: str) -> None:
        if node not in self.dead:
            self.dead.add(node)
            self.rerouted.update(self.core.node_lost(node))

    async def _call(self, node: str, method: str, *args: Any, timeout: float | None = None) -> bytes | None:
        """Call a node's method; ``None`` (and the node counted dead) when its actor or its node is gone."""
        from ray.exceptions import RayError

        try:
            ref = getattr(self.nodes[node], method).remote(*args)
            answer: bytes = await (asyncio.wait_for(ref, timeout) if timeout is not None else ref)
        except (RayError, asyncio.TimeoutError):
            self._lost(node)
            return None
        return answer

    async def _quotes(self, alive: list[str], payload: bytes) -> dict[str, Quote]:
        answers = await asyncio.gather(*(self._call(n, "quote", payload, timeout=self.quote_timeout_s) for n in alive))
        return {n: decode_json(a, Quote) for n, a in zip(alive, answers, strict=True) if a is not None}

    async def _load(self, alive: list[str]) -> dict[str, int]:
        answers = await asyncio.gather(*(self._call(n, "statistics", timeout=self.quote_timeout_s) for n in alive))
        load: dict[str, int] = {}
        for node, answer in zip(alive, answers, strict=True):
            if answer is not None:
                stats = decode_json(answer, NodeStatistics).gate
                load[node] = stats.queue_length + stats.running
        return load

    async def route(self, request: GenerationRequest) -> RouteOutcome:
        """Route one request (it must carry a ``request_id``) to its end; raise ``QueueFull`` when every node
        declines it (nothing is kept anywhere)."""
        rid = request.request_id
        if not rid:
            raise ValueError("a routed request needs a request_id (it keeps the request's identity across nodes)")
        payload = encode_json(request)
        attempt = 0
        while True:
            alive = [n for n in self.nodes if n not in self.dead]
            if not alive:
                return self._outcome(rid, "failed", "", "no node is alive")
            order: list[tuple[str, float | None, float]]
            expected: dict[str, float] = {}
            unseen: dict[str, int] = {}
            declined: dict[str, str] = {}
            retries: dict[str, float] = {}
            if self.policy == "vramgate":
                mark = self.core.mark()
                quotes = await self._quotes(alive, payload)
                ranked = self.core.rank(quotes, mark, max_wait_s=request.max_wait_s)
                tried = worth_trying(ranked)
                order = [(r.node, r.within_s, quotes[r.node].run_s) for r in tried]
                for r in ranked[len(tried) :]:
                    if r.full:
                        declined[r.node] = "queue_full"
                        retries[r.node] = quotes[r.node].retry_after_s
                expected = {r.node: round(r.expected_s, 3) for r in ranked}
                unseen = {r.node: r.unseen for r in ranked if r.unseen}
                for node, quote in quotes.items():
                    if not quote.fits:
                        declined[node] = f"does_not_fit: {quote.reason}"
            elif self.policy == "random":
                order = [(n, None, 0.0) for n in random_order(alive, self._rng)]
            else:
                order = [(n, None, 0.0) for n in pow2_order(alive, await self._load(alive), self._rng)]
            decision = functools.partial(
                RouteDecision,
                request_id=rid,
                router=self.policy,
                order=tuple(n for n, _, _ in order),
                expected_s=expected,
                unseen=unseen,
                declined=declined,
                attempt=attempt,
            )
            lost_one = False
            bar = float("inf")  # after a full queue: no node expected to finish later than waiting for its room
            for node, within, run_s in order:
                if expected.get(node, 0.0) > bar:
                    declined[node] = "later_than_waiting"
                    continue
                self.core.dispatched(rid, node, run_s)
                answer = await self._call(node, "submit", payload, within)
                if answer is None:
                    lost_one = True
                    continue
                decoded = decode_json(answer, NodeAccepted | SubmitDeclined)  # type: ignore[arg-type]
                if isinstance(decoded, SubmitDeclined):
                    self.core.done(rid)
                    declined[node] = decoded.code
                    retries[node] = decoded.retry_after_s
                    if decoded.code == "queue_full" and node in expected:
                        bar = min(bar, expected[node] + decoded.retry_after_s)
                    continue
                self.core.accepted(rid)
                self._record(decision(chosen=node))
                result = await self._call(node, "result", rid)
                if result is None:  # the node died with the request: route it again, same id
                    attempt += 1
                    lost_one = True
                    break
                self.core.done(rid)
                ended = decode_json(result, NodeResult)
                self.over_commits[node] = max(self.over_commits.get(node, 0), ended.over_commits)
                return self._outcome(rid, ended.state, node, ended.reason, reroutes=attempt)
            else:
                if lost_one:
                    continue
                if declined and all(code.startswith("does_not_fit") for code in declined.values()):
                    reason = "; ".join(f"{n}: {c}" for n, c in sorted(declined.items()))
                    return self._outcome(rid, "rejected", "", reason, reroutes=attempt)
                wait = retry_after(retries or {"": 1.0})
                self._record(decision(retry_after_s=wait))
                raise QueueFull(wait, queue_length=len(declined))

    def _outcome(self, rid: str, state: Any, node: str, reason: str, *, reroutes: int = 0) -> RouteOutcome:
        outcome = RouteOutcome(
            request_id=rid, router=self.policy, state=state, node=node, reason=reason, reroutes=reroutes
        )
        self._record(outcome)
        return outcome
