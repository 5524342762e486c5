"""``vramgate cluster demo``: a local Ray cluster, a mixed burst through three routers side by side.

vramgate cluster demo [--nodes 2] [--requests 40] [--kill-node] [--json]

Ray starts only in a loopback-only network namespace: run as root, the command re-executes itself inside one
(``unshare --net``); otherwise it refuses and says how to run it.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import click

from vramgate.cli._errors import FiniteFloat
from vramgate.messages.codec import encode_json


class _Unavailable(click.ClickException):
    exit_code = 2


@click.group(name="cluster")
def command() -> None:
    """vramgate on a Ray cluster: node gates and a memory-aware router (needs vramgate[ray])."""


@command.command(name="demo")
@click.option("--nodes", default=2, show_default=True, type=click.IntRange(1, 8), help="Raylets (nodes) to start.")
@click.option("--requests", default=40, show_default=True, type=click.IntRange(1, 1000), help="Requests in the burst.")
@click.option("--kill-node", is_flag=True, help="Kill a node mid-burst (its requests in flight are routed again).")
@click.option(
    "--time-scale",
    default=0.001,
    show_default=True,
    type=FiniteFloat(min=1e-5, max=1.0),
    help="Compress run time: demo seconds per estimated GPU second.",
)
@click.option("--log-dir", default="vramgate-cluster-logs", show_default=True, help="Each node's and router's log.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per router (router: vramgate, random, pow2).")
def demo(nodes: int, requests: int, kill_node: bool, time_scale: float, log_dir: str, as_json: bool) -> None:
    """Run a mixed burst through the memory-aware router, random and power-of-two routing, in one run."""
    if kill_node and nodes < 2:
        raise click.UsageError("--kill-node needs at least 2 nodes (--nodes 2)")
    if importlib.util.find_spec("ray") is None:
        raise _Unavailable("the cluster demo needs Ray: pip install -e '.[ray]'")
    from vramgate.cluster.netns import NotIsolated, ensure_isolated

    try:
        ensure_isolated()  # re-executes this command inside a loopback-only namespace when it can
    except NotIsolated as error:
        raise _Unavailable(str(error)) from None
    from vramgate.cluster.demo import run_cluster_demo

    # Ray's processes print to the standard output (a raylet's death, say): they go to the standard error,
    # so that the output is the table or the JSON objects only.
    out = os.dup(1)
    sys.stdout.flush()
    os.dup2(2, 1)
    try:
        reports = run_cluster_demo(
            nodes=nodes, requests=requests, kill_node=kill_node, time_scale=time_scale, log_dir=log_dir
        )
    finally:
        sys.stdout.flush()
        os.dup2(out, 1)
        os.close(out)
    if as_json:
        for report in reports:
            click.echo(encode_json(report).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{requests} requests on {nodes} nodes" + (", one killed mid-burst" if kill_node else ""))
    columns = ("router", "requests", "completed", "rejected", "other", "makespan s", "over-commits", "violations")
    for name in (*columns, "re-routed"):
        table.add_column(name, justify="left" if name == "router" else "right", no_wrap=True)
    for r in reports:
        table.add_row(
            r.router,
            str(r.requests),
            str(r.completed),
            str(r.rejected),
            str(r.failed + r.other),
            f"{r.makespan_s:.1f}",
            str(r.over_commits),
            str(r.violations),
            str(r.rerouted),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    console.print(table)
    click.echo("other: failed, timed out or cancelled; violations: requests without exactly one terminal state")
    click.echo(f"logs: {log_dir}/ (one per node gate and per router)")
