"""What every HTTP request must pass before a route sees it: a trusted ``Host``, and JSON bodies on writes.

A web page the user opens elsewhere can make the browser send a "simple" cross-site POST (``text/plain``, a
form) without asking first, and a name that resolves to 127.0.0.1 (DNS rebinding) makes such a page same-origin.
Requiring ``Content-Type: application/json`` on writes forces the browser to ask first (a CORS preflight this
server never grants), and checking ``Host`` against the names the server answers to defeats rebinding.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from vramgate.server.schema import ErrorBody

#: Methods whose body the server reads: they must declare JSON.
WRITES = frozenset({"POST", "PUT", "PATCH"})
JSON = "application/json"
_encode = msgspec.json.Encoder().encode


def host_name(value: str) -> str | None:
    """The name in a ``Host`` header (``"localhost:8000"`` -> ``"localhost"``, ``"[::1]:80"`` -> ``"[::1]"``),
    lower-cased; ``None`` when it is not a name with an optional numeric port."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[: end + 1], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:] if rest else None
    else:
        name, colon, port_text = value.partition(":")
        port = port_text if colon else None
    if not name or (port is not None and not (port.isdigit() and 1 <= len(port) <= 5)):
        return None
    return name


def media_type(value: str | None) -> str:
    """The media type of a ``Content-Type`` header, without parameters, lower-cased (``""`` when absent)."""
    return "" if value is None else value.partition(";")[0].strip().lower()


class RequestGuard:
    """ASGI middleware: 421 for a ``Host`` not in ``allowed_hosts`` (``"*"`` trusts all), 415 for a write that is
    not ``application/json``. Refused requests never reach the app, so nothing is queued for them."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str]) -> None:
        self.app = app
        self.allowed = frozenset(name.lower() for name in allowed_hosts)
        self.any_host = "*" in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts: list[str] = []
        content_type: str | None = None
        for key, value in scope["headers"]:
            if key == b"host":
                hosts.append(value.decode("latin-1"))
            elif key == b"content-type":
                content_type = value.decode("latin-1")
        name = host_name(hosts[0]) if len(hosts) == 1 else None
        if name is None or not (self.any_host or name in self.allowed):
            shown = repr(hosts[0][:100]) if len(hosts) == 1 else "missing" if not hosts else "given twice"
            detail = f"this server does not answer to Host {shown}; start it with --allow-host NAME to trust a name"
            await _refuse(send, 421, "untrusted_host", detail)
            return
        if scope["method"] in WRITES and media_type(content_type) != JSON:
            got = repr(content_type[:100]) if content_type is not None else "none"
            detail = f"the body must be JSON: send Content-Type: {JSON} (got {got})"
            await _refuse(send, 415, "unsupported_media_type", detail)
            return
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, error: str, detail: str) -> None:
    body = _encode(ErrorBody(error=error, detail=detail))
    headers = [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
