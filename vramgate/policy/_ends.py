"""The running leases' expected ends, kept in order as leases come and go.

An end is ``(expected end, positions, MiB per position)``. :class:`Ends` holds every running lease's end in
ascending order, and the ends of each device position in the same order, so that placement reads them without
sorting: a lease that starts or ends is one bisect and one list move in each list it is in. What
:func:`ends_of` and :func:`~vramgate.policy._placement.releases_of` compute from scratch, it holds at all times.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable

#: A running lease's end: (expected end, positions, MiB per position).
End = tuple[float, tuple[int, ...], int]


def ends_of(ends: Iterable[End]) -> list[End]:
    """``ends`` in order, from scratch."""
    return sorted(ends)


class Ends:
    """The running leases' ends in ascending order (:attr:`all`) and per device position (:attr:`per`)."""

    __slots__ = ("all", "per", "version")

    def __init__(self, devices: int) -> None:
        #: Every end, ascending.
        self.all: list[End] = []
        #: Each position's ends, ascending: the ends of :attr:`all` that hold memory there, in the same order.
        self.per: list[list[End]] = [[] for _ in range(devices)]
        #: Counts the changes: equal versions hold the same ends.
        self.version = 0

    def __len__(self) -> int:
        return len(self.all)

    def add(self, end: End) -> None:
        self.version += 1
        insort(self.all, end)
        per = self.per
        for pos in end[1]:
            insort(per[pos], end)

    def remove(self, end: End) -> None:
        """Take out one end equal to ``end``. Raises :class:`ValueError` when there is none."""
        self.version += 1
        _remove(self.all, end)
        per = self.per
        for pos in end[1]:
            _remove(per[pos], end)

    def clear(self) -> None:
        self.version += 1
        self.all.clear()
        for ends in self.per:
            ends.clear()


def _remove(ends: list[End], end: End) -> None:
    i = bisect_left(ends, end)
    if i == len(ends) or ends[i] != end:
        raise ValueError(f"no end {end!r}")
    del ends[i]
