"""``vramgate demo``: the main job, end to end, on any machine."""

from __future__ import annotations

import anyio
import click
from rich.console import Console

from vramgate.cli._errors import FiniteFloat, OutputFile, bad_input
from vramgate.demo import run_demo, summary_table
from vramgate.errors import VramgateError


@click.command("demo")
@click.option(
    "--log",
    "log_path",
    default="vramgate-demo.jsonl",
    show_default=True,
    type=OutputFile(),
    help="Message log to write.",
)
@click.option("--simulate/--no-simulate", default=None, help="Force simulated GPUs (default: when none is found).")
@click.option(
    "--time-scale",
    default=0.007,
    show_default=True,
    type=FiniteFloat(min=1e-6, max=1.0),
    help="Compress run time: demo seconds per estimated GPU second.",
)
@click.option(
    "--requests",
    "requests_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="JSON Lines file of GenerationRequests (default: the burst shipped with vramgate).",
)
@click.option("--no-live", is_flag=True, help="No live view (for logs and CI).")
def command(log_path: str, simulate: bool | None, time_scale: float, requests_path: str | None, no_live: bool) -> None:
    """Run a burst of ~20 mixed Wan2.2 requests through a gate and summarize what happened."""
    from vramgate.demo import demo_requests

    console = Console()
    try:
        requests = demo_requests(requests_path) if requests_path else None
    except (VramgateError, OSError) as exc:
        raise bad_input(exc) from None

    async def main() -> None:
        result = await run_demo(
            log_path=log_path,
            simulate=simulate,
            time_scale=time_scale,
            requests=requests,
            console=console,
            live=not no_live,
        )
        console.print(summary_table(result, console.width))
        states: dict[str, int] = {}
        for row in result.rows:
            states[row.state] = states.get(row.state, 0) + 1
        counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        console.print(
            f"{len(result.rows)} requests in {result.seconds:.1f} s: {counts}; over-commits: {result.over_commits}"
        )
        console.print(f"message log: {result.log_path}")
        console.print(f"replay it:   vramgate replay {result.log_path}")

    anyio.run(main)
