"""``vramgate plot LOG -o timeline.png``: a recorded message log as a memory timeline per device."""

from __future__ import annotations

import click

from vramgate.cli._errors import IMAGE_SUFFIXES, OutputFile, bad_input
from vramgate.errors import VramgateError


@click.command("plot")
@click.argument("log", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    default="timeline.png",
    show_default=True,
    type=OutputFile(IMAGE_SUFFIXES),
    help="PNG, SVG or PDF.",
)
@click.option("--width", default=1400, show_default=True, type=click.IntRange(400, 8000), help="Width in pixels.")
def command(log: str, output: str, width: int) -> None:
    """Draw each device's capacity, reserved and measured memory over time, and the runs as bars."""
    from vramgate.plot import plot_timeline, read_timeline

    try:
        timeline = read_timeline(log)
        size = plot_timeline(timeline, output, width_px=width, title=f"vramgate timeline: {click.format_filename(log)}")
    except VramgateError as error:
        raise bad_input(error) from None
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(timeline.counts().items())) or "no runs"
    click.echo(
        f"{output}: {size[0]}x{size[1]} px, {len(timeline.devices)} devices, {timeline.duration_s:.1f} s; {counts}"
    )
