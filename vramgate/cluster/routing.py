"""Routing decisions, sans-io: rank nodes for a request, count this router's requests in flight, and baselines.

:class:`RouterCore` ranks the nodes that quoted a plan by expected completion: the quote's finish plus the run
time of this router's own requests on that node that the quote could not have seen (sent after it was taken,
or not yet accepted when it was), shared over the node's slots for the plan. Without that count, simultaneous
quotes that all see the same free node send a whole burst there. Time is the caller's: the core counts events.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from vramgate.messages.quote import Quote


class Ranked(NamedTuple):
    """A node that can take the request: expected seconds to completion, the unseen requests counted in it, the
    bound to ask it to start within, and whether its queue is full (its completion then counts the wait for room)."""

    node: str
    expected_s: float
    unseen: int
    within_s: float
    full: bool = False


class _InFlight(NamedTuple):
    node: str
    run_s: float
    accepted_at: int | None


class RouterCore:
    """Ranks nodes by expected completion, counting this router's in-flight requests.

    The caller takes :meth:`mark` before it asks nodes for quotes, ranks their answers with :meth:`rank`, and
    reports what happens: :meth:`dispatched` (sent to a node), :meth:`accepted` (the node took it; its later
    quotes count it), :meth:`done` (ended, or declined), :meth:`node_lost` (the requests to route again).
    ``slack`` widens the bound a node is asked to start within: a node may have moved since it quoted.
    """

    def __init__(self, *, slack: float = 0.25, min_slack_s: float = 0.5) -> None:
        self.slack = slack
        self.min_slack_s = min_slack_s
        self._seq = 0
        self._in_flight: dict[str, _InFlight] = {}

    def mark(self) -> int:
        """A mark for quotes asked for now."""
        self._seq += 1
        return self._seq

    def in_flight(self, node: str | None = None) -> int:
        """This router's requests in flight (on ``node``)."""
        return sum(1 for item in self._in_flight.values() if node is None or item.node == node)

    def unseen(self, node: str, mark: int) -> tuple[int, float]:
        """How many of this router's requests on ``node`` a quote taken at ``mark`` did not see, and their seconds."""
        count, seconds = 0, 0.0
        for item in self._in_flight.values():
            if item.node == node and (item.accepted_at is None or item.accepted_at > mark):
                count += 1
                seconds += item.run_s
        return count, seconds

    def rank(self, quotes: Mapping[str, Quote], mark: int, *, max_wait_s: float | None = None) -> list[Ranked]:
        """The nodes whose quote fits, best first (ties by name). A node whose queue is full ranks by its expected
        completion plus the wait for room: the caller tries the nodes before it, then waits rather than take a
        node expected to finish later (see :func:`worth_trying`).

        With the request's ``max_wait_s``, a node expected to start it later comes last, and no node is asked
        to take it past that bound (it would time out there; declined, it can be sent again later).
        """
        ranked: list[Ranked] = []
        for node, quote in quotes.items():
            if not quote.fits:
                continue
            count, seconds = self.unseen(node, mark)
            extra = seconds / max(1, quote.slots)
            expected = quote.finish_s + extra
            start = quote.start_s + extra
            within = start + max(self.min_slack_s, self.slack * quote.run_s)
            if max_wait_s is not None:
                within = min(within, max_wait_s)
            full = quote.queue_length >= quote.queue_limit > 0
            if full:
                expected += quote.retry_after_s
            ranked.append(Ranked(node, expected, count, within, full))
        ranked.sort(
            key=lambda r: (
                max_wait_s is not None and r.expected_s - quotes[r.node].run_s > max_wait_s,
                r.expected_s,
                r.node,
            )
        )
        return ranked

    def dispatched(self, request_id: str, node: str, run_s: float) -> None:
        self._in_flight[request_id] = _InFlight(node, run_s, None)

    def accepted(self, request_id: str) -> None:
        item = self._in_flight.get(request_id)
        if item is not None:
            self._seq += 1
            self._in_flight[request_id] = item._replace(accepted_at=self._seq)

    def done(self, request_id: str) -> None:
        self._in_flight.pop(request_id, None)

    def node_lost(self, node: str) -> list[str]:
        """Forget the requests in flight on ``node`` and return their ids (they are routed again)."""
        lost = [rid for rid, item in self._in_flight.items() if item.node == node]
        for rid in lost:
            del self._in_flight[rid]
        return lost


def worth_trying(ranked: Sequence[Ranked]) -> list[Ranked]:
    """The ranked nodes to ask, in order: those before the first whose queue is full (waiting for it is expected
    to end sooner than any node after it)."""
    tried: list[Ranked] = []
    for item in ranked:
        if item.full:
            break
        tried.append(item)
    return tried


def random_order(nodes: Sequence[str], rng: random.Random) -> list[str]:
    """Random routing: the nodes in a random order (the first is the choice; the rest, fallbacks on a decline)."""
    order = list(nodes)
    rng.shuffle(order)
    return order


def pow2_order(nodes: Sequence[str], load: Mapping[str, int], rng: random.Random) -> list[str]:
    """Power-of-two-choices: of two random nodes, the less loaded first; the rest after, by load."""
    if len(nodes) < 2:
        return list(nodes)
    pair = sorted(rng.sample(list(nodes), 2), key=lambda n: load.get(n, 0))  # a tie keeps the random order
    rest = sorted((n for n in nodes if n not in pair), key=lambda n: (load.get(n, 0), n))
    return pair + rest


def retry_after(declines: Mapping[str, float], *, floor_s: float = 0.1) -> float:
    """When to try again after every node declined: the soonest any of them expects room."""
    return max(floor_s, min(declines.values(), default=floor_s))


class ReplicaLoad(NamedTuple):
    """A Serve replica's gate as its routing stats report it: requests waiting or running, devices, most free."""

    waiting: int
    devices: int
    free_mb: int


def rank_replicas(loads: Mapping[str, ReplicaLoad | None], in_flight: Mapping[str, int]) -> list[str]:
    """Serve replicas, least loaded per device first (then the most free memory, then by id).

    A replica's load is the larger of what its gate last reported and this router's own requests on it not yet
    ended (reports are periodic; a burst between two reports would all go to one replica). Without a report,
    only the router's own requests count.
    """

    def key(replica: str) -> tuple[float, int, str]:
        own = in_flight.get(replica, 0)
        load = loads[replica]
        if load is None:
            return (float(own), 0, replica)
        return (max(load.waiting, own) / max(1, load.devices), -load.free_mb, replica)

    return sorted(loads, key=key)
