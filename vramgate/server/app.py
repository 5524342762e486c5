"""The example server's HTTP layer (FastAPI): routes over a :class:`~vramgate.server.service.GenerationService`.

===========================================  ===================================================================
``POST /v1/generations``                     a JSON ``GenerationRequest``: 202 with the id and queue position;
                                             422 naming the field; 413 too large; 429 + ``Retry-After`` when full
``GET /v1/generations/{id}``                 state, device, plan and its suggestions, progress, ETA
``GET /v1/generations/{id}/events``          server-sent events: every lifecycle message until the end, each with
                                             an ``id:``; ``Last-Event-ID`` resumes after that event
``DELETE /v1/generations/{id}``              cancel: 202, or 409 when it had already ended
``GET /v1/generations?client=ID``            a client's latest requests (``X-Client-Id``), newest first
``GET /v1/devices``                          each device's ledger and the latest sample
``GET /healthz``, ``GET /metrics``           liveness; Prometheus metrics
===========================================  ===================================================================

A POST may carry ``Idempotency-Key`` (and ``X-Client-Id``, which scopes the key): a retry with the same key and
body answers 200 with the same request; the same key with another body is 422 ``idempotency_key_reused``.

Before any route (:mod:`vramgate.server._security`): 421 when the ``Host`` is not one the server answers to
(``[server] allowed_hosts``, loopback by default), 415 for a POST that is not ``application/json``. The POST is
served in plain ASGI (:mod:`vramgate.server._submit`), the other routes by FastAPI.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from vramgate.actors import Recorder
from vramgate.clock import Clock
from vramgate.config import LOOPBACK_HOSTS, GateConfig, ServerConfig
from vramgate.errors import BadRequest
from vramgate.hardware import DeviceSet
from vramgate.messages import RequestEnded, RunFinished
from vramgate.policy.learning import open_corrections
from vramgate.server._public import client_event
from vramgate.server._records import Record
from vramgate.server._security import RequestGuard
from vramgate.server._submit import CLIENT_ID, SubmitRoute
from vramgate.server.openapi import install_openapi
from vramgate.server.runners import Runner
from vramgate.server.schema import TERMINAL, ErrorBody, GenerationList, ServerShutdown
from vramgate.server.service import GenerationService, ServerSettings, open_service
from vramgate.server.store import MEMORY, RequestStore, SqliteStore, StoredRequest

JSON = "application/json"
#: ``/healthz`` says ``degraded`` (503) once requests have waited this long with nothing running that could make
#: room for the first of them (and, at once, while the message log cannot be written).
STALLED_AFTER_S = 30.0
_encode = msgspec.json.Encoder().encode


class BadLastEventId(BadRequest):
    """A reconnecting event stream's ``Last-Event-ID`` is not an id the server sent for that request."""


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(content=_encode(body), status_code=status, media_type=JSON, headers=headers)


