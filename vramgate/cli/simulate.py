"""``vramgate simulate``: run a trace against simulated GPUs with one policy, or every policy side by side.

vramgate simulate --trace bench/traces/mixed-8xh100.jsonl --devices 8xH100-80GB --policy all
vramgate simulate --trace day.jsonl --devices 2xH100-80GB,RTX4090-24GB --policy vramgate --faults all --json
"""

from __future__ import annotations

import sys

import click

from vramgate.cli._errors import IMAGE_SUFFIXES, FiniteFloat, OutputFile, bad_input
from vramgate.errors import VramgateError
from vramgate.messages.codec import encode_json


@click.command(name="simulate")
@click.option(
    "--trace", "trace_path", required=True, type=click.Path(exists=True, dir_okay=False), help="JSON Lines trace."
)
@click.option("--devices", required=True, help="Simulated GPUs, e.g. 2xH100-80GB,RTX4090-24GB.")
@click.option(
    "--policy",
    default="all",
    show_default=True,
    help="vramgate, vramgate-cold, serial, check-then-run, retry-on-oom, seed, a comma-separated list, or all.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the truth noise and the faults.")
@click.option(
    "--faults",
    default=None,
    help="Fault spec: all, none, or kind=rate,... (crash, oom, cancel, stale, monitor, outside, lost, core).",
)
@click.option(
    "--mem-spread",
    default=0.02,
    show_default=True,
    type=FiniteFloat(0.0, 1.0),
    help="Log-normal sigma of true/estimated peak memory when the trace gives none.",
)
@click.option(
    "--time-spread",
    default=0.1,
    show_default=True,
    type=FiniteFloat(0.0, 1.0),
    help="Log-normal sigma of true/estimated time when the trace gives none.",
)
@click.option(
    "--host-ram-gib",
    default=None,
    type=click.IntRange(min=1, max=1 << 20),
    help="The simulated host's RAM in GiB (default: 256 per device).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per policy (JSON Lines).")
@click.option(
    "--plot",
    "plot_path",
    default=None,
    type=OutputFile(IMAGE_SUFFIXES),
    help="Draw the memory timeline of each device to this PNG (the first policy; needs matplotlib).",
)
def command(
    trace_path: str,
    devices: str,
    policy: str,
    seed: int,
    faults: str | None,
    mem_spread: float,
    time_spread: float,
    host_ram_gib: int | None,
    as_json: bool,
    plot_path: str | None,
) -> None:
    """Simulate a trace of requests against simulated GPUs on a virtual clock."""
    from vramgate.policy.estimate import Estimator
    from vramgate.simulate import load_trace, parse_devices, parse_faults
    from vramgate.simulate._truth import Truth
    from vramgate.simulate._weights import SimulatedHost
    from vramgate.simulate.report import render_table
    from vramgate.simulate.run import policy_names, simulate

    try:
        trace = load_trace(trace_path)
        specs = parse_devices(devices)
        trace.check_devices(len(specs))
        spec = parse_faults(faults)
        names = policy_names(policy)
        estimator = Estimator()
        truth = Truth(estimator, specs[0], mem_spread=mem_spread, time_spread=time_spread)
        host = SimulatedHost(ram_mb=host_ram_gib * 1024 if host_ram_gib is not None else None)
        results = []
        for index, name in enumerate(names):
            result, sim = simulate(
                trace,
                specs,
                name,
                seed=seed,
                faults=spec,
                estimator=estimator,
                truth=truth,
                host=host,
                timeline=plot_path is not None and index == 0,
            )
            results.append(result)
            if plot_path is not None and index == 0:
                from vramgate.simulate.plot import plot_timeline

                plot_timeline(sim, plot_path)
    except VramgateError as exc:
        raise bad_input(exc) from None
    if as_json:
        for result in results:
            sys.stdout.buffer.write(encode_json(result) + b"\n")
        return
    from rich.console import Console

    console = Console()
    console.print(
        f"{trace_path}: {len(trace.arrivals)} requests on {devices}, seed {seed}"
        + (f", faults {faults}" if faults else "")
    )
    console.print(render_table(results), highlight=False, soft_wrap=True)
