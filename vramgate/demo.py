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
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from vramgate._ticket import Lease, Ticket
from vramgate.clock import MonotonicClock
from vramgate.config import AdmissionSettings, DevicesConfig, GateConfig, MonitorConfig
from vramgate.errors import VramgateError
from vramgate.gate import Gate, open_gate
from vramgate.hardware import detect
from vramgate.hardware.report import bar, gib
from vramgate.messages import GenerationRequest
from vramgate.messages.codec import codec_for
from vramgate.runners import SimulatedRun, TorchWorkload

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


class _Demo:
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

    def view(self, started: float) -> Group:
        stats = self.gate.statistics()
        devices = Table(title="devices", expand=False)
        for column in ("device", "GPU", "reserved", "measured use", "", "leases", "free for admission"):
            devices.add_column(column)
        for device in stats.devices:
            ledger = device.ledger
            used = device.measured_used_mb or 0
            devices.add_row(
                f"{ledger.index}{' (sim)' if device.simulated else ''}",
                ledger.gpu,
                gib(ledger.reserved_mb),
                gib(used),
                bar(max(used, ledger.reserved_mb), ledger.capacity_mb),
                str(ledger.leases),
                gib(ledger.free_mb),
            )
        table = Table(title=f"requests (queue {stats.queue_length}, running {stats.running})", expand=False)
        for column in ("id", "model", "size", "prio", "state", "dev", "progress", "plan"):
            table.add_column(column, overflow="ellipsis", no_wrap=True)
        for rid, row in sorted(self.rows.items()):
            ticket = self.tickets.get(rid)
            progress = ""
            if ticket is not None and ticket.progress is not None and row.state == "running":
                p = ticket.progress
                eta = ticket.eta_s()
                progress = f"{p.step}/{p.total_steps}" + (f" eta {eta:.0f}s" if eta is not None else "")
            state = ticket.state if ticket is not None and row.state == "submitted" else row.state
            if ticket is not None and ticket.state == "queued" and ticket.position is not None:
                state = f"queued #{ticket.position}"
            table.add_row(
                rid,
                row.model,
                row.size,
                str(row.priority),
                state,
                "" if row.device is None else str(row.device),
                progress,
                row.changes or row.reason[:60],
            )
        elapsed = Text(f"{anyio.current_time() - started:.1f} s", style="dim")
        return Group(devices, table, elapsed)


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
        runner: Callable[[Lease], Awaitable[int]] = SimulatedRun(clock, time_scale=time_scale, min_seconds=0.3)
    else:
        console.print(f"running on this machine's GPUs with a torch workload; time compressed {1 / time_scale:g}x")
        # Load torch before the gate detects the devices, so that its allocator figures tell this process's
        # runs apart from other processes' use.
        await anyio.to_thread.run_sync(importlib.import_module, "torch")
        runner = TorchWorkload(time_scale=time_scale)
    started = anyio.current_time()
    async with open_gate(config, clock=clock) as gate:
        demo = _Demo(gate, runner, burst)
        display = Live(demo.view(started), console=console, refresh_per_second=4) if live else None
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


async def _refresh(demo: _Demo, started: float, display: Live) -> None:
    while True:
        await anyio.sleep(0.25)
        display.update(demo.view(started))


async def _watch(demo: _Demo, count: int, scope: anyio.CancelScope) -> None:
    """Check the ledger while the demo runs; stop the refresher when every request has ended."""
    while True:
        demo.check()
        rows = list(demo.rows.values())
        if len(rows) == count and all(r.state not in ("submitted", "running") for r in rows):
            scope.cancel()
            return
        await anyio.sleep(0.05)


def summary_table(result: DemoResult) -> Table:
    """The demo's summary: each request's end, wait, device, reservation and plan (or why it did not run)."""
    table = Table(title="summary", expand=False)
    for column in ("id", "model", "size", "prio", "state", "dev", "waited", "reserved", "peak", "plan / reason"):
        table.add_column(column, overflow="fold")
    for row in result.rows:
        table.add_row(
            row.request_id,
            row.model,
            row.size,
            str(row.priority),
            row.state,
            "" if row.device is None else str(row.device),
            "" if row.waited_s is None else f"{row.waited_s:.1f} s",
            gib(row.reservation_mb),
            gib(row.peak_mb),
            row.changes if row.state == "completed" else (row.reason or row.changes),
        )
    return table
