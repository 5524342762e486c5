"""``POST /v1/generations`` in plain ASGI: the server's hot route, served without FastAPI's request machinery.

:class:`SubmitRoute` sits inside :class:`~vramgate.server._security.RequestGuard` (so the ``Host`` and
``Content-Type`` checks still come first) and answers the POST itself: the headers it reads are picked from the
ASGI scope in one pass, the body is read from ``receive`` (no further than the limit), decoded once by msgspec
(:meth:`~vramgate.server.service.GenerationService.submit`), and the answer is encoded once and sent as two ASGI
messages. Every other request goes on to the FastAPI app. The answers are those of the OpenAPI document
(:mod:`vramgate.server.openapi`): 202/200 :class:`~vramgate.server.schema.Accepted`, errors as
:class:`~vramgate.server.schema.ErrorBody`.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from vramgate.errors import ActorStopped, BadRequest, DecodeError, InvalidParameter, QueueFull
from vramgate.messages import RequestRejected
from vramgate.server.schema import Accepted, ErrorBody
from vramgate.server.service import GenerationService, IdempotencyConflict
from vramgate.server.store import StoreError

PATH = "/v1/generations"
JSON = b"application/json"
_encode = msgspec.json.Encoder().encode
CLIENT_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


class BodyTooLarge(BadRequest):
    """The request body is larger than the server accepts."""


class ClientGone(BadRequest):
    """The client disconnected before it sent the whole body: nothing was accepted, and nobody reads an answer."""


class BadHeader(BadRequest):
    """A header the server reads has a value it does not accept."""


HeaderList = tuple[tuple[bytes, bytes], ...]


class Answer(NamedTuple):
    """An HTTP answer ready to send: its status, its JSON body, and any headers besides the content's."""

    status: int
    body: bytes
    headers: HeaderList = ()


def error(status: int, code: str, detail: str, *, headers: HeaderList = (), **extra: Any) -> Answer:
    return Answer(status, _encode(ErrorBody(error=code, detail=detail, **extra)), headers)


def _retry_after(seconds: float) -> HeaderList:
    return ((b"retry-after", str(max(1, math.ceil(seconds))).encode()),)


#: The status of a POST that the gate rejected before it answered, by the rejection's code: the request itself
#: cannot run here (422, like bad input), the queue had no room (429), or the server cannot take work now (503).
REJECTED_STATUS: dict[str, int] = {
    "does_not_fit": 422,
    "bad_request": 422,
    "queue_full": 429,
    "shutting_down": 503,
    "device_lost": 503,
}


def rejection(rejected: RequestRejected) -> Answer:
    """The answer to a POST whose request the gate rejected: the rejection's code as ``error``, its reason, and
    what the request would need (VRAM per GPU, host RAM, the smallest GPU it fits). The request is kept: its
    ``request_id`` answers at ``/v1/generations/{id}`` with the same reason."""
    requirement = rejected.best_plan.requirement if rejected.best_plan is not None else None
    headers: HeaderList = ()
    if rejected.code == "queue_full" and rejected.retry_after_s is not None:
        headers = _retry_after(rejected.retry_after_s)
    return error(
        REJECTED_STATUS.get(rejected.code, 422),
        rejected.code,
        rejected.reason,
        request_id=rejected.request_id,
        needed_mb=rejected.needed_mb,
        needed_ram_mb=requirement.ram_mb if requirement is not None else None,
        smallest_gpu=rejected.smallest_gpu,
        retry_after_s=rejected.retry_after_s,
        headers=headers,
    )


class Headers(NamedTuple):
    """The headers a POST's answer depends on (the first of each, as sent)."""

    content_length: str | None
    client: str
    key: str | None


def read_headers(scope: Scope) -> Headers:
    """``Content-Length``, ``X-Client-Id`` (``""`` when none) and ``Idempotency-Key`` from the scope, checked
    (:class:`BadHeader`)."""
    length: str | None = None
    client: str | None = None
    key: str | None = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            if length is None:
                length = value.decode("latin-1")
        elif name == b"x-client-id":
            if client is None:
                client = value.decode("latin-1")
        elif name == b"idempotency-key" and key is None:
            key = value.decode("latin-1")
    if client and not CLIENT_ID.match(client):
        raise BadHeader("X-Client-Id must be 1-128 letters, digits or ._:@-")
    if key is not None and not _KEY.match(key):
        raise BadHeader("Idempotency-Key must be 1-255 visible ASCII characters")
    return Headers(length, client or "", key)


async def read_body(receive: Receive, limit: int, declared: str | None = None) -> bytes:
    """The body, read no further than ``limit`` bytes (:class:`BodyTooLarge` beyond, at once when the
    ``declared`` ``Content-Length`` says so; :class:`ClientGone` when the client disconnects before the end)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body is {declared} bytes; at most {limit} are accepted")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone(f"the client disconnected after {size} bytes of the body")
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"the body is larger than {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def submit(service: GenerationService, scope: Scope, receive: Receive, limit: int) -> Answer:
    """Read, keep and queue the request a POST carries; the answer to send (every refusal a typed error body)."""
    try:
        headers = read_headers(scope)
        body = await read_body(receive, limit, headers.content_length)
        submitted = await service.submit(body, client=headers.client, key=headers.key)
    except BodyTooLarge as problem:
        return error(413, "too_large", str(problem))
    except ClientGone as problem:
        return error(400, "client_gone", str(problem))
    except BadHeader as problem:
        return error(422, "invalid_header", str(problem))
    except IdempotencyConflict as problem:
        return error(422, "idempotency_key_reused", str(problem))
    except DecodeError as problem:
        return error(422, "invalid_request", problem.reason, path=problem.path)
    except InvalidParameter as problem:
        return error(422, "invalid_parameter", str(problem), path=f"$.{problem.field}")
    except QueueFull as problem:
        retry = _retry_after(problem.retry_after_s)
        return error(429, "queue_full", str(problem), retry_after_s=problem.retry_after_s, headers=retry)
    except BadRequest as problem:
        return error(422, "bad_request", str(problem))
    except (ActorStopped, StoreError) as problem:
        return error(503, "unavailable", str(problem))
    rid = submitted.request_id
    if submitted.rejected is not None:
        return rejection(submitted.rejected)
    state, position = submitted.state, submitted.position
    if submitted.replayed:
        entry = await service.find(rid)
        assert entry is not None  # kept in the store before its first answer
        current = service.status(entry)
        state, position = current.state, current.position
    status_url = f"{PATH}/{rid}"
    accepted = Accepted(
        request_id=rid, state=state, position=position, status_url=status_url, events_url=f"{status_url}/events"
    )
    return Answer(200 if submitted.replayed else 202, _encode(accepted))


async def send_answer(send: Send, answer: Answer) -> None:
    headers = [(b"content-length", b"%d" % len(answer.body)), (b"content-type", JSON), *answer.headers]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


class SubmitRoute:
    """ASGI middleware: answers ``POST /v1/generations`` itself (:func:`submit`) with the app's service (its
    ``state.service``, set by its lifespan); every other request goes on to the app."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and _route_path(scope) == PATH:
            service: GenerationService = scope["app"].state.service
            await send_answer(send, await submit(service, scope, receive, self.max_body_bytes))
            return
        await self.app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path the app routes on: the scope's path without its ``root_path`` (as Starlette's router does)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
