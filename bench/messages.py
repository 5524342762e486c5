"""Request-scoped messages per request in the demo's log, against the code before the request core, in one run.

    python bench/messages.py [--base 3789eff] [--time-scale 0.007]

Runs ``vramgate demo`` (simulated devices, no live view) twice, each in a subprocess: with this tree's code, and
with the base commit's code checked out into a temporary ``git worktree`` (the baseline). From each log it counts
the records whose message names, in its top-level ``request_id``, a request the run accepted (a
``RequestAccepted``), progress reports (``RunProgress``) left out, and prints them per request, by message type,
sender and recipient. Questions to the estimator and the optimizer are addressed to the question (shared by every
request that asks it), before as now, so they are not counted; the total of records per request is printed too.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = """
import sys, anyio
from rich.console import Console
from vramgate.demo import run_demo

async def main() -> None:
    result = await run_demo(log_path=sys.argv[1], simulate=True, time_scale=float(sys.argv[2]),
                            console=Console(quiet=True), live=False)
    states = [row.state for row in result.rows]
    print(f"{states.count('completed')} completed, {states.count('rejected')} rejected, "
          f"{states.count('timed_out')} timed out; over-commits: {result.over_commits}")

anyio.run(main)
"""


def run_demo(tree: Path, log: Path, time_scale: float) -> str:
    """The demo's outcome line, running ``tree``'s code; its log goes to ``log``."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VRAMGATE_")}, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", DEMO, str(log), str(time_scale)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def count(log: Path) -> tuple[int, collections.Counter[tuple[str, str, str]], int]:
    """Requests accepted, request-scoped records by (type, sender, recipient), and all records."""
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    records = [r for r in records if "message" in r]
    accepted = {r["message"]["request_id"] for r in records if r["message"].get("type") == "RequestAccepted"}
    scoped: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for record in records:
        message = record["message"]
        if message.get("type") != "RunProgress" and message.get("request_id") in accepted:
            scoped[(message["type"], record["sender"], record["recipient"])] += 1
    return len(accepted), scoped, len(records)


def show(name: str, outcome: str, log: Path) -> float:
    requests, scoped, total = count(log)
    per = sum(scoped.values()) / requests
    print(f"## {name}: {outcome}")
    print(f"{per:.2f} request-scoped messages per request ({sum(scoped.values())} for {requests} requests)")
    print(f"all records: {total} ({total / requests:.1f} per request, samples and ticks included)")
    for (kind, sender, recipient), n in sorted(scoped.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {n / requests:5.2f}  {kind:<20} {sender} -> {recipient}")
    print()
    return per


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="3789eff", help="the baseline's commit")
    parser.add_argument("--time-scale", type=float, default=0.007)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vramgate-messages-") as tmp:
        work = Path(tmp)
        base = work / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        try:
            now = show("this tree", run_demo(ROOT, work / "now.jsonl", args.time_scale), work / "now.jsonl")
            before = show(f"baseline {args.base}", run_demo(base, work / "base.jsonl", args.time_scale),
                          work / "base.jsonl")  # fmt: skip
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    print(f"request-scoped messages per request: {now:.2f} (baseline {before:.2f}); target at most 9")
    return 0 if now <= 9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
