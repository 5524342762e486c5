"""The example server's HTTP layer (FastAPI): routes over a :class:`~vramgate.server.service.GenerationService`.

===========================================  ===================================================================
``POST /v1/generations``                     a JSON ``GenerationRequest``: 202 with the id and queue position;
                                             422 naming the field; 413 too large; 429 + ``Retry-After`` when full
``GET /v1/generations/{id}``                 state, device, plan and its suggestions, progress, ETA
``GET /v1/generations/{id}/events``          server-sent events: every lifecycle message until the end, each with
                                             an ``id:``; ``Last-Event-ID`` resumes after that event
``DELETE /v1/generations/{id}``              cancel: 202, or 409 when it had already ended
``GET /v1/devices``                          each device's ledger and the latest sample
``GET /healthz``, ``GET /metrics``           liveness; Prometheus metrics
===========================================  ===================================================================

Before any route (:mod:`vramgate.server._security`): 421 when the ``Host`` is not one the server answers to
(``[server] allowed_hosts``, loopback by default), 415 for a POST that is not ``application/json``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.requests import ClientDisconnect

from vramgate.actors import Recorder
from vramgate.clock import Clock
from vramgate.config import LOOPBACK_HOSTS, GateConfig
from vramgate.errors import ActorStopped, BadRequest, DecodeError, InvalidParameter, QueueFull
from vramgate.hardware import DeviceSet
from vramgate.messages import RunFinished
from vramgate.server._public import client_event
from vramgate.server._records import Record
from vramgate.server._security import RequestGuard
from vramgate.server.runners import Runner
from vramgate.server.schema import Accepted, ErrorBody
from vramgate.server.service import GenerationService, ServerSettings, open_service

JSON = "application/json"
_encode = msgspec.json.Encoder().encode


class BodyTooLarge(BadRequest):
    """The request body is larger than the server accepts."""


class BadLastEventId(BadRequest):
    """A reconnecting event stream's ``Last-Event-ID`` is not an id the server sent for that request."""


class ClientGone(BadRequest):
    """The client disconnected before it sent the whole body: nothing was accepted, and nobody reads an answer."""


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(content=_encode(body), status_code=status, media_type=JSON, headers=headers)


def _error(status: int, error: str, detail: str, **extra: Any) -> Response:
    headers = extra.pop("headers", None)
    return _json(ErrorBody(error=error, detail=detail, **extra), status, headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read no further than ``limit`` bytes (:class:`BodyTooLarge` beyond; :class:`ClientGone` when the
    client disconnects before the end)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body is {declared} bytes; at most {limit} are accepted")
    chunks: list[bytes] = []
    size = 0
    try:
        async with aclosing(request.stream()) as stream:
            async for chunk in stream:
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"the body is larger than {limit} bytes")
                chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone(f"the client disconnected after {size} bytes of the body") from None
    return b"".join(chunks)


def _service(request: Request) -> GenerationService:
    service: GenerationService = request.app.state.service
    return service


def _not_found(request_id: str) -> Response:
    return _error(404, "not_found", "no such request (or it ended long ago)")


