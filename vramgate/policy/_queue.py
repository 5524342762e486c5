"""Containers of the admission queue: a sorted list of keys in blocks, and a heap of deadlines.

``SortedKeys`` keeps keys in order in blocks of a few hundred, so that adding, removing and finding the rank of
a key costs a bisect and a short list move, and iterating in order is a walk over the blocks: a 100,000-entry
queue is about 200 blocks.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Iterator

#: A queue key: (aging * arrival - priority, arrival, submission number, the least MiB per GPU it needs); the number
#: makes keys distinct, so the order is that of the first three and the last is carried along (to read it without
#: looking the request up).
Key = tuple[float, float, int, int]

_LOAD = 512


class SortedKeys:
    """Distinct keys in ascending order."""

    __slots__ = ("_blocks", "_len", "_maxes")

    def __init__(self) -> None:
        self._blocks: list[list[Key]] = []
        self._maxes: list[Key] = []
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[Key]:
        for block in self._blocks:
            yield from block

    def first(self) -> Key:
        """The smallest key. Raises :class:`IndexError` when empty."""
        if not self._blocks:
            raise IndexError("no keys")
        return self._blocks[0][0]

    def add(self, key: Key) -> None:
        if not self._blocks:
            self._blocks.append([key])
            self._maxes.append(key)
            self._len = 1
            return
        i = bisect_left(self._maxes, key)
        if i == len(self._maxes):
            i -= 1
        block = self._blocks[i]
        insort(block, key)
        self._maxes[i] = block[-1]
        self._len += 1
        if len(block) > 2 * _LOAD:
            self._blocks[i : i + 1] = [block[:_LOAD], block[_LOAD:]]
            self._maxes[i : i + 1] = [block[_LOAD - 1], block[-1]]

    def window(self, start: int, stop: int) -> list[Key]:
        """The keys from the 0-based position ``start`` up to ``stop`` (excluded), as ``islice(self, start, stop)``
        gives them, taken by block."""
        out: list[Key] = []
        for block in self._blocks:
            size = len(block)
            if start >= size:
                start -= size
                stop -= size
                continue
            if stop <= 0:
                break
            out += block[start:stop]
            start = 0
            stop -= size
        return out

    def _locate(self, key: Key) -> tuple[int, int]:
        i = bisect_left(self._maxes, key)
        if i < len(self._blocks):
            block = self._blocks[i]
            j = bisect_left(block, key)
            if j < len(block) and not (key < block[j]) and not (block[j] < key):
                return i, j
        raise KeyError(key)

    def remove(self, key: Key) -> None:
        """Remove ``key``. Raises :class:`KeyError` when it is not there."""
        i, j = self._locate(key)
        block = self._blocks[i]
        del block[j]
        self._len -= 1
        if not block:
            del self._blocks[i]
            del self._maxes[i]
        else:
            self._maxes[i] = block[-1]

    def rank(self, key: Key) -> int:
        """The 0-based position of ``key``. Raises :class:`KeyError` when it is not there."""
        i, j = self._locate(key)
        return sum(len(block) for block in self._blocks[:i]) + j


class DeadlineHeap:
    """Deadlines of queued requests, earliest first. Entries of requests that left are skipped when popped."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, deadline: float, seq: int, request_id: str) -> None:
        heapq.heappush(self._heap, (deadline, seq, request_id))

    def peek(self) -> tuple[float, int, str] | None:
        return self._heap[0] if self._heap else None

    def pop(self) -> tuple[float, int, str]:
        return heapq.heappop(self._heap)

    def keep_only(self, live: set[int]) -> None:
        """Drop the entries whose ``seq`` is not in ``live``."""
        self._heap = [entry for entry in self._heap if entry[1] in live]
        heapq.heapify(self._heap)
