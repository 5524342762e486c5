"""The ``vramgate`` command. Each subcommand is a small module in this package, imported only when used."""

from __future__ import annotations

import importlib

import click

from vramgate._version import __version__

#: subcommand name -> (module in ``vramgate.cli``, one-line help). The module defines ``command``.
COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("check", "Report the GPUs, host RAM, CPU and disk that vramgate can measure here."),
    "cluster": ("cluster", "Run vramgate on a local Ray cluster: node gates, a memory-aware router (vramgate[ray])."),
    "demo": ("demo", "Run a burst of mixed Wan2.2 requests through a gate, live, and summarize (the main job)."),
    "estimate": ("estimate", "Estimate peak VRAM per GPU, host RAM and time of one run, with components."),
    "monitor": ("monitor", "Show live GPU and host memory, or stream samples as JSON Lines."),
    "optimize": ("optimize", "Find the plan with the least quality loss that fits a GPU and the host RAM."),
    "profile": ("profile", "Derive a model profile's activation memory by tracing its DiT (needs vramgate[trace])."),
    "plot": ("plot", "Draw a message log's memory timeline per device, with the runs as bars (PNG)."),
    "replay": ("replay", "Replay a message log and check that it reproduces the same decisions."),
    "serve": ("serve", "Serve the example HTTP generation server with one gate (POST /v1/generations)."),
    "simulate": ("simulate", "Run a trace against simulated GPUs with vramgate and the baseline policies."),
    "validate": ("validate", "Decode a JSON or JSON Lines file of messages and report every error."),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module = importlib.import_module(f"vramgate.cli.{entry[0]}")
        command: click.Command = module.command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vramgate")
def main() -> None:
    """vramgate: keep GPU video generation servers from running out of memory, and keep their GPUs busy."""
