"""Readable renderings of a :class:`ResourceSample` (rich tables and memory bars) for ``check`` and ``monitor``."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from vramgate.messages.resources import DeviceSample, HostSample, ResourceSample

_SPARKS = "▁▂▃▄▅▆▇█"


def gib(mb: int | None) -> str:
    """``mb`` MiB as GiB with one decimal, or ``?``."""
    return "?" if mb is None else f"{mb / 1024:.1f}"


def bar(used: int, total: int, width: int = 20) -> Text:
    """A memory bar coloured by how full the device is."""
    fraction = 0.0 if total <= 0 else min(1.0, max(0.0, used / total))
    filled = round(fraction * width)
    colour = "green" if fraction < 0.7 else "yellow" if fraction < 0.9 else "red"
    text = Text("█" * filled, style=colour)
    text.append("░" * (width - filled), style="dim")
    text.append(f" {fraction * 100:3.0f}%")
    return text


def sparkline(values: Sequence[float], *, low: float = 0.0, high: float | None = None, width: int = 30) -> str:
    """A one-line sparkline of the last ``width`` values scaled between ``low`` and ``high``."""
    values = list(values)[-width:]
    if not values:
        return ""
    top = max(values) if high is None else high
    span = top - low
    if span <= 0:
        return _SPARKS[0] * len(values)
    last = len(_SPARKS) - 1
    return "".join(_SPARKS[min(last, max(0, round((value - low) / span * last)))] for value in values)


def _optional(value: float | None, unit: str, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def device_table(devices: Sequence[DeviceSample], *, history: dict[int, str] | None = None) -> Table:
    """One row per device: memory in GiB, a bar, and what the backend could tell (``-`` where unknown)."""
    table = Table(title="GPUs (memory in GiB)", title_justify="left", expand=False)
    table.add_column("#", justify="right", no_wrap=True, min_width=1)
    table.add_column("GPU", no_wrap=True, min_width=9, overflow="ellipsis")
    table.add_column("backend", no_wrap=True, min_width=9)
    table.add_column("used/total", justify="right", no_wrap=True, min_width=10)
    table.add_column("free", justify="right", no_wrap=True, min_width=5)
    table.add_column("memory", no_wrap=True)
    extras_known = any(
        value is not None
        for device in devices
        for value in (device.utilization_pct, device.temperature_c, device.power_w)
    )
    if extras_known:
        table.add_column("util temp power", justify="right")
    if history is not None:
        table.add_column("history", no_wrap=True)
    for device in devices:
        name = device.name + (" [red](lost)[/red]" if device.lost else "")
        power = _optional(device.power_w, "W")
        if device.power_limit_w is not None:
            power += f"/{device.power_limit_w:.0f}W"
        known = [device.utilization_pct, device.temperature_c, device.power_w]
        extras = " ".join((_optional(device.utilization_pct, "%"), _optional(device.temperature_c, "C"), power))
        if all(value is None for value in known):
            extras = "-"
        row: list[RenderableType] = [
            str(device.index),
            name,
            device.backend,
            f"{gib(device.used_mb)}/{gib(device.total_mb)}",
            gib(device.free_mb),
            bar(device.used_mb, device.total_mb, width=10),
        ]
        if extras_known:
            row.append(extras)
        if history is not None:
            row.append(history.get(device.index, ""))
        table.add_row(*row)
    if not devices:
        table.add_row("-", "no GPU measured", *[""] * (len(table.columns) - 2))
    return table


def host_table(host: HostSample | None) -> Table:
    table = Table(title="Host", title_justify="left", show_header=False, expand=False)
    table.add_column("what")
    table.add_column("value")
    if host is None:
        table.add_row("host", "not measured")
        return table
    ram = f"{gib(host.ram_available_mb)} GiB available of {gib(host.ram_total_mb)} GiB"
    if host.cgroup_limit_mb is not None:
        ram += " (container limit)"
    table.add_row("RAM", ram)
    table.add_row("RAM used", bar(host.ram_used_mb, host.ram_total_mb))
    table.add_row("swap", f"{gib(host.swap_used_mb)} GiB used of {gib(host.swap_total_mb)} GiB")
    busy = "" if host.cpu_percent is None else f", {host.cpu_percent:.0f}% busy"
    table.add_row("CPU", f"{host.cpu_count} cores{busy}")
    table.add_row("disk", f"{gib(host.disk_free_mb)} GiB free of {gib(host.disk_total_mb)} GiB at {host.disk_path}")
    return table


def warnings_text(warnings: Sequence[str]) -> Text:
    text = Text()
    if not warnings:
        text.append("no warnings", style="green")
        return text
    text.append("Warnings (what could not be measured):\n", style="bold yellow")
    for warning in warnings:
        text.append(f"  - {warning}\n", style="yellow")
    return text


def sample_report(sample: ResourceSample, *, history: dict[int, str] | None = None) -> Group:
    """The whole report: GPUs, the CUDA mapping, the host and the warnings."""
    parts: list[RenderableType] = [device_table(sample.devices, history=history)]
    if sample.mapping:
        parts.append(Text(f"measured with: {sample.mapping}", style="dim"))
    parts.append(host_table(sample.host))
    parts.append(warnings_text(sample.warnings))
    return Group(*parts)