def create_app(
    config: GateConfig | None = None,
    *,
    settings: ServerSettings | None = None,
    runner: Runner | None = None,
    clock: Clock | None = None,
    devices: DeviceSet | None = None,
    recorder: Recorder | None = None,
    metrics: bool = True,
) -> FastAPI:
    """The example server as an ASGI app. Its lifespan opens the gate (``config``) and closes it."""
    settings = settings if settings is not None else ServerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_service(
            config, settings=settings, runner=runner, clock=clock, devices=devices, recorder=recorder
        ) as service:
            app.state.service = service
            app.state.metrics = None
            if metrics:
                from vramgate.metrics import GateMetrics

                app.state.metrics = GateMetrics(service.gate)
            yield

    app = FastAPI(title="vramgate example server", lifespan=lifespan)
    app.add_middleware(RequestGuard, allowed_hosts=config.server.allowed_hosts if config else LOOPBACK_HOSTS)

    @app.post("/v1/generations", status_code=202)
    async def create_generation(request: Request) -> Response:
        service = _service(request)
        try:
            body = await read_body(request, settings.max_body_bytes)
            record = await service.submit(body)
        except BodyTooLarge as error:
            return _error(413, "too_large", str(error))
        except ClientGone as error:
            return _error(400, "client_gone", str(error))
        except DecodeError as error:
            return _error(422, "invalid_request", error.reason, path=error.path)
        except InvalidParameter as error:
            return _error(422, "invalid_parameter", str(error), path=f"$.{error.field}")
        except QueueFull as error:
            retry = max(1, math.ceil(error.retry_after_s))
            return _error(
                429, "queue_full", str(error), retry_after_s=error.retry_after_s, headers={"Retry-After": str(retry)}
            )
        except BadRequest as error:
            return _error(422, "bad_request", str(error))
        except ActorStopped as error:
            return _error(503, "unavailable", str(error))
        current = service.status(record)
        rid = record.request_id
        return _json(
            Accepted(
                request_id=rid,
                state=current.state,
                position=current.position,
                status_url=f"/v1/generations/{rid}",
                events_url=f"/v1/generations/{rid}/events",
            ),
            202,
        )

    @app.get("/v1/generations/{request_id}")
    async def get_generation(request_id: str, request: Request) -> Response:
        service = _service(request)
        record = service.lookup(request_id)
        if record is None:
            return _not_found(request_id)
        return _json(service.status(record))

    @app.get("/v1/generations/{request_id}/events")
    async def generation_events(request_id: str, request: Request) -> Response:
        record = _service(request).lookup(request_id)
        if record is None:
            return _not_found(request_id)
        try:
            after = last_event_id(request, record)
        except BadLastEventId as error:
            return _error(400, "bad_last_event_id", str(error))
        stream = _sse(record, after)
        return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.delete("/v1/generations/{request_id}")
    async def cancel_generation(request_id: str, request: Request) -> Response:
        service = _service(request)
        record = service.lookup(request_id)
        if record is None:
            return _not_found(request_id)
        if not await service.cancel(record):
            return _json(service.status(record), 409)
        return _json(service.status(record), 202)

    @app.get("/v1/devices")
    async def get_devices(request: Request) -> Response:
        return _json(_service(request).devices())

    @app.get("/healthz")
    async def healthz(request: Request) -> Response:
        health = _service(request).health()
        return _json(health, 200 if health.status == "ok" else 503)

    @app.get("/metrics")
    async def get_metrics(request: Request) -> Response:
        exporter = request.app.state.metrics
        if exporter is None:
            return _error(404, "not_found", "metrics are off")
        return Response(content=exporter.render(), media_type=exporter.content_type)

    return app


def last_event_id(request: Request, record: Record) -> int:
    """The ``Last-Event-ID`` a reconnecting client sends: the number of the last event it got (0 when none)."""
    value = request.headers.get("last-event-id")
    if value is None or not value.strip():
        return 0
    value = value.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 18):
        raise BadLastEventId(f"Last-Event-ID must be the id of an event this server sent, not {value[:40]!r}")
    number = int(value)
    if number > record.last_seq:
        raise BadLastEventId(
            f"Last-Event-ID {number} was never sent for this request (its latest is {record.last_seq})"
        )
    return number


async def _sse(record: Record, after: int = 0) -> AsyncIterator[bytes]:
    """Server-sent events after event ``after``: ``id:`` the event's number, ``event:`` the message type, ``data:``
    the message as JSON (as a client reads it). A client that reconnects with ``Last-Event-ID`` resumes there."""
    finished: RunFinished | None = None
    for seq, event in record.events:
        if seq <= after and isinstance(event, RunFinished):
            finished = event
    async for seq, event in record.follow(after):
        if isinstance(event, RunFinished):
            finished = event
        name = type(event).__name__
        shown = client_event(event, finished)
        yield b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, name.encode(), _encode(shown))
