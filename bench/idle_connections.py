"""Idle connections a real uvicorn still holds after the keep-alive, with and without the server's timers.

Opens ``--connections`` TCP connections to the example server on loopback that never send a byte, waits
``keep_alive_s + 1`` seconds, and counts how many the server closed. The baseline, in the same run, is a plain
``uvicorn.Config`` (uvicorn's keep-alive counts only between requests).

    python bench/idle_connections.py [--connections 1000] [--keep-alive 2]
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio
import anyio.abc
import uvicorn

from vramgate.config import AdmissionSettings, DevicesConfig, GateConfig, ServerConfig
from vramgate.server import ServerSettings, create_app
from vramgate.server.connections import uvicorn_config

CONFIG = GateConfig(
    devices=DevicesConfig(use_real_gpus=False, simulate=("RTX4090-24GB",)),
    admission=AdmissionSettings(ram_budget="256GiB"),
)


async def closed(stream: anyio.abc.SocketStream) -> bool:
    with anyio.move_on_after(0.05):
        try:
            await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            return True
    return False


async def held_after(config_of: Any, connections: int, wait_s: float) -> tuple[int, int]:
    """``(closed, still open)`` after ``wait_s``."""
    app = create_app(CONFIG, settings=ServerSettings(runner="simulated"), metrics=False)
    server = uvicorn.Server(config_of(app))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        while True:
            if server.started:
                break
            await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        streams = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(connections)]
        await anyio.sleep(wait_s)
        gone = 0
        for stream in streams:
            gone += await closed(stream)
            await stream.aclose()
        server.should_exit = True
    return gone, connections - gone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--keep-alive", type=int, default=2)
    args = parser.parse_args()
    limits = ServerConfig(keep_alive_s=args.keep_alive, max_connections=args.connections + 10)
    wait_s = args.keep_alive + 1.0

    def timed(app: Any) -> uvicorn.Config:
        return uvicorn_config(app, host="127.0.0.1", port=0, limits=limits, log_level="warning")

    def plain(app: Any) -> uvicorn.Config:
        return uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_keep_alive=args.keep_alive)

    for name, config_of in (("server (uvicorn_config)", timed), ("baseline (plain uvicorn)", plain)):
        gone, held = anyio.run(held_after, config_of, args.connections, wait_s)
        print(f"{name:26s} {args.connections} idle connections, after {wait_s:g} s: {gone} closed, {held} held")


if __name__ == "__main__":
    main()
