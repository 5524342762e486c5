"""``vramgate monitor``: a live terminal view of the GPUs and the host, or a JSON Lines stream of samples."""

from __future__ import annotations

import collections
import contextlib
import sys

import anyio
import click
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from vramgate.actors import Actor, ActorSystem, Envelope
from vramgate.actors.monitor import DEFAULT_HISTORY_S, MonitorActor
from vramgate.cli._errors import FiniteFloat, bad_input
from vramgate.clock import MonotonicClock
from vramgate.errors import VramgateError
from vramgate.hardware.detect import DeviceSet, detect
from vramgate.hardware.report import sample_report, sparkline
from vramgate.messages import Message, ResourceSample

_SINK = "cli"
_SPARK_WIDTH = 16


class _Forward(Actor[Message]):
    """Hands every sample the monitor publishes to the command's loop (dropping one when the loop lags)."""

    def __init__(self, send: MemoryObjectSendStream[ResourceSample]) -> None:
        self._send = send

    async def receive(self, message: Message, envelope: Envelope) -> None:
        if isinstance(message, ResourceSample):
            with contextlib.suppress(anyio.WouldBlock):
                self._send.send_nowait(message)


async def _run(devices: DeviceSet, *, interval: float, count: int | None, as_json: bool, history_s: float) -> None:
    send, receive = anyio.create_memory_object_stream[ResourceSample](16)
    system = ActorSystem(clock=MonotonicClock(), note="vramgate monitor")
    system.spawn(_Forward(send), name=_SINK)
    system.spawn(MonitorActor(devices, interval_s=interval, history_s=history_s, subscribers=[_SINK]), name="monitor")
    with send, receive:
        async with system:
            if as_json:
                await _stream_json(receive, count)
            else:
                await _live(receive, count, interval)
            await system.stop(timeout=5.0)


async def _stream_json(receive: MemoryObjectReceiveStream[ResourceSample], count: int | None) -> None:
    encoder = msgspec.json.Encoder()
    out = sys.stdout
    seen = 0
    async for sample in receive:
        out.write(encoder.encode(sample).decode() + "\n")
        out.flush()
        seen += 1
        if count is not None and seen >= count:
            return


async def _live(receive: MemoryObjectReceiveStream[ResourceSample], count: int | None, interval: float) -> None:
    used: dict[int, collections.deque[float]] = {}
    seen = 0
    console = Console()
    with Live(Text("waiting for the first sample..."), console=console, auto_refresh=False) as live:
        async for sample in receive:
            seen += 1
            lines: dict[int, str] = {}
            for device in sample.devices:
                values = used.setdefault(device.index, collections.deque(maxlen=_SPARK_WIDTH))
                values.append(device.used_mb)
                lines[device.index] = sparkline(values, high=float(device.total_mb or 1), width=_SPARK_WIDTH)
            stop = "" if count is None else f" of {count}"
            title = Text(
                f"vramgate monitor - every {interval:g} s - sample {seen}{stop} at {sample.at:.1f} s (Ctrl-C to stop)",
                style="bold",
            )
            live.update(Group(title, sample_report(sample, history=lines)), refresh=True)
            if count is not None and seen >= count:
                return


@click.command("monitor")
@click.option("--json", "as_json", is_flag=True, help="Stream samples as JSON Lines (one ResourceSample per line).")
@click.option(
    "--interval",
    type=FiniteFloat(min=0.01, max=3600.0),
    default=0.5,
    show_default=True,
    help="Seconds between samples.",
)
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after this many samples.")
@click.option(
    "--simulate", multiple=True, metavar="GPU", help="Add a simulated GPU (catalog name or size). Repeatable."
)
@click.option(
    "--disk",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory whose free space to show.",
)
@click.option(
    "--history",
    "history_s",
    type=FiniteFloat(min=1.0),
    default=DEFAULT_HISTORY_S,
    show_default=True,
    help="Seconds of history the monitor keeps per device.",
)
@click.option("--no-nvml", is_flag=True, help="Do not use NVML.")
@click.option("--no-torch", is_flag=True, help="Do not use torch.cuda.")
def command(
    as_json: bool,
    interval: float,
    count: int | None,
    simulate: tuple[str, ...],
    disk: str,
    history_s: float,
    no_nvml: bool,
    no_torch: bool,
) -> None:
    """Show GPU memory (bars and a history sparkline), host RAM, CPU and disk, refreshed every INTERVAL seconds.

    With --json, write one sample per line instead, for other tools; --count stops after that many.
    """
    try:
        devices = detect(list(simulate), disk_path=disk, nvml=not no_nvml, torch=False if no_torch else "auto")
    except VramgateError as error:
        raise bad_input(error) from None
    try:
        anyio.run(lambda: _run(devices, interval=interval, count=count, as_json=as_json, history_s=history_s))
    except KeyboardInterrupt:
        pass
    finally:
        devices.close()
