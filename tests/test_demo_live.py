"""The demo's live view, rendered from a real demo (a gate on simulated GPUs) at terminal sizes people use."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from rich.cells import cell_len
from rich.console import Console

from vramgate._live import LiveView
from vramgate._ticket import Lease
from vramgate.clock import MonotonicClock
from vramgate.demo import DemoRun, demo_config, demo_requests
from vramgate.gate import open_gate

pytestmark = pytest.mark.anyio

ROW = re.compile(r"^(?P<id>demo-\d\d)\s")
STATE = re.compile(
    r"\s(?P<state>running|queued #(?P<pos>\d+)|planning|completed|rejected|timed_out|failed|cancelled)(\s|$)"
)
HIDDEN = re.compile(r"^\+ (?P<n>\d+) more: ")


class HeldRuns:
    """A runner whose runs report one step, then hold their lease until released (all at once, or one by one)."""

    def __init__(self) -> None:
        self.running: dict[str, anyio.Event] = {}
        self.free = False

    async def __call__(self, lease: Lease) -> int:
        await lease.progress(1, lease.params.steps)
        if not self.free:
            self.running[lease.request_id] = anyio.Event()
            await self.running[lease.request_id].wait()
        return 0

    def release_all(self) -> None:
        self.free = True
        for event in self.running.values():
            event.set()


@asynccontextmanager
async def demo_in_flight(tmp_path: Path) -> AsyncIterator[tuple[DemoRun, HeldRuns]]:
    """The shipped 20-request burst through a demo gate, held at the moment every request has been placed."""
    runs = HeldRuns()
    config = demo_config(str(tmp_path / "demo.jsonl"), simulate=True)
    async with open_gate(config, clock=MonotonicClock()) as gate:
        demo = DemoRun(gate, runs, demo_requests())
        async with anyio.create_task_group() as tg:
            for index, request in enumerate(demo.requests, start=1):
                tg.start_soon(demo.one, request, index)
            await settled(demo, runs)
            yield demo, runs
            runs.release_all()


async def settled(demo: DemoRun, runs: HeldRuns) -> None:
    """Wait until every request is queued (with a position), running (held) or ended."""
    with anyio.fail_after(30):
        while True:
            tickets = [demo.tickets.get(f"demo-{i:02d}") for i in range(1, len(demo.requests) + 1)]
            placed = all(t is not None and t.state in ("queued", "admitted", "ended") for t in tickets)
            queued = [t for t in tickets if t is not None and t.state == "queued"]
            running = [t for t in tickets if t is not None and t.state == "admitted"]
            if (
                placed
                and all(demo.gate.queue_position(t.request_id) is not None for t in queued)
                and {t.request_id for t in running} == {rid for rid, e in runs.running.items() if not e.is_set()}
            ):
                return
            await anyio.sleep(0.02)


def draw(demo: DemoRun, width: int, height: int) -> list[str]:
    console = Console(file=io.StringIO(), width=width, height=height, color_system=None, legacy_windows=False)
    console.print(LiveView(demo.snapshot(anyio.current_time() - 1.5)))
    text: str = console.file.getvalue()  # type: ignore[attr-defined]
    return text.splitlines()


def check_view(demo: DemoRun, lines: list[str], width: int, height: int) -> dict[str, str]:
    """What every size must give: it fits, every row's id and state read in full, units, current positions."""
    assert len(lines) <= height, "\n".join(lines)
    assert all(cell_len(line) <= width for line in lines)
    states: dict[str, str] = {}
    for line in lines:
        row = ROW.match(line)
        if row is None:
            continue
        state = STATE.search(line)
        assert state is not None, f"no readable state in {line!r}"
        assert "…" not in line[: state.end()], line
        states[row["id"]] = state["state"]
        if state["pos"] is not None:
            assert int(state["pos"]) == demo.gate.queue_position(row["id"]), line
    hidden = [int(m["n"]) for m in map(HIDDEN.match, lines) if m is not None]
    assert len(states) + sum(hidden) == len(demo.requests), "\n".join(lines)
    text = "\n".join(lines)
    assert re.search(r"\d+\.\d s", lines[0]), lines[0]  # elapsed, in seconds
    assert re.search(r"\b\d+(\.\d)? GiB\b", text)
    assert re.search(r"\d+/\d+, \d+(\.\d)? s left", text)  # a running request's progress and time left
    return states


async def test_live_view_fits_80x24_and_200x50_and_shows_current_positions(tmp_path: Path) -> None:
    async with demo_in_flight(tmp_path) as (demo, runs):
        small = draw(demo, 80, 24)
        states = check_view(demo, small, 80, 24)
        assert len(states) < len(demo.requests)  # 20 requests do not fit 24 lines: the rest is summarised
        assert HIDDEN.match(small[-1])
        assert sum(1 for s in states.values() if s == "running") == len(runs.running)
        assert any(s.startswith("queued #") for s in states.values())
        header = next(line.split() for line in small if line.startswith("id "))
        assert header[:2] == ["id", "model"]
        assert "plan" not in header  # no room for it at 80 columns

        large = draw(demo, 200, 50)
        every = check_view(demo, large, 200, 50)
        assert len(every) == len(demo.requests)  # everything fits
        shown = sorted(int(s.removeprefix("queued #")) for s in every.values() if s.startswith("queued #"))
        assert shown == list(range(1, demo.gate.statistics().queue_length + 1))
        assert any(line.split()[-1:] == ["plan"] for line in large)
        assert {rid: s for rid, s in every.items() if rid in states} == states
        assert len(check_view(demo, draw(demo, 120, 40), 120, 40)) == len(demo.requests)

        # The queue moves: one run ends, and the requests behind it show where they are now.
        before = {rid: demo.gate.queue_position(rid) for rid in demo.tickets}
        first = next(iter(runs.running))
        runs.running[first].set()
        with anyio.fail_after(30):
            while True:
                if {rid: demo.gate.queue_position(rid) for rid in demo.tickets} != before:
                    break
                await anyio.sleep(0.02)
        await settled(demo, runs)
        moved = check_view(demo, draw(demo, 80, 24), 80, 24)
        stale = {
            rid: f"queued #{ticket.position}"
            for rid, ticket in demo.tickets.items()
            if ticket.state == "queued" and rid in moved
        }
        assert any(moved[rid] != shown for rid, shown in stale.items()), "positions did not follow the queue"
