"""Timeline plots of a recorded message log: what each device held over time, and every run as a bar.

:func:`read_timeline` turns a log into a :class:`Timeline` (plain data, no plotting library); :func:`plot_timeline`
draws it with matplotlib (``pip install matplotlib``): for each device its capacity, the admission budget
(capacity less the safety margin), the memory reserved by leases and the memory measured, and below it the runs
as bars coloured by how they went (admitted as requested, optimized, OOM, error, cancelled); at the bottom the
queue length, with rejected and timed-out requests marked. A log that restarted processes appended runs to shows
them one after another.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import msgspec

from vramgate.errors import ConfigError
from vramgate.messages import (
    LeaseReleased,
    Message,
    RequestAdmitted,
    RequestEnded,
    RequestQueued,
    RequestRejected,
    ResourceSample,
    RunFinished,
)
from vramgate.messages.log import LogHeader, LogRecord

#: The gate's router: every lifecycle event and sample is delivered to it once.
ROUTER, CLIENT = "gate", "client"
RunKind = Literal["admitted", "optimized", "oom", "error", "cancelled", "running"]
COLORS: dict[str, str] = {
    "admitted": "#2ca02c",
    "optimized": "#1f77b4",
    "oom": "#d62728",
    "error": "#ff7f0e",
    "cancelled": "#7f7f7f",
    "running": "#bcbd22",
}
LABELS: dict[str, str] = {
    "admitted": "admitted as requested",
    "optimized": "admitted, optimized",
    "oom": "out of memory",
    "error": "error",
    "cancelled": "cancelled",
    "running": "still running at the end",
}


class DeviceTrack(msgspec.Struct, kw_only=True):
    """One device over time (seconds from the log's start): samples of used memory and the reserved total."""

    index: int
    name: str
    capacity_mb: int
    margin_mb: int | None = None
    used: list[tuple[float, int]] = msgspec.field(default_factory=list)
    reserved: list[tuple[float, int]] = msgspec.field(default_factory=list)


class RunBar(msgspec.Struct, kw_only=True):
    request_id: str
    device: int
    start: float
    end: float | None
    kind: RunKind
    reservation_mb: int


class Marker(msgspec.Struct, kw_only=True):
    at: float
    request_id: str
    kind: Literal["rejected", "timed_out"]
    reason: str = ""


class Timeline(msgspec.Struct, kw_only=True):
    """Everything a timeline plot shows, from one log. ``restarts``: where each run appended by a restarted
    process begins (it follows the run before it at once: the time between them is not recorded)."""

    duration_s: float
    devices: list[DeviceTrack]
    runs: list[RunBar]
    markers: list[Marker]
    queue: list[tuple[float, int]]
    note: str = ""
    restarts: list[float] = msgspec.field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many runs of each kind, and how many rejected or timed-out requests."""
        counts: dict[str, int] = {}
        for run in self.runs:
            counts[run.kind] = counts.get(run.kind, 0) + 1
        for marker in self.markers:
            counts[marker.kind] = counts.get(marker.kind, 0) + 1
        return counts


def timeline_from_records(records: Iterable[LogRecord[Message]], header: LogHeader | None = None) -> Timeline:
    """Build a timeline from log records (those delivered to the gate's router, and what it told the client)."""
    start: float | None = None
    last = 0.0
    devices: dict[int, DeviceTrack] = {}
    reserved: dict[int, int] = {}
    runs: dict[str, RunBar] = {}
    markers: list[Marker] = []
    queued: set[str] = set()
    queue: list[tuple[float, int]] = []
    held: dict[str, RequestAdmitted] = {}  # request id -> its live lease
    margin = _margin_rule(header)

    def release(indexes: tuple[int, ...], mb: int, t: float) -> None:
        for index in indexes:
            reserved[index] = max(0, reserved.get(index, 0) - mb)
            _reserved_track(devices, index).reserved.append((t, reserved[index]))

    for record in records:
        if record.recipient not in (ROUTER, CLIENT):
            continue
        if start is None:
            start = record.at
        t = record.at - start
        last = max(last, t)
        message = record.message
        if isinstance(message, ResourceSample):
            for sample in message.devices:
                track = devices.get(sample.index)
                if track is None:
                    track = devices[sample.index] = DeviceTrack(index=sample.index, name="", capacity_mb=0)
                if not track.name or track.capacity_mb != sample.total_mb:
                    track.name = sample.name
                    track.capacity_mb = sample.total_mb
                    track.margin_mb = margin(sample.total_mb) if margin is not None else None
                track.used.append((t, sample.used_mb))
        elif isinstance(message, RequestQueued):
            if message.request_id not in queued:
                queued.add(message.request_id)
                queue.append((t, len(queued)))
        elif isinstance(message, RequestAdmitted):
            _dequeue(queued, queue, message.request_id, t)
            kind: RunKind = "optimized" if message.plan.suggestions else "admitted"
            runs[message.lease_id] = RunBar(
                request_id=message.request_id,
                device=message.devices[0],
                start=t,
                end=None,
                kind=kind,
                reservation_mb=message.reservation_mb,
            )
            held[message.request_id] = message
            for index in message.devices:
                reserved[index] = reserved.get(index, 0) + message.reservation_mb
                _reserved_track(devices, index).reserved.append((t, reserved[index]))
        elif isinstance(message, RunFinished):
            run = runs.get(message.lease_id)
            if run is not None:
                run.end = t
                if message.outcome != "ok":
                    run.kind = message.outcome
        elif isinstance(message, LeaseReleased):  # logs of gates that were told (admission's end says it now)
            if held.pop(message.request_id, None) is not None:
                release(message.devices, message.reservation_mb, t)
        elif isinstance(message, RequestRejected):
            markers.append(Marker(at=t, request_id=message.request_id, kind="rejected", reason=message.reason))
        elif isinstance(message, RequestEnded):
            _dequeue(queued, queue, message.request_id, t)
            lease = held.pop(message.request_id, None)
            if lease is not None:
                release(lease.devices, lease.reservation_mb, t)
            if message.state == "timed_out":
                markers.append(Marker(at=t, request_id=message.request_id, kind="timed_out", reason=message.reason))
    for run in runs.values():
        if run.end is None:
            run.kind = "running" if run.kind in ("admitted", "optimized") else run.kind
    return Timeline(
        duration_s=last,
        devices=[devices[i] for i in sorted(devices)],
        runs=sorted(runs.values(), key=lambda r: (r.device, r.start)),
        markers=markers,
        queue=queue,
        note=header.note if header is not None else "",
    )


def read_timeline(path: str | os.PathLike[str]) -> Timeline:
    """Read a message log (``vramgate demo --log``, a gate's ``log_path``) into a timeline: every run it holds,
    one after another (:func:`join_timelines`)."""
    from vramgate.replay import read_runs

    return join_timelines([timeline_from_records(records, header) for header, records in read_runs(path)])


def join_timelines(timelines: list[Timeline]) -> Timeline:
    """The timelines of a log's runs (a restart appends one) as one: each run starts where the one before ended,
    with nothing reserved or queued (a new process holds no lease); a device keeps its latest name and size."""
    if not timelines:
        return Timeline(duration_s=0.0, devices=[], runs=[], markers=[], queue=[])
    joined = timelines[0]
    for later in timelines[1:]:
        offset = joined.duration_s
        devices = {track.index: track for track in joined.devices}
        for track in later.devices:
            held = devices.get(track.index)
            if held is None:
                held = devices[track.index] = DeviceTrack(index=track.index, name="", capacity_mb=0)
            held.name, held.capacity_mb, held.margin_mb = track.name, track.capacity_mb, track.margin_mb
            held.used.extend((offset + t, v) for t, v in track.used)
        for held in devices.values():
            if held.reserved:
                held.reserved.append((offset, 0))
            later_track = next((t for t in later.devices if t.index == held.index), None)
            if later_track is not None:
                held.reserved.extend((offset + t, v) for t, v in later_track.reserved)
        joined = Timeline(
            duration_s=offset + later.duration_s,
            devices=[devices[i] for i in sorted(devices)],
            runs=sorted(
                [*joined.runs, *(_shifted(run, offset) for run in later.runs)], key=lambda r: (r.device, r.start)
            ),
            markers=[*joined.markers, *(msgspec.structs.replace(m, at=offset + m.at) for m in later.markers)],
            queue=[*joined.queue, *([(offset, 0)] if joined.queue else []), *((offset + t, n) for t, n in later.queue)],
            note=joined.note or later.note,
            restarts=[*joined.restarts, offset],
        )
    return joined


def _shifted(run: RunBar, offset: float) -> RunBar:
    end = run.end + offset if run.end is not None else None
    return msgspec.structs.replace(run, start=run.start + offset, end=end)


def _dequeue(queued: set[str], queue: list[tuple[float, int]], request_id: str, t: float) -> None:
    if request_id in queued:
        queued.discard(request_id)
        queue.append((t, len(queued)))


def _reserved_track(devices: dict[int, DeviceTrack], index: int) -> DeviceTrack:
    track = devices.get(index)
    if track is None:
        track = devices[index] = DeviceTrack(index=index, name=f"device {index}", capacity_mb=0)
    return track


def _margin_rule(header: LogHeader | None) -> Any:
    """The gate's margin rule from the log header's config, or ``None`` when the log does not say."""
    if header is None or "config" not in header.config:
        return None
    from vramgate.config import GateConfig

    try:
        config = msgspec.convert(header.config["config"], GateConfig)
    except (msgspec.ValidationError, ValueError):
        return None
    return config.admission.margin_mb


# ---------------------------------------------------------------------------------------------------- drawing


def lanes(runs: list[RunBar], end: float) -> list[int]:
    """A lane for each run (in order) so that no two runs of a device overlap in a lane."""
    ends: list[float] = []
    assigned: list[int] = []
    for run in runs:
        stop = run.end if run.end is not None else end
        for lane, free_at in enumerate(ends):
            if free_at <= run.start:
                ends[lane] = stop
                assigned.append(lane)
                break
        else:
            ends.append(stop)
            assigned.append(len(ends) - 1)
    return assigned


_TOP_PX, _BOTTOM_PX, _TITLE_PX, _MEMORY_PX, _GAP_PX, _LANE_PX, _QUEUE_PX = 70, 50, 34, 230, 6, 22, 110
SUMMARY_LABELS: dict[str, str] = {
    "admitted": "as requested",
    "optimized": "optimized",
    "oom": "OOM",
    "error": "error",
    "cancelled": "cancelled",
    "running": "still running",
    "rejected": "rejected",
    "timed_out": "timed out",
}


def _rows(timeline: Timeline) -> list[tuple[str, int]]:
    """The figure's rows from top to bottom, with their heights in pixels."""
    rows: list[tuple[str, int]] = []
    for track in timeline.devices:
        runs = [r for r in timeline.runs if r.device == track.index]
        count = max(1, len(set(lanes(runs, timeline.duration_s))))
        rows += [("space", _TITLE_PX), ("memory", _MEMORY_PX), ("space", _GAP_PX), ("bars", _LANE_PX * count + 8)]
    rows += [("space", _TITLE_PX), ("queue", _QUEUE_PX)]
    return rows


def figure_size(timeline: Timeline, *, width_px: int = 1400) -> tuple[int, int]:
    """The PNG's size in pixels for this timeline."""
    return width_px, _TOP_PX + _BOTTOM_PX + sum(h for _, h in _rows(timeline))


def plot_timeline(
    timeline: Timeline, path: str | os.PathLike[str], *, width_px: int = 1400, dpi: int = 100, title: str = ""
) -> tuple[int, int]:
    """Draw ``timeline`` to a PNG at ``path``; returns its size in pixels (width, height)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install matplotlib") from None
    if not timeline.devices:
        raise ConfigError("the log has no device samples to plot (was it recorded by a gate?)")
    width, height = figure_size(timeline, width_px=width_px)
    rows = _rows(timeline)
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    grid = fig.add_gridspec(
        len(rows),
        1,
        height_ratios=[h for _, h in rows],
        hspace=0,
        top=1 - _TOP_PX / height,
        bottom=_BOTTOM_PX / height,
        left=0.07,
        right=0.83,
    )
    span = max(timeline.duration_s, 1e-3)
    positions = [i for i, (kind, _) in enumerate(rows) if kind != "space"]
    first: Any = None
    memory_axes: list[Any] = []
    for number, track in enumerate(timeline.devices):
        runs = [r for r in timeline.runs if r.device == track.index]
        memory = fig.add_subplot(grid[positions[2 * number]], sharex=first)
        first = first if first is not None else memory
        bars = fig.add_subplot(grid[positions[2 * number + 1]], sharex=first)
        _memory(memory, track, span)
        _bars(bars, runs, lanes(runs, timeline.duration_s), span)
        memory.tick_params(labelbottom=False)
        bars.tick_params(labelbottom=False)
        memory_axes.append(memory)
    queue_ax = fig.add_subplot(grid[positions[-1]], sharex=first)
    _queue(queue_ax, timeline, span)
    for ax in fig.axes:
        for at in timeline.restarts:  # a restarted process appended a run to the log here
            ax.axvline(at, color="#444444", linewidth=0.8, linestyle="--")
    queue_ax.set_xlabel("seconds since the log began")
    queue_ax.set_xlim(0, span * 1.01)
    memory_axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="memory")
    kinds = ["admitted", "optimized", "oom", "error", "cancelled"]
    if any(r.kind == "running" for r in timeline.runs):
        kinds.append("running")
    handles = [Patch(color=COLORS[k], label=LABELS[k]) for k in kinds]
    anchor = (1.01, 1.0) if len(memory_axes) > 1 else (1.01, 0.0)
    memory_axes[-1].legend(
        handles=handles,
        loc="upper left" if len(memory_axes) > 1 else "lower left",
        bbox_to_anchor=anchor,
        fontsize="small",
        title="runs",
    )
    counts = timeline.counts()
    summary = ", ".join(f"{counts[k]} {SUMMARY_LABELS.get(k, k)}" for k in SUMMARY_LABELS if k in counts)
    fig.text(0.07, 1 - 14 / height, title or "vramgate timeline", ha="left", va="top", fontsize="large", weight="bold")
    fig.text(0.07, 1 - 42 / height, summary or "no runs", ha="left", va="top", fontsize="medium", color="#333333")
    fig.savefig(os.fspath(path), dpi=dpi)
    plt.close(fig)
    return width, height


def _memory(ax: Any, track: DeviceTrack, end: float) -> None:
    gib = 1 / 1024
    capacity = track.capacity_mb * gib
    ax.axhline(capacity, color="black", linewidth=1.2, label="capacity")
    if track.margin_mb is not None:
        ax.axhline(capacity - track.margin_mb * gib, color="black", linewidth=0.8, linestyle=":", label="budget")
    if track.reserved:
        times = [0.0] + [t for t, _ in track.reserved] + [end]
        values = [0.0] + [v * gib for _, v in track.reserved]
        values.append(values[-1])
        ax.fill_between(times, values, step="post", color="#9467bd", alpha=0.25, linewidth=0)
        ax.step(times, values, where="post", color="#9467bd", linewidth=1.2, label="reserved")
    if track.used:
        ax.plot(
            [t for t, _ in track.used],
            [v * gib for _, v in track.used],
            color="#1f77b4",
            linewidth=1.0,
            label="measured",
        )
    top = max([capacity] + [v * gib for _, v in track.used] + [v * gib for _, v in track.reserved])
    ax.set_ylim(0, top * 1.08 if top > 0 else 1)
    ax.set_ylabel("GiB")
    ax.set_title(f"device {track.index}: {track.name} ({capacity:.1f} GiB)", loc="left", fontsize="medium")
    ax.grid(axis="y", alpha=0.3)


def _bars(ax: Any, runs: list[RunBar], assigned: list[int], span: float) -> None:
    count = max(1, len(set(assigned)))
    for run, lane in zip(runs, assigned, strict=True):
        end = run.end if run.end is not None else span
        width = max(end - run.start, span * 0.002)
        ax.broken_barh(
            [(run.start, width)], (lane + 0.1, 0.8), color=COLORS[run.kind], edgecolor="white", linewidth=0.5
        )
        if width > span * 0.06:
            ax.text(
                run.start + width / 2,
                lane + 0.5,
                _short(run.request_id),
                ha="center",
                va="center",
                fontsize=7,
                color="white",
                clip_on=True,
            )
    ax.set_ylim(count, 0)
    ax.set_yticks([])
    ax.set_ylabel("runs", rotation=0, ha="right", va="center")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def _queue(ax: Any, timeline: Timeline, span: float) -> None:
    points = [(0.0, 0), *timeline.queue, (span, timeline.queue[-1][1] if timeline.queue else 0)]
    ax.step(
        [t for t, _ in points], [n for _, n in points], where="post", color="#444444", linewidth=1.2, label="queued"
    )
    top = max([n for _, n in points] + [1])
    for kind, marker, color in (("rejected", "X", "#d62728"), ("timed_out", "v", "#9467bd")):
        times = [m.at for m in timeline.markers if m.kind == kind]
        if times:
            ax.scatter(
                times,
                [top * 1.1] * len(times),
                marker=marker,
                color=color,
                s=50,
                zorder=3,
                label=kind.replace("_", " "),
            )
    ax.set_ylim(0, top * 1.3 + 0.5)
    ax.set_ylabel("queue")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="requests")


def _short(request_id: str) -> str:
    return request_id if len(request_id) <= 10 else request_id[:9] + "…"


def plot_log(log: str | os.PathLike[str], out: str | os.PathLike[str], *, width_px: int = 1400) -> tuple[int, int]:
    """Read ``log`` and draw its timeline to ``out``; returns the PNG's size in pixels."""
    timeline = read_timeline(log)
    return plot_timeline(timeline, out, width_px=width_px, title=f"vramgate timeline: {Path(log).name}")


__all__ = [
    "DeviceTrack",
    "Marker",
    "RunBar",
    "Timeline",
    "figure_size",
    "join_timelines",
    "lanes",
    "plot_log",
    "plot_timeline",
    "read_timeline",
    "timeline_from_records",
]
