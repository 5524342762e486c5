"""How the example server holds connections under uvicorn: idle and slow clients are cut, connections bounded.

uvicorn alone closes an idle connection only between requests (``timeout_keep_alive``), so a client that
connects and sends nothing, or sends its request a byte at a time (slowloris), or stops half way through its
body, holds a connection forever. :class:`TimedH11Protocol` adds the two missing timers, and
:func:`uvicorn_config` sets them, the keep-alive and ``limit_concurrency`` from :class:`~vramgate.config.ServerConfig`.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from vramgate.config import ServerConfig


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with two more timers.

    * a new connection that sends no request is closed after the keep-alive, as between requests;
    * a request whose head and body have not all arrived ``request_timeout_s`` after its first byte is cut
      (the app sees a disconnect). A response being sent (a long event stream) is never cut.
    """

    request_timeout_s: ClassVar[float] = 15.0
    _request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]  # uvicorn narrows it to asyncio.Transport
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        receiving = self.conn.their_state is h11.SEND_BODY or (
            self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])
        )
        if receiving and self._request_timer is None and not self.transport.is_closing():
            self._request_timer = self.loop.call_later(self.request_timeout_s, self._request_timed_out)
        elif not receiving:
            self._stop_request_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_request_timer()
        super().connection_lost(exc)

    def _stop_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _request_timed_out(self) -> None:
        self._request_timer = None
        if not self.transport.is_closing():
            self.logger.info(
                "closing a connection whose request took longer than %g s to arrive", self.request_timeout_s
            )
            self.transport.close()


def uvicorn_config(
    app: Any, *, host: str, port: int, limits: ServerConfig | None = None, **options: Any
) -> uvicorn.Config:
    """A ``uvicorn.Config`` for ``app`` with the timeouts and the connection limit of ``limits``."""
    limits = limits if limits is not None else ServerConfig()
    protocol = type("TimedH11Protocol", (TimedH11Protocol,), {"request_timeout_s": limits.request_timeout_s})
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        timeout_keep_alive=limits.keep_alive_s,
        limit_concurrency=limits.max_connections,
        **options,
    )
