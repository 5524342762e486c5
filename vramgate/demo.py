"""``vramgate demo``: a burst of mixed Wan2.2 requests through a gate, with live progress and a summary.

On a machine with NVIDIA GPUs the gate manages them and each run is a torch workload of the admitted size; on
one without, it manages a simulated RTX4090-24GB and a simulated H100-80GB and each run allocates its (hidden)
true peak on its simulated device. Time is compressed (``time_scale``) so that the demo ends within a minute.
The message log it writes replays to the same decisions (``vramgate replay LOG``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.resources
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio
import msgspec
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from vramgate._live import STATE_STYLE, Cell, Column, LiveRow, LiveSnapshot, LiveView, fit_table, memory, seconds
from vramgate._ticket import Lease, Ticket
from vramgate.clock import MonotonicClock
from vramgate.config import AdmissionSettings, DevicesConfig, GateConfig, MonitorConfig
from vramgate.errors import VramgateError
from vramgate.gate import Gate, open_gate
from vramgate.hardware import detect
from vramgate.messages import GenerationRequest
from vramgate.messages.codec import codec_for
from vramgate.runners import RunTruth, SimulatedRun, TorchWorkload

DEMO_GPUS = ("RTX4090-24GB", "H100-80GB")


class DemoRow(msgspec.Struct, kw_only=True):
    """One request of the demo, as the summary shows it."""

    request_id: str
    model: str
    size: str
    frames: int | None
    priority: int
    state: str = "submitted"
    device: int | None = None
    waited_s: float | None = None
    reservation_mb: int | None = None
    peak_mb: int | None = None
    changes: str = ""
    reason: str = ""


class DemoResult(msgspec.Struct, kw_only=True):
    """What the demo did: its rows, the log it wrote, whether it simulated, and how long it took."""

    rows: list[DemoRow]
    log_path: str
    simulated: bool
    seconds: float
    over_commits: int


def demo_requests(path: str | Path | None = None) -> list[GenerationRequest]:
    """The demo's requests: the burst shipped with vramgate, or a JSON Lines file of requests."""
    if path is None:
        data = importlib.resources.files("vramgate").joinpath("data/demo_requests.jsonl").read_bytes()
        source = "demo_requests.jsonl"
    else:
        data = Path(path).read_bytes()
        source = str(path)
    return [request for _, request in codec_for(GenerationRequest).iter_json_lines(data, source=source)]


def demo_config(log_path: str, *, simulate: bool) -> GateConfig:
    """The gate configuration the demo runs with."""
    return GateConfig(
        devices=DevicesConfig(use_real_gpus=not simulate, simulate=DEMO_GPUS if simulate else ()),
        monitor=MonitorConfig(interval_s=0.1),
        # Simulated devices live on a simulated host: give the offloaded weights room (256 GiB of RAM).
        admission=AdmissionSettings(ram_budget="256GiB") if simulate else AdmissionSettings(),
        log_path=log_path,
    )


def has_real_gpu() -> bool:
    """Whether NVML or CUDA sees a GPU here."""
    with_devices = detect(host=False)
    try:
        return with_devices.gpu_backend != "none" and bool(with_devices.sample().devices)
    finally:
        with_devices.close()


def _size(request: GenerationRequest) -> str:
    return f"{request.width}x{request.height}"


def _changes(lease: Lease) -> str:
    return ", ".join(f"{s.parameter}={s.suggested}" for s in lease.plan.suggestions) or "as requested"


class DemoRun:
    """The demo's requests through one gate: a task per request, and their rows as they go."""

    def __init__(self, gate: Gate, runner: Callable[[Lease], Awaitable[int]], requests: Sequence[GenerationRequest]):
        self.gate = gate
        self.runner = runner
        self.requests = requests
        self.rows: dict[str, DemoRow] = {}
        self.tickets: dict[str, Ticket] = {}
        self.over_commits = 0

    async def one(self, request: GenerationRequest, index: int) -> None:
        rid = f"demo-{index:02d}"
        request = msgspec.structs.replace(request, request_id=rid)
        row = DemoRow(
            request_id=rid, model=request.model, size=_size(request), frames=request.frames, priority=request.priority
        )
        self.rows[rid] = row
        try:
            ticket = await self.gate.submit(request)
            self.tickets[rid] = ticket
            lease = await ticket.wait_admitted()
        except VramgateError as error:
            ended = self.tickets[rid].ended if rid in self.tickets else None
            row.state = ended.state if ended is not None else "rejected"
            row.reason = str(error)
            return
        row.device = lease.device
        row.waited_s = lease.waited_s
        row.reservation_mb = lease.reservation_mb
        row.changes = _changes(lease)
        row.state = "running"
        try:
            async with self.gate.hold(lease):
                row.peak_mb = await self.runner(lease)
        except VramgateError as error:
            row.reason = str(error)
        ended = await ticket.wait_ended()
        row.state = ended.state
        if ended.reason and not row.reason:
            row.reason = ended.reason

    def check(self) -> None:
        """Count over-commits: reservations plus others' use plus margin beyond capacity on any device."""
        for device in self.gate.statistics().devices:
            ledger = device.ledger
            if ledger.reserved_mb + ledger.others_mb + ledger.margin_mb > ledger.capacity_mb:
                self.over_commits += 1

    def live_row(self, row: DemoRow) -> LiveRow:
        """The row as the live view shows it, with the request's queue position as it is now."""
        ticket = self.tickets.get(row.request_id)
        state = row.state
        position = None
        step = total = None
        eta = None
        if state == "submitted":
            ticket_state = ticket.state if ticket is not None else "preflight"
            state = {"preflight": "planning", "admitted": "running"}.get(ticket_state, ticket_state)
            if state == "queued":
                position = self.gate.queue_position(row.request_id)
        if state == "running" and ticket is not None:
            if ticket.progress is not None:
                step, total = ticket.progress.step, ticket.progress.total_steps
            eta = ticket.eta_s()
        return LiveRow(
            request_id=row.request_id,
            model=row.model,
            size=row.size,
            priority=row.priority,
            state=state,
            position=position,
            device=row.device,
            reservation_mb=row.reservation_mb,
            waited_s=row.waited_s,
            step=step,
            total_steps=total,
            eta_s=eta,
            plan=row.changes or row.reason,
        )

    def snapshot(self, started: float) -> LiveSnapshot:
        """The demo now, for the live view."""
        stats = self.gate.statistics()
        return LiveSnapshot(
            devices=stats.devices,
            rows=tuple(self.live_row(row) for row in self.rows.values()),
            queue_length=stats.queue_length,
            running=stats.running,
            elapsed_s=anyio.current_time() - started,
        )


