"""Requests per second the example server accepts, against a bare FastAPI endpoint that does nothing.

Both apps are driven in-process by httpx over the ASGI transport (no sockets), ``CONCURRENCY`` clients at a time,
``REQUESTS`` POSTs each, best of ``ROUNDS`` rounds (a round measures every figure once, in turn, so that the bare
endpoint and the server see the box in the same minutes). The server runs a real gate on a simulated H100-80GB
with a large queue, the monitor's default sampling interval (as ``vramgate serve`` and ``bench/server_wrk.py``
run it) and the simulated runner with near-zero run time (the runs still happen, in the
same process). Two server figures: answering at once (``position_timeout_s=0``) and the default, which waits for
the request's queue position (one admission decision) before answering. Requests are kept in the server's
store in memory, and, in one figure, in a SQLite file (WAL) as ``vramgate serve`` keeps them. The
figures count until the last answer, except "until all ended": answering at once, until every accepted request
ended (its pipeline and run, which a burst of answers leaves behind, included). The last two are the first two
on runs of the server's default length (``time_scale=0.01``, at least 0.5 s each, as ``vramgate serve`` runs
them): the burst then queues behind the runs, as it would behind real generations, and a POST that waits answers
with its place in the queue. Each figure is printed per second of wall time and per second of the process's CPU
time (a shared box's other load moves the first more than the second).

    python bench/server.py [--requests 2000] [--concurrency 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import Response

from vramgate.config import AdmissionSettings, DevicesConfig, GateConfig
from vramgate.messages import GenerationRequest, RunOptions
from vramgate.server import ServerSettings, create_app

BODY = msgspec.json.encode(
    GenerationRequest(
        model="ti2v-5B",
        width=320,
        height=320,
        frames=5,
        steps=2,
        options=RunOptions(t5_cpu=True, offload_model=True, sequential_offload=True),
    )
)


def bare_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/generations", status_code=202)
    async def accept(request: Request) -> Response:
        return Response(content=b'{"request_id":"x","state":"queued"}', status_code=202, media_type="application/json")

    return app


def gate_app(position_timeout_s: float, store_path: str | None = None, *, queued: bool = False) -> Any:
    """The server on a simulated H100-80GB: runs that take no time, or (``queued``) runs of the serve defaults."""
    config = GateConfig(
        devices=DevicesConfig(use_real_gpus=False, simulate=("H100-80GB",)),
        admission=AdmissionSettings(queue_limit=1_000_000, ram_budget="4TiB"),
    )
    settings = ServerSettings(
        runner="simulated",
        time_scale=0.01 if queued else 1e-6,
        min_run_s=0.5 if queued else 0.0,
        position_timeout_s=position_timeout_s,
        finished_limit=1000,
        store_path=store_path,
    )
    return create_app(config, settings=settings, metrics=False)


def fresh_store() -> str:
    """A new SQLite request store file (the default store is in memory)."""
    return str(Path(tempfile.mkdtemp(prefix="vramgate-bench-")) / "store.sqlite")


async def drive(app: Any, requests: int, concurrency: int, *, until_ended: bool = False) -> tuple[float, float]:
    """Accepted requests per second of wall time, and per second of this process's CPU time (every thread): on a
    shared box the second one moves less with what else runs there. ``until_ended``: the time counts until the
    server holds no live request (each one's whole pipeline and run included), not only until the last answer."""
    accepted = 0
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        per_client = requests // concurrency

        async def one() -> None:
            nonlocal accepted
            for _ in range(per_client):
                response = await client.post(
                    "/v1/generations", content=BODY, headers={"content-type": "application/json"}
                )
                accepted += response.status_code == 202

        start, cpu = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(one)
        if until_ended:
            for record in list(app.state.service.live.values()):
                await record.wait_ended()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert accepted == per_client * concurrency, accepted
    return accepted / elapsed, accepted / cpu


async def measure(
    make: Callable[[], Any], requests: int, concurrency: int, rounds: int, *, until_ended: bool = False
) -> tuple[float, float]:
    best, best_cpu = 0.0, 0.0
    for _ in range(rounds):
        app = make()
        async with app.router.lifespan_context(app):
            rate, per_cpu = await drive(app, requests, concurrency, until_ended=until_ended)
            best, best_cpu = max(best, rate), max(best_cpu, per_cpu)
    return best, best_cpu


async def main(requests: int, concurrency: int, rounds: int) -> None:
    figures: dict[str, tuple[float, float]] = {}
    runs: dict[str, Callable[[], Awaitable[tuple[float, float]]]] = {
        "bare FastAPI endpoint": lambda: measure(bare_app, requests, concurrency, 1),
        "vramgate server, answers at once": lambda: measure(lambda: gate_app(0.0), requests, concurrency, 1),
        "vramgate server, waits for position": lambda: measure(lambda: gate_app(1.0), requests, concurrency, 1),
        "vramgate server, at once, SQLite file": lambda: measure(
            lambda: gate_app(0.0, fresh_store()), requests, concurrency, 1
        ),
        "vramgate server, at once, until all ended": lambda: measure(
            lambda: gate_app(0.0), requests, concurrency, 1, until_ended=True
        ),
        "burst queues behind runs, at once": lambda: measure(
            lambda: gate_app(0.0, queued=True), requests, concurrency, 1
        ),
        "burst queues behind runs, waits for position": lambda: measure(
            lambda: gate_app(1.0, queued=True), requests, concurrency, 1
        ),
    }
    # Round by round, every figure once a round: the bare endpoint and the server see the box in the same minutes.
    for _ in range(rounds):
        for name, run in runs.items():
            rate, per_cpu = await run()
            best, best_cpu = figures.get(name, (0.0, 0.0))
            figures[name] = (max(best, rate), max(best_cpu, per_cpu))
    bare, bare_cpu = figures["bare FastAPI endpoint"]
    print(f"in-process httpx over ASGI, {requests} POSTs x {concurrency} concurrent, best of {rounds}")
    print(f"{'':46s} {'req/s':>8s} {'of bare':>8s}   {'req/CPU-s':>9s} {'of bare':>8s}")
    for name, (rate, per_cpu) in figures.items():
        print(f"{name:46s} {rate:8.0f} {rate / bare:8.2f}   {per_cpu:9.0f} {per_cpu / bare_cpu:8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    anyio.run(main, args.requests, args.concurrency, args.rounds)
