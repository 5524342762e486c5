"""The demo's live view: the devices and every request, fitted to the terminal's width and height.

A :class:`LiveSnapshot` is an immutable picture of the demo taken on the event loop; :class:`LiveView` renders
it at whatever size the console has when it draws (rich's live display redraws from its own thread, and on a
resize). Narrow terminals drop the least useful columns, never the id or the state; short ones show the
running and queued requests first and summarise the rest on one line (``+ 8 more: 8 completed``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import msgspec
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, JustifyMethod, OverflowMethod, RenderResult
from rich.table import Table
from rich.text import Text

from vramgate.hardware.report import bar
from vramgate.messages.gate import DeviceStatistics

#: How each state reads, and the order requests are listed (and kept when rows run out) in.
STATE_ORDER = ("running", "queued", "planning", "rejected", "timed_out", "failed", "cancelled", "completed")
STATE_STYLE = {
    "running": "bold green",
    "queued": "yellow",
    "planning": "cyan",
    "completed": "green",
    "rejected": "red",
    "timed_out": "red",
    "failed": "bold red",
    "cancelled": "magenta",
}


class LiveRow(msgspec.Struct, frozen=True, kw_only=True):
    """One request as the live view shows it. ``position`` is its place in the queue now (1 is next)."""

    request_id: str
    model: str
    size: str
    priority: int
    state: str
    position: int | None = None
    device: int | None = None
    reservation_mb: int | None = None
    step: int | None = None
    total_steps: int | None = None
    eta_s: float | None = None
    waited_s: float | None = None
    plan: str = ""


class LiveSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The demo at one moment: each device's ledger, every request, and the time since it started."""

    devices: tuple[DeviceStatistics, ...]
    rows: tuple[LiveRow, ...]
    queue_length: int
    running: int
    elapsed_s: float


def memory(mb: int | None) -> str:
    """``mb`` MiB with its unit: GiB with one decimal from 1 GiB up, else MiB."""
    if mb is None:
        return ""
    return f"{mb / 1024:.1f} GiB" if mb >= 1024 else f"{mb} MiB"


def seconds(value: float) -> str:
    """``value`` seconds with the unit: one decimal below 10 s, whole seconds from there."""
    return f"{value:.1f} s" if round(value, 1) < 10 else f"{value:.0f} s"


def state_text(row: LiveRow) -> Text:
    label = f"queued #{row.position}" if row.state == "queued" and row.position is not None else row.state
    return Text(label, style=STATE_STYLE.get(row.state, ""))


def progress_text(row: LiveRow) -> str:
    if row.state != "running" or row.step is None or row.total_steps is None:
        return ""
    text = f"{row.step}/{row.total_steps}"
    return text if row.eta_s is None else f"{text}, {seconds(row.eta_s)} left"


Cell = str | Text


def _plain(cell: Cell) -> str:
    return cell.plain if isinstance(cell, Text) else cell


class Column(msgspec.Struct, frozen=True):
    """A column a table may show: its header and alignment; a flexible one takes the width left over."""

    header: str
    justify: JustifyMethod = "left"
    #: ``0``: the column gets its widest cell; else it takes at least this much and what is left, and
    #: wraps its cells (``wrap``) or cuts them with an ellipsis.
    flexible: int = 0
    wrap: bool = False


def fit_table(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], order: Sequence[int], width: int) -> Table:
    """A borderless table of the columns that fit ``width``, chosen in ``order`` (most wanted first).

    Every chosen column but a flexible one gets its widest cell, so nothing chosen is cut short or wrapped; the
    flexible column (at most one) is kept when its minimum fits, and gets all the width the others leave.
    """
    widths = [max([len(c.header)] + [cell_len(_plain(row[i])) for row in rows]) for i, c in enumerate(columns)]
    chosen: set[int] = set()
    used = 0
    for index in order:
        column = columns[index]
        need = (column.flexible or widths[index]) + (2 if chosen else 0)
        if used + need <= width:
            chosen.add(index)
            used += need
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1), header_style="bold", expand=False)
    for index in sorted(chosen):
        column = columns[index]
        if column.flexible:
            room = column.flexible + width - used
            overflow: OverflowMethod = "fold" if column.wrap else "ellipsis"
            table.add_column(column.header, overflow=overflow, no_wrap=not column.wrap, max_width=room)
        else:
            table.add_column(column.header, justify=column.justify, no_wrap=True, min_width=widths[index])
    for row in rows:
        table.add_row(*(row[i] for i in sorted(chosen)))
    return table


