"""The FastAPI application: settings, the stores (Redis, blobs), the event hub, error handlers, the body size limit,
a log line per request, the routers, the web page at /ui, and the sweep that ends finished jobs' retention.

    uvicorn --factory service.app:create_app        (or: sdpo serve)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import errors, ui
from service.api.main import root, v1
from service.auth import load_keys
from service.config import ApiSettings
from service.streams import StreamSlots
from workers.logs import log_context
from workers.store import JobStore, open_event_hub, open_store

log = logging.getLogger("service.access")
QUIET_PATHS = ("/healthz", "/readyz", "/metrics")  # probes and scrapes: logged at DEBUG only


class _TooLarge(Exception):
    pass


class BodyLimit:
    """413 for a body over `max_bytes`, by its Content-Length or, when streamed, as it arrives."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._reject(scope, receive, send)
            return
        seen, started = 0, False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = errors.problem_response(None, 413, f"the request body is over the limit of {self.max_bytes} bytes",
                                           code="body_too_large")
        await response(scope, receive, send)


class RequestLog:
    """One log line per request, tagged with the tenant (set by authentication) and the job or batch in the path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        clock, status = time.perf_counter(), 500

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            params = scope.get("path_params") or {}
            ids = {"tenant": (scope.get("state") or {}).get("tenant"),
                   "job_id": params.get("job_id") or params.get("batch_id")}
            level = logging.DEBUG if scope["path"] in QUIET_PATHS else logging.INFO
            with log_context(**ids):
                log.log(level, "%s %s %d %.0f ms", scope["method"], scope["path"], status,
                        (time.perf_counter() - clock) * 1000,
                        extra={"status": status, "client": (scope.get("client") or ("", 0))[0]})


def _operation_id(route: APIRoute) -> str:
    """Stable operation ids ('jobs-create_job') for generated clients."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def _blob_store(settings: ApiSettings):
    """Where workers keep finished adapters; None (adapters answer 404) when this process cannot open it."""
    from workers.checkpoint import open_store as open_blobs

    try:
        return open_blobs(settings.checkpoint_location, s3_endpoint_url=settings.s3_endpoint_url)
    except Exception:  # noqa: BLE001 - the API serves everything else without it
        log.exception("the checkpoint store %s cannot be opened; adapters cannot be served",
                      settings.checkpoint_location)
        return None


async def _sweep_forever(store: JobStore, every_s: float) -> None:
    """End finished jobs' retention even while no worker runs (workers may scale to zero)."""
    while True:
        try:
            while await store.sweep() > 0:
                pass
        except Exception as exc:  # noqa: BLE001 - Redis away: the next round tries again
            log.warning("sweeping finished jobs failed: %s", exc)
        await asyncio.sleep(every_s)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()
    keys = load_keys(settings)  # a malformed key configuration stops the server at start, with the reason

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.store = open_store(settings.redis_url, settings.redis_prefix,
                                     max_connections=settings.redis_max_connections,
                                     events_maxlen=settings.events_maxlen, retention_s=settings.retention_s)
        app.state.event_hub = open_event_hub(settings.redis_url, settings.redis_prefix)
        app.state.blobs = _blob_store(settings)
        try:
            await app.state.store.ensure_group()
        except Exception:  # noqa: BLE001 - /readyz reports Redis; the API still starts
            pass
        await app.state.event_hub.start()
        sweeper = asyncio.create_task(_sweep_forever(app.state.store, settings.sweep_every_s))
        yield
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await app.state.event_hub.close()
        await app.state.store.close()

    app = FastAPI(
        title="SDPO test-time discovery service",
        version="1.0",
        description="Submit one hard problem and a verifier; a per-problem LoRA adapter learns by self-distillation "
                    "between rounds of attempts, and every job reports its discovery curve against best-of-k.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.settings, app.state.api_keys = settings, keys
    app.state.stream_slots = StreamSlots(settings.max_streams_per_tenant)
    errors.install(app)
    app.include_router(v1)
    app.include_router(root)
    ui.mount(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestLog)
    return app
