"""The server under a real uvicorn on loopback, spoken to over raw sockets: clients that vanish or stall."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import anyio.abc
import msgspec
import pytest
import uvicorn

from vramgate.config import ServerConfig

from ._helpers import SMALL, running

pytestmark = pytest.mark.anyio

BODY = msgspec.json.encode(SMALL)


def head(port: int, length: int) -> bytes:
    return (
        f"POST /v1/generations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def closed_within(stream: anyio.abc.SocketStream, limit_s: float) -> bytes:
    """Everything the server sends until it closes the connection (fails after ``limit_s``)."""
    received = b""
    with anyio.fail_after(limit_s):
        while True:
            try:
                received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                return received


async def drip(stream: anyio.abc.SocketStream, data: bytes) -> None:
    """Send ``data`` a byte every 0.1 s (fails after 5 s)."""
    with anyio.fail_after(5):
        for byte in data:
            await stream.send(bytes([byte]))
            await anyio.sleep(0.1)


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info is not None], caplog.text
    assert "Traceback" not in caplog.text
    assert "Exception in ASGI application" not in caplog.text


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn runs on asyncio
async def test_a_client_gone_mid_body_leaves_no_traceback(anyio_backend: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    def plain(app: Any) -> uvicorn.Config:
        return uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on")

    async with running(plain) as (app, port):
        for _ in range(3):
            stream = await anyio.connect_tcp("127.0.0.1", port)
            await stream.send(head(port, len(BODY)) + BODY[:20])
            await anyio.sleep(0.1)
            await stream.aclose()
        await anyio.sleep(0.5)
        assert app.state.service.health().tracked == 0
    assert_no_traceback(caplog)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_idle_connection_is_closed_after_the_keep_alive(anyio_backend: str) -> None:
    from vramgate.server.connections import uvicorn_config

    limits = ServerConfig(keep_alive_s=1, request_timeout_s=30)
    async with running(lambda app: uvicorn_config(app, host="127.0.0.1", port=0, limits=limits)) as (_, port):
        streams = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(20)]
        start = time.monotonic()
        for stream in streams:  # never a byte: each is closed after the keep-alive, not held forever
            assert await closed_within(stream, 5) == b""
        assert 0.8 <= time.monotonic() - start < 5
        for stream in streams:
            await stream.aclose()
        # A connection that made a request is closed the same way once idle.
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            answer = await closed_within(stream, 5)
            assert answer.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_slow_request_is_cut_at_the_request_timeout(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    from vramgate.server.connections import uvicorn_config

    caplog.set_level(logging.INFO)
    limits = ServerConfig(keep_alive_s=30, request_timeout_s=1)

    def guarded(app: Any) -> uvicorn.Config:
        return uvicorn_config(app, host="127.0.0.1", port=0, limits=limits, log_config=None)

    async with running(guarded) as (app, port):
        # Slowloris: the head, a byte at a time, each well inside the keep-alive.
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            start = time.monotonic()
            with pytest.raises((anyio.BrokenResourceError, ConnectionError)):
                await drip(stream, head(port, len(BODY)))  # about 11 s for the whole head, if it were let through
            assert time.monotonic() - start < 3
        # A body that stalls half way.
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            start = time.monotonic()
            await stream.send(head(port, len(BODY)) + BODY[:20])
            await closed_within(stream, 5)
            assert 0.8 <= time.monotonic() - start < 3
        assert app.state.service.health().tracked == 0
        # The server still answers.
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(head(port, len(BODY)) + BODY)
            assert (await stream.receive()).startswith(b"HTTP/1.1 202")
    assert_no_traceback(caplog)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_connections_beyond_the_limit_are_503(anyio_backend: str) -> None:
    from vramgate.server.connections import uvicorn_config

    limits = ServerConfig(keep_alive_s=30, max_connections=3)
    async with running(lambda app: uvicorn_config(app, host="127.0.0.1", port=0, limits=limits)) as (_, port):
        idle = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(2)]
        await anyio.sleep(0.1)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            assert (await stream.receive()).startswith(b"HTTP/1.1 503")
        for stream in idle:
            await stream.aclose()
