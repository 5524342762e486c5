"""``vramgate replay LOG``: replay a message log through its cores and check the decisions are the same."""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from vramgate.errors import DecodeError, ReplayError


@click.command(name="replay")
@click.argument("log", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--import",
    "modules",
    multiple=True,
    metavar="MODULE",
    help="Import MODULE first (it registers core kinds with vramgate.replay.register_core_kind). Repeatable.",
)
def command(log: Path, modules: tuple[str, ...]) -> None:
    """Replay LOG: feed each recorded core its inputs and compare what it sends with what was recorded.

    Exit status 0 when identical, 1 at the first divergence (sequence number, expected, got), 2 when the log
    cannot be read or a core cannot be rebuilt.
    """
    from vramgate.replay import replay

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            click.echo(f"error: cannot import {module}: {exc}", err=True)
            raise SystemExit(2) from None
    try:
        result = replay(log)
    except (DecodeError, ReplayError) as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    click.echo(result.summary())
    if not result.identical:
        raise SystemExit(1)