DEVICE_COLUMNS = (
    Column("dev"),
    Column("GPU"),
    Column("reserved", "right"),
    Column("measured", "right"),
    Column("use"),
    Column("leases", "right"),
    Column("free to admit", "right"),
)
DEVICE_ORDER = (0, 1, 6, 2, 4, 3, 5)

REQUEST_COLUMNS = (
    Column("id"),
    Column("model"),
    Column("size"),
    Column("prio", "right"),
    Column("state"),
    Column("dev", "right"),
    Column("reserved", "right"),
    Column("waited", "right"),
    Column("progress"),
    Column("plan", flexible=12),
)
REQUEST_ORDER = (0, 4, 5, 8, 1, 2, 3, 6, 7, 9)


def device_table(devices: Sequence[DeviceStatistics], width: int) -> Table:
    bar_width = 20 if width >= 120 else 10
    rows: list[list[Cell]] = []
    for device in devices:
        ledger = device.ledger
        used = device.measured_used_mb or 0
        rows.append(
            [
                f"{ledger.index}{' sim' if device.simulated else ''}",
                ledger.gpu,
                memory(ledger.reserved_mb),
                memory(device.measured_used_mb),
                bar(max(used, ledger.reserved_mb), ledger.capacity_mb, width=bar_width),
                str(ledger.leases),
                memory(ledger.free_mb),
            ]
        )
    return fit_table(DEVICE_COLUMNS, rows, DEVICE_ORDER, width)


def ordered(rows: Sequence[LiveRow]) -> list[LiveRow]:
    """Running first, then the queue in its order, then the rest by state and id."""
    rank = {state: i for i, state in enumerate(STATE_ORDER)}
    return sorted(rows, key=lambda r: (rank.get(r.state, len(rank)), r.position or 0, r.request_id))


def hidden_line(hidden: Sequence[LiveRow]) -> Text:
    counts = Counter(row.state for row in hidden)
    states = [*STATE_ORDER, *sorted(set(counts) - set(STATE_ORDER))]
    parts = ", ".join(f"{counts[state]} {state}" for state in states if counts[state])
    return Text(f"+ {len(hidden)} more: {parts}", style="dim")


def _count(rows: Sequence[LiveRow], states: set[str]) -> int:
    return sum(1 for row in rows if row.state in states)


def render(snapshot: LiveSnapshot, width: int, height: int) -> list[Table | Text]:
    """The view, as renderables that take at most ``height`` lines of ``width`` columns."""
    rows = ordered(snapshot.rows)
    ended = _count(rows, set(STATE_ORDER) - {"running", "queued", "planning"})
    header = Text.assemble(
        ("vramgate demo", "bold"),
        f"  {seconds(snapshot.elapsed_s)}  queue {snapshot.queue_length}  running {snapshot.running}",
        f"  ended {ended} of {len(rows)}",
    )
    header.no_wrap = True
    header.overflow = "ellipsis"
    devices = device_table(snapshot.devices, width)
    fixed = 1 + 1 + len(snapshot.devices) + 1  # header line, device header and rows, request header
    spacer = height - fixed - len(rows) >= 2
    budget = max(0, height - fixed - (1 if spacer else 0))
    shown = rows
    hidden: list[LiveRow] = []
    if len(rows) > budget:
        shown, hidden = rows[: max(0, budget - 1)], rows[max(0, budget - 1) :]
    cells: list[list[Cell]] = [
        [
            row.request_id,
            row.model,
            row.size,
            str(row.priority),
            state_text(row),
            "" if row.device is None else str(row.device),
            memory(row.reservation_mb),
            "" if row.waited_s is None else seconds(row.waited_s),
            progress_text(row),
            row.plan,
        ]
        for row in shown
    ]
    requests = fit_table(REQUEST_COLUMNS, cells, REQUEST_ORDER, width)
    parts: list[Table | Text] = [header, devices]
    if spacer:
        parts.append(Text(""))
    parts.append(requests)
    if hidden:
        parts.append(hidden_line(hidden))
    return parts


class LiveView:
    """A snapshot that renders itself at the console's current size."""

    def __init__(self, snapshot: LiveSnapshot) -> None:
        self.snapshot = snapshot

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = options.height if options.height is not None else console.height
        yield from render(self.snapshot, options.max_width, height)
