"""Where a POST's CPU goes: bench/server.py's in-process drive under cProfile, split by what the code does.

Each mode drives the server of ``bench/server.py`` (a real gate on a simulated H100-80GB, in-memory store) with
``--requests`` POSTs, 32 concurrent, after a warm-up, and the bare FastAPI endpoint the same way. The event loop's
own thread is profiled (cProfile: its overhead inflates every figure alike; compare shares, not absolutes, with
the unprofiled ``bench/server.py``); each function's own time (not its callees') goes to one part:

* ``load generator``: the httpx client (and the URL, cookie and header parsing it does);
* ``HTTP layer``: Starlette and FastAPI; ``middleware``: the ``Host``/``Content-Type`` guard;
* ``handler``: the server's routes; ``decode``: msgspec decoding of bodies and rows; ``encode``: msgspec
  encoding (answers, stored rows and statuses);
* ``store``: the request store and SQLite (time in SQLite includes waiting for the GIL that another thread
  holds, e.g. the post-run cleanup's ``gc.collect()``);
* ``records``: what the server keeps of each request (events, status, waiting for its place or end);
  ``service``: accepting, running and ending requests (the service's own code);
* ``gate``: the gate's pipeline (vramgate outside ``vramgate/server``: actors, cores, tickets, simulated runs);
* ``event loop``: asyncio, anyio, sniffio, contextlib and builtins not named above (shared by everything).

Modes: ``at once`` (``position_timeout_s=0``; until the last answer), ``waits`` (the default wait for the queue
position) and ``until all ended`` (answering at once, until every accepted request ended: its pipeline and run
included).

    python bench/server_profile.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import server as bench  # the in-process bench's apps and drive

PARTS = (
    "load generator",
    "HTTP layer",
    "middleware",
    "handler",
    "decode",
    "encode",
    "store",
    "records",
    "service",
    "logging",
    "gate",
    "event loop",
)
_CLIENT_FILES = ("/httpx/", "/httpcore/", "/h11/", "urllib/parse.py", "cookiejar.py", "email/", "ipaddress.py")


def part(filename: str, function: str) -> str:
    """The part a function's own time belongs to."""
    if any(name in filename for name in _CLIENT_FILES):
        return "load generator"
    if "/starlette/" in filename or "/fastapi/" in filename:
        return "HTTP layer"
    if "vramgate/server/_security" in filename:
        return "middleware"
    if "vramgate/server/_submit" in filename or "vramgate/server/app.py" in filename:
        return "handler"
    if "vramgate/server/store" in filename or "sqlite3" in function:
        return "store"
    if "vramgate/server/_records" in filename or "vramgate/server/_public" in filename:
        return "records"
    if "vramgate/server/" in filename:
        return "service"
    if "msgspec" in function and "decode" in function:
        return "decode"
    if "msgspec" in function and "encode" in function:
        return "encode"
    if "/logging/" in filename:
        return "logging"
    if "/vramgate/" in filename:
        return "gate"
    return "event loop"


async def profile(make: Callable[[], Any], requests: int, until_ended: bool) -> tuple[dict[str, float], float]:
    """Own time per part (seconds) and the process's CPU seconds (every thread) for ``requests`` POSTs."""
    app = make()
    async with app.router.lifespan_context(app):
        await bench.drive(app, 320, 32, until_ended=until_ended)  # warm up
        profiler = cProfile.Profile()
        cpu = time.process_time()
        profiler.enable()
        await bench.drive(app, requests, 32, until_ended=until_ended)
        profiler.disable()
        cpu = time.process_time() - cpu
    parts: dict[str, float] = collections.defaultdict(float)
    stats: Any = pstats.Stats(profiler).stats
    for (filename, _, function), (_, _, own, _, _) in stats.items():
        parts[part(filename, function)] += own
    return parts, cpu


async def main(requests: int) -> None:
    modes: dict[str, tuple[Callable[[], Any], bool]] = {
        "bare": (bench.bare_app, False),
        "at once": (lambda: bench.gate_app(0.0), False),
        "waits": (lambda: bench.gate_app(1.0), False),
        "until all ended": (lambda: bench.gate_app(0.0), True),
    }
    results = {name: await profile(make, requests, until) for name, (make, until) in modes.items()}
    print(f"cProfile, {requests} POSTs x 32 concurrent, own time per POST in microseconds (profiled)")
    columns = list(results.values())
    print(f"{'':16s}" + "".join(f"{name:>17s}" for name in results))
    for name in PARTS:
        print(f"{name:16s}" + "".join(f"{parts.get(name, 0.0) / requests * 1e6:17.1f}" for parts, _ in columns))
    print(f"{'profiled total':16s}" + "".join(f"{sum(parts.values()) / requests * 1e6:17.1f}" for parts, _ in columns))
    print(f"{'process CPU':16s}" + "".join(f"{cpu / requests * 1e6:17.1f}" for _, cpu in columns))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    anyio.run(main, args.requests)
