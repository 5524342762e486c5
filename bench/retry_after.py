"""How well a full queue's ``Retry-After`` says when the simulated server has room, against the plans' estimate.

The example server on a simulated RTX4090-24GB with ``vramgate serve``'s defaults (runs last 1 % of their
estimate, at least 0.5 s) and a queue of one: one request runs, one waits, the next is answered 429. Printed: the
plan's estimate, the run's real length, the ``retry_after_s`` given, and how long it really took until a POST
was accepted again. The baseline, in the same run, is the same server with a runner it did not build (so it
expects runs to last their estimate, as every server did before ``[run] time_scale``).

    python bench/retry_after.py [--rounds 3] [--model t2v-A14B --width 1280 --height 720 --frames 81]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio
import httpx

from vramgate.clock import MonotonicClock
from vramgate.config import AdmissionSettings, DevicesConfig, GateConfig, MonitorConfig
from vramgate.runners import SimulatedRun
from vramgate.server import ServerSettings, create_app

SETTINGS = ServerSettings(runner="simulated", time_scale=0.01, min_run_s=0.5)
CONFIG = GateConfig(
    devices=DevicesConfig(use_real_gpus=False, simulate=("RTX4090-24GB",)),
    monitor=MonitorConfig(interval_s=0.05),
    admission=AdmissionSettings(queue_limit=1, ram_budget="256GiB"),
)


async def one_round(app: Any, body: dict[str, Any]) -> tuple[float, float, float]:
    """``(estimate, retry_after_s, measured wait until a POST is accepted)``."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
            first = (await client.post("/v1/generations", json=body)).json()["request_id"]
            while True:
                status = (await client.get(f"/v1/generations/{first}")).json()
                if status["state"] == "running":
                    break
                await anyio.sleep(0.005)
            assert (await client.post("/v1/generations", json=body)).status_code == 202
            full = await client.post("/v1/generations", json=body)
            assert full.status_code == 429, full.text
            start = time.perf_counter()
            retry_after_s: float = full.json()["retry_after_s"]
            while True:
                if (await client.post("/v1/generations", json=body)).status_code == 202:
                    break
                await anyio.sleep(0.005)
            waited = time.perf_counter() - start
            return status["plan"]["estimated_time_seconds"], retry_after_s, waited


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="ti2v-5B")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=704)
    parser.add_argument("--frames", type=int, default=121)
    args = parser.parse_args()
    body = {"model": args.model, "width": args.width, "height": args.height, "frames": args.frames}

    def server() -> Any:
        return create_app(CONFIG, settings=SETTINGS, metrics=False)

    def baseline() -> Any:
        runner = SimulatedRun(MonotonicClock(), time_scale=SETTINGS.time_scale, min_seconds=SETTINGS.min_run_s)
        return create_app(CONFIG, settings=SETTINGS, runner=runner, metrics=False)

    for name, build in (("server", server), ("baseline (estimate)", baseline)):
        for _ in range(args.rounds):
            estimate, retry, waited = anyio.run(one_round, build(), body)
            run_s = max(SETTINGS.min_run_s, estimate * SETTINGS.time_scale)
            print(
                f"{name:20s} plan estimate {estimate:7.1f} s  run {run_s:5.2f} s  "
                f"retry_after_s {retry:7.2f}  room after {waited:5.2f} s  ratio {retry / waited:6.2f}"
            )


if __name__ == "__main__":
    main()