def _error(status: int, error: str, detail: str, **extra: Any) -> Response:
    headers = extra.pop("headers", None)
    return _json(ErrorBody(error=error, detail=detail, **extra), status, headers)


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
    store: RequestStore | None = None,
) -> FastAPI:
    """The example server as an ASGI app. Its lifespan opens the gate (``config``) and the request store
    (``store``, else ``settings.store_path``, else in memory) and closes them."""
    settings = settings if settings is not None else ServerSettings()
    if config is not None and config.learned_path is not None:
        open_corrections(config.learned_path)  # a corrupt file stops the server here, not inside its lifespan
    if store is None and settings.store_path not in (None, MEMORY):
        SqliteStore.connect(settings.store_path).close()  # so does a file that is not a request store

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_service(
            config, settings=settings, runner=runner, clock=clock, devices=devices, recorder=recorder, store=store
        ) as service:
            app.state.service = service
            app.state.metrics = None
            if metrics:
                from vramgate.metrics import GateMetrics

                app.state.metrics = GateMetrics(service.gate)
            if not settings.freeze_heap:
                yield
                return
            gc.collect()
            gc.freeze()
            try:
                yield
            finally:
                gc.unfreeze()

    app = FastAPI(title="vramgate example server", lifespan=lifespan)
    app.state.settings = settings
    app.add_middleware(SubmitRoute, max_body_bytes=settings.max_body_bytes)  # POST /v1/generations, in plain ASGI
    app.add_middleware(RequestGuard, allowed_hosts=config.server.allowed_hosts if config else LOOPBACK_HOSTS)

    @app.get("/v1/generations")
    async def list_generations(request: Request, client: str = "", limit: str = "100") -> Response:
        if not CLIENT_ID.match(client):
            return _error(422, "invalid_parameter", "client must be 1-128 letters, digits or ._:@-", path="client")
        if not (limit.isdigit() and 1 <= int(limit) <= 1000):
            return _error(422, "invalid_parameter", "limit must be a whole number from 1 to 1000", path="limit")
        found = await _service(request).requests_of(client, limit=int(limit))
        return _json(GenerationList(client=client, requests=tuple(found)))

    @app.get("/v1/generations/{request_id}")
    async def get_generation(request_id: str, request: Request) -> Response:
        service = _service(request)
        record = await service.find(request_id)
        if record is None:
            return _not_found(request_id)
        return _json(service.status(record))

    @app.get("/v1/generations/{request_id}/events")
    async def generation_events(request_id: str, request: Request) -> Response:
        record = await _service(request).find(request_id)
        if record is None:
            return _not_found(request_id)
        if isinstance(record, Record):
            try:
                after = last_event_id(request, record)
            except BadLastEventId as error:
                return _error(400, "bad_last_event_id", str(error))
            stream = _sse(record, after)
        else:
            stream = _sse_stored(record)
        return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.delete("/v1/generations/{request_id}")
    async def cancel_generation(request_id: str, request: Request) -> Response:
        service = _service(request)
        record = await service.find(request_id)
        if record is None:
            return _not_found(request_id)
        if isinstance(record, StoredRequest) or not await service.cancel(record):
            return _json(service.status(record), 409)
        return _json(service.status(record), 202)

    @app.get("/v1/devices")
    async def get_devices(request: Request) -> Response:
        return _json(_service(request).devices())

    @app.get("/healthz")
    async def healthz(request: Request) -> Response:
        service = _service(request)
        health = service.health()
        stats = service.gate.statistics()
        if health.status == "ok":
            reasons: list[str] = []
            stalled = stats.queue_stalled_s
            if stalled is not None and stalled >= STALLED_AFTER_S:
                reasons.append(f"the queue has not moved for {stalled:.0f} s: {stats.stall_reason}")
            else:
                stalled = None
            if stats.log is not None and stats.log.degraded:
                reasons.append(f"the message log cannot be written, recording stopped: {stats.log.error}")
            if reasons:
                reason = "; ".join(reasons)
                health = msgspec.structs.replace(health, status="degraded", reason=reason, queue_stalled_s=stalled)
        return _json(health, 200 if health.status == "ok" else 503)

    @app.get("/metrics")
    async def get_metrics(request: Request) -> Response:
        exporter = request.app.state.metrics
        if exporter is None:
            return _error(404, "not_found", "metrics are off")
        return Response(content=exporter.render(), media_type=exporter.content_type)

    install_openapi(app)
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
    the message as JSON (as a client reads it). A client that reconnects with ``Last-Event-ID`` resumes there. When
    the server shuts down and keeps the request queued for its next start, the last event is ``ServerShutdown``."""
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
    if record.kept:  # the server, shutting down, keeps the request queued for its next start
        final = ServerShutdown(request_id=record.request_id, state="queued")
        yield b"id: %d\nevent: ServerShutdown\ndata: %s\n\n" % (record.last_seq + 1, _encode(final))


async def _sse_stored(row: StoredRequest) -> AsyncIterator[bytes]:
    """The events of a request that only the store still knows (it ended, or ran before a restart): its end."""
    view = row.view()
    if view.state in TERMINAL:
        ended = RequestEnded(request_id=row.request_id, state=view.state, reason=view.reason)  # type: ignore[arg-type]
        yield b"id: 1\nevent: RequestEnded\ndata: %s\n\n" % _encode(ended)


#: The garbage collector's generation-0 threshold while :func:`serve` runs (the interpreter's default is 700).
SERVE_GEN0_THRESHOLD = 7000


@contextmanager
def young_collections_every(threshold: int | None) -> Iterator[None]:
    """For the block, collect generation 0 once allocations outnumber frees by ``threshold`` (the older
    generations' thresholds unchanged); the thresholds before are restored after. ``None``: leave them."""
    if threshold is None:
        yield
        return
    if threshold < 1:
        raise ValueError(f"the generation-0 threshold must be at least 1, not {threshold}")
    before = gc.get_threshold()
    gc.set_threshold(threshold, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def serve(
    app: FastAPI,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServerConfig | None = None,
    log_level: str = "info",
    access_log: bool = False,
    gen0_threshold: int | None = SERVE_GEN0_THRESHOLD,
) -> None:
    """Run ``app`` under uvicorn until SIGINT or SIGTERM, with the timeouts and connection limit of ``limits``
    (:func:`vramgate.server.connections.uvicorn_config`). A signal drains the server first (queued requests kept
    for the next start, running ones stopped, event streams ended), so that open streams do not hold it up.
    uvicorn's access log (a line per request, at INFO) is off unless ``access_log``.

    While it runs, the process collects generation 0 every ``gen0_threshold`` allocations (``None``: as it was):
    a request's messages, ticket and records live for its pipeline, across several collections at the
    interpreter's 700, and each of them walks what is still alive again."""
    import uvicorn

    from vramgate.server.connections import uvicorn_config

    class DrainingServer(uvicorn.Server):
        loop: asyncio.AbstractEventLoop | None = None

        async def serve(self, sockets: Any = None) -> None:
            self.loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            service = getattr(app.state, "service", None)
            if service is not None and self.loop is not None:
                self.loop.call_soon_threadsafe(service.begin_shutdown)

    service_settings: ServerSettings | None = getattr(app.state, "settings", None)
    grace = service_settings.shutdown_timeout_s if service_settings is not None else 10.0
    config = uvicorn_config(
        app,
        host=host,
        port=port,
        limits=limits,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=int(grace) + 5,
    )
    with young_collections_every(gen0_threshold):
        DrainingServer(config).run()