async def run_demo(
    *,
    log_path: str = "vramgate-demo.jsonl",
    simulate: bool | None = None,
    time_scale: float = 0.007,
    requests: Sequence[GenerationRequest] | None = None,
    console: Console | None = None,
    live: bool = True,
) -> DemoResult:
    """Run the demo; returns its summary. ``simulate=None`` simulates when no GPU is visible."""
    console = console if console is not None else Console()
    if simulate is None:
        simulate = not await anyio.to_thread.run_sync(has_real_gpu)
    burst = list(requests) if requests is not None else demo_requests()
    config = demo_config(log_path, simulate=simulate)
    clock = MonotonicClock()
    if simulate:
        console.print(
            f"[bold]no GPU found here[/]: running on a simulated {DEMO_GPUS[0]} and a simulated {DEMO_GPUS[1]}; "
            f"time compressed {1 / time_scale:g}x"
        )
        runner: SimulatedRun | TorchWorkload = SimulatedRun(clock, time_scale=time_scale, min_seconds=0.3)
    else:
        console.print(f"running on this machine's GPUs with a torch workload; time compressed {1 / time_scale:g}x")
        # Load torch before the gate detects the devices, so that its allocator figures tell this process's
        # runs apart from other processes' use.
        await anyio.to_thread.run_sync(importlib.import_module, "torch")
        runner = TorchWorkload(time_scale=time_scale)
    started = anyio.current_time()
    async with open_gate(config, clock=clock) as gate:
        runner.truth = RunTruth(gate.estimator)  # a stand-in run lasts its time, whatever the gate learns
        demo = DemoRun(gate, runner, burst)
        display = Live(LiveView(demo.snapshot(started)), console=console, refresh_per_second=4) if live else None
        with display if display is not None else contextlib.nullcontext():
            async with anyio.create_task_group() as tg:
                for index, request in enumerate(burst, start=1):
                    tg.start_soon(demo.one, request, index)
                if display is not None:
                    tg.start_soon(_refresh, demo, started, display)
                tg.start_soon(_watch, demo, len(burst), tg.cancel_scope)
    rows = [demo.rows[rid] for rid in sorted(demo.rows)]
    return DemoResult(
        rows=rows,
        log_path=log_path,
        simulated=simulate,
        seconds=anyio.current_time() - started,
        over_commits=demo.over_commits,
    )


async def _refresh(demo: DemoRun, started: float, display: Live) -> None:
    while True:
        await anyio.sleep(0.25)
        display.update(LiveView(demo.snapshot(started)))


async def _watch(demo: DemoRun, count: int, scope: anyio.CancelScope) -> None:
    """Check the ledger while the demo runs; stop the refresher when every request has ended."""
    while True:
        demo.check()
        rows = list(demo.rows.values())
        if len(rows) == count and all(r.state not in ("submitted", "running") for r in rows):
            scope.cancel()
            return
        await anyio.sleep(0.05)


SUMMARY_COLUMNS = (
    Column("id"),
    Column("model"),
    Column("size"),
    Column("prio", "right"),
    Column("state"),
    Column("dev", "right"),
    Column("waited", "right"),
    Column("reserved", "right"),
    Column("peak", "right"),
    Column("plan / reason", flexible=24, wrap=True),
)
SUMMARY_ORDER = (0, 4, 6, 7, 8, 5, 9, 1, 2, 3)


def summary_table(result: DemoResult, width: int = 200) -> Table:
    """The demo's summary: each request's end, wait, device, reservation and plan (or why it did not run).

    Columns that do not fit ``width`` are left out (the id, the state and the plan or reason stay).
    """
    cells: list[list[Cell]] = [
        [
            row.request_id,
            row.model,
            row.size,
            str(row.priority),
            Text(row.state, style=STATE_STYLE.get(row.state, "")),
            "" if row.device is None else str(row.device),
            "" if row.waited_s is None else seconds(row.waited_s),
            memory(row.reservation_mb),
            memory(row.peak_mb),
            row.changes if row.state == "completed" else (row.reason or row.changes),
        ]
        for row in result.rows
    ]
    table = fit_table(SUMMARY_COLUMNS, cells, SUMMARY_ORDER, width)
    table.title = "summary"
    return table
