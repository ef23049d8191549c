"""The FastAPI application: settings, the Redis connection, error handlers, the body size limit, a log line per
request, the routers, and the web page at /ui.

    uvicorn --factory service.app:create_app        (or: sdpo serve)
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from redis.asyncio import Redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import errors, ui
from service.api.main import root, v1
from service.auth import load_keys
from service.config import Settings
from workers.keys import Keys
from workers.logs import log_context
from workers.store import JobStore

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


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    keys = load_keys(settings)  # a malformed key configuration stops the server at start, with the reason

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        redis = Redis.from_url(settings.redis_url)
        app.state.store = JobStore(redis, Keys(settings.redis_prefix), events_maxlen=settings.events_maxlen,
                                   retention_s=settings.retention_s)
        try:
            await app.state.store.ensure_group()
        except Exception:  # noqa: BLE001 - /readyz reports Redis; the API still starts
            pass
        yield
        await redis.aclose()

    app = FastAPI(
        title="SDPO test-time discovery service",
        version="1.0",
        description="Submit one hard problem and a verifier; a per-problem LoRA adapter learns by self-distillation "
                    "between rounds of attempts, and every job reports its discovery curve against best-of-k.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.settings, app.state.api_keys = settings, keys
    errors.install(app)
    app.include_router(v1)
    app.include_router(root)
    ui.mount(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestLog)
    return app
