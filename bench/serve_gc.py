"""What ``vramgate serve``'s generation-0 threshold buys: requests per second with it and with the interpreter's.

    python bench/serve_gc.py [--seconds 5] [--rounds 3] [--requests 4000]

Prints, from one run:

* the share of the in-process server's CPU that the garbage collector takes, answering at once (``bench/server.py``'s
  server and drive, ``--requests`` POSTs, a ``gc.callbacks`` timer per generation);
* on uvicorn over loopback with wrk (``apt-get install -y wrk``), as ``bench/server_wrk.py`` runs it: ``vramgate
  serve`` answering at once on runs that take no time, with its threshold
  (:data:`~vramgate.server.app.SERVE_GEN0_THRESHOLD`) and with the interpreter's (``serve(gen0_threshold=None)``),
  alternating, ``--rounds`` times each; and the bare FastAPI endpoint with and without the same threshold, to show
  what the setting does for a server that keeps nothing alive per request.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import server as bench  # the in-process server and drive
from server_wrk import CONFIG, ROOT, free_port, post_script, stop, wait_listening, wrk

from vramgate.server.app import SERVE_GEN0_THRESHOLD

#: Run in the server's process before anything else: the threshold it serves with (``None``: the interpreter's).
_PRELUDE = "import gc, sys, vramgate.server.app as app; app.serve.__kwdefaults__['gen0_threshold'] = {threshold}"
_SERVE = "; from vramgate.cli import main; sys.argv = ['vramgate', *sys.argv[1:]]; main()"
_BARE = (
    "; import uvicorn; sys.path.insert(0, sys.argv[1]); from server import bare_app; "
    "app.young_collections_every({threshold}).__enter__(); "
    "uvicorn.run(bare_app(), host='127.0.0.1', port=int(sys.argv[2]))"
)


async def collector_share(requests: int) -> tuple[float, dict[int, tuple[int, float]]]:
    """The collector's share of the process's CPU over ``requests`` in-process POSTs answering at once, and per
    generation the collections and their seconds."""
    spent: dict[int, tuple[int, float]] = {}
    started = [0.0]

    def timer(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        count, seconds = spent.get(info["generation"], (0, 0.0))
        spent[info["generation"]] = (count + 1, seconds + time.perf_counter() - started[0])

    app = bench.gate_app(0.0)
    async with app.router.lifespan_context(app):
        await bench.drive(app, 320, 32, until_ended=False)  # warm up
        gc.callbacks.append(timer)
        cpu = time.process_time()
        try:
            await bench.drive(app, requests, 32, until_ended=False)
        finally:
            cpu = time.process_time() - cpu
            gc.callbacks.remove(timer)
    return sum(seconds for _, seconds in spent.values()) / cpu, spent


def rate(kind: str, threshold: int | None, workdir: Path, script: Path, seconds: float) -> float:
    """Accepted requests per second of one server process under wrk."""
    port = free_port()
    prelude = _PRELUDE.format(threshold=threshold)
    if kind == "serve":
        config = workdir / "gate.toml"
        config.write_text(CONFIG)
        argv = [
            *(sys.executable, "-c", prelude + _SERVE, "serve", "--port", str(port), "--config", str(config)),
            *("--simulate", "H100-80GB", "--runner", "simulated", "--time-scale", "1e-6", "--min-run-s", "0"),
            *("--store", str(workdir / f"store-{port}.sqlite"), "--position-timeout", "0"),
        ]
    else:
        argv = [sys.executable, "-c", prelude + _BARE.format(threshold=threshold), str(ROOT / "bench"), str(port)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    try:
        wait_listening(port, process)
        wrk(port, script, 1.0, 32)  # warm up
        accepted, _, _ = wrk(port, script, seconds, 32)
    finally:
        stop(process)
    return accepted


def main(args: argparse.Namespace) -> None:
    share, spent = anyio.run(collector_share, args.requests)
    per_generation = ", ".join(
        f"generation {g}: {count} in {seconds * 1e3:.0f} ms" for g, (count, seconds) in sorted(spent.items())
    )
    print(f"in process, {args.requests} POSTs answering at once: the collector took {share:.1%} of the CPU")
    print(f"  ({per_generation}; threshold {gc.get_threshold()[0]})")
    if shutil.which("wrk") is None:
        raise SystemExit("the uvicorn part needs wrk: apt-get install -y wrk")
    variants = [(kind, threshold) for kind in ("serve", "bare") for threshold in (SERVE_GEN0_THRESHOLD, None)]
    rates: dict[tuple[str, int | None], list[float]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory(prefix="vramgate-gc-") as tmp:
        workdir = Path(tmp)
        script = post_script(workdir)
        for _ in range(args.rounds):
            for variant in variants:
                rates[variant].append(rate(*variant, workdir, script, args.seconds))
    print(f"uvicorn, wrk -t1 -c32 -d{args.seconds:g}s, {args.rounds} alternating rounds, accepted/s:")
    for (kind, threshold), found in rates.items():
        name = "vramgate serve, at once" if kind == "serve" else "bare FastAPI"
        setting = f"generation 0 every {threshold:,}" if threshold is not None else "the interpreter's threshold"
        low, high = min(found), max(found)
        print(f"  {name:24s} {setting:30s} {low:6.0f}-{high:.0f} (mean {statistics.mean(found):.0f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=4000)
    main(parser.parse_args())
