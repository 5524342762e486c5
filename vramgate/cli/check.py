"""``vramgate check``: what hardware vramgate can see here, and what it cannot."""

from __future__ import annotations

import sys

import click
import msgspec
from rich.console import Console

from vramgate.cli._errors import bad_input
from vramgate.errors import VramgateError
from vramgate.hardware.detect import detected
from vramgate.hardware.report import sample_report


@click.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the sample as JSON (a ResourceSample message).")
@click.option(
    "--simulate",
    "simulate",
    multiple=True,
    metavar="GPU",
    help="Add a simulated GPU (a catalog name such as H100-80GB, or a size such as 24GB). Repeatable.",
)
@click.option(
    "--disk",
    "disk",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Output directory whose free space to report.",
)
@click.option("--no-nvml", is_flag=True, help="Do not use NVML.")
@click.option("--no-torch", is_flag=True, help="Do not use torch.cuda.")
def command(as_json: bool, simulate: tuple[str, ...], disk: str, no_nvml: bool, no_torch: bool) -> None:
    """Print the GPUs (memory, and which backend measured it), host RAM, CPU, disk and warnings.

    Missing drivers or libraries are warnings, not errors: the command exits 0 with what it could measure.
    """
    try:
        with detected(list(simulate), disk_path=disk, nvml=not no_nvml, torch=False if no_torch else "auto") as devices:
            sample = devices.sample(at=0.0)
    except VramgateError as error:
        raise bad_input(error) from None
    if as_json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(sample)).decode() + "\n")
        return
    console = Console()
    console.print(sample_report(sample))
