"""The Python client of the discovery service: `Client` (blocking) and `AsyncClient`, same methods.

    from service.client import Client
    with Client("http://localhost:8000", api_key="...") as client:
        result = client.solve({"prompt": "What is 17 * 23?", "verifier": {"type": "numeric", "answer": 391}})
        print(result.job.status, result.solution.attempt.text if result.solution.solved else None)

Retries: 429, 5xx and connection errors are retried with exponential backoff (honouring Retry-After); a POST keeps
one Idempotency-Key across its retries, so a retried submission never creates a second job.

Both classes are generated from one protocol (service/client_protocol.py: every call written once, without I/O);
here only the two ways of doing its I/O are written: blocking httpx and asyncio. Imports only httpx, pydantic and
the API schemas (no torch, no redis, nothing of `workers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from service.client_protocol import (
    APIError,
    ApiProtocol,
    AuthenticationError,
    BadRequest,
    BatchResult,
    Conflict,
    Emit,
    NextLine,
    NotFound,
    Open,
    RateLimited,
    SDPOError,
    Send,
    ServerError,
    ServiceUnreachable,
    Sleep,
    SolveResult,
    Steps,
    WaitTimeout,
)

__all__ = ["APIError", "AsyncClient", "AuthenticationError", "BadRequest", "BatchResult", "Client", "Conflict",
           "NotFound", "RateLimited", "SDPOError", "ServerError", "ServiceUnreachable", "SolveResult", "WaitTimeout"]


class _ClientBase:
    """What both clients share: the protocol's settings and an httpx client of their I/O style."""

    http_class: type = httpx.Client

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 max_retries: int = 4, backoff_s: float = 0.5, max_backoff_s: float = 20.0,
                 transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None) -> None:
        self.protocol = ApiProtocol(base_url, api_key, timeout=timeout, max_retries=max_retries,
                                    backoff_s=backoff_s, max_backoff_s=max_backoff_s)
        self.base_url, self.headers, self.timeout = self.protocol.base_url, self.protocol.headers, timeout
        self.http = self.http_class(base_url=self.base_url, timeout=timeout, transport=transport)

    def _stream_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=None)  # an event stream may be quiet for long


class Client(_ClientBase):
    """Blocking client. Use as a context manager, or call close()."""

    http_class = httpx.Client

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _drive(self, steps: Steps[Any]) -> Iterator[Any]:
        """Run the protocol's steps with blocking I/O, yielding what it emits; the last item is its value."""
        run = _Run(steps)
        try:
            for step in run:
                if isinstance(step, Emit):
                    yield step.item
                    continue
                try:
                    run.reply = self._do(step, run)
                except httpx.TransportError as exc:
                    run.error = exc
            yield _Result(run.value)
        finally:
            if run.stream is not None:
                run.stream.__exit__(None, None, None)

    def _do(self, step: Any, run: _Run) -> Any:
        if isinstance(step, Send):
            return self.http.request(step.method, step.path, json=step.json, params=step.params, headers=step.headers)
        if isinstance(step, Sleep):
            return time.sleep(step.seconds)
        if isinstance(step, NextLine):
            return next(run.lines, None)
        assert isinstance(step, Open), step
        if run.stream is not None:  # a new stream replaces the one before
            run.stream, old = None, run.stream
            old.__exit__(None, None, None)
        stream = self.http.stream("GET", step.path, headers=step.headers, timeout=self._stream_timeout())
        response = stream.__enter__()
        run.stream = stream
        run.lines = response.iter_lines()
        if response.status_code >= 400:
            response.read()
        return response


class AsyncClient(_ClientBase):
    """The asyncio client: the same methods as `Client`, awaited (`events` is an async iterator)."""

    http_class = httpx.AsyncClient

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _drive(self, steps: Steps[Any]) -> AsyncIterator[Any]:
        """Run the protocol's steps with asyncio I/O, yielding what it emits; the last item is its value."""
        run = _Run(steps)
        try:
            for step in run:
                if isinstance(step, Emit):
                    yield step.item
                    continue
                try:
                    run.reply = await self._do(step, run)
                except httpx.TransportError as exc:
                    run.error = exc
            yield _Result(run.value)
        finally:
            if run.stream is not None:
                await run.stream.__aexit__(None, None, None)

    async def _do(self, step: Any, run: _Run) -> Any:
        if isinstance(step, Send):
            return await self.http.request(step.method, step.path, json=step.json, params=step.params,
                                           headers=step.headers)
        if isinstance(step, Sleep):
            return await asyncio.sleep(step.seconds)
        if isinstance(step, NextLine):
            return await anext(run.lines, None)
        assert isinstance(step, Open), step
        if run.stream is not None:  # a new stream replaces the one before
            run.stream, old = None, run.stream
            await old.__aexit__(None, None, None)
        stream = self.http.stream("GET", step.path, headers=step.headers, timeout=self._stream_timeout())
        response = await stream.__aenter__()
        run.stream = stream
        run.lines = response.aiter_lines()
        if response.status_code >= 400:
            await response.aread()
        return response


class _Run:
    """The protocol's side of a driver: steps out, replies (or transport errors) in, its value at the end."""

    def __init__(self, steps: Steps[Any]) -> None:
        self.steps, self.reply, self.error = steps, None, None
        self.value: Any = None
        self.stream: Any = None  # the open event stream's context manager, and its lines
        self.lines: Any = None

    def __iter__(self) -> Iterator[Any]:
        try:
            while True:
                reply, error, self.reply, self.error = self.reply, self.error, None, None
                try:
                    yield self.steps.throw(error) if error is not None else self.steps.send(reply)
                except StopIteration as done:
                    self.value = done.value
                    return
        finally:
            self.steps.close()


class _Result:
    """The value a protocol method returned, as the driver's last item."""

    def __init__(self, value: Any) -> None:
        self.value = value


# ---- the public methods, generated from the protocol ---------------------------------------------------------------
def _sync_method(call):
    if getattr(call, "streams", False):
        @functools.wraps(call)
        def stream(self: Client, *args: Any, **kwargs: Any) -> Iterator[Any]:
            with contextlib.closing(self._drive(call(self.protocol, *args, **kwargs))) as items:
                yield from (item for item in items if not isinstance(item, _Result))
        return stream

    @functools.wraps(call)
    def method(self: Client, *args: Any, **kwargs: Any) -> Any:
        with contextlib.closing(self._drive(call(self.protocol, *args, **kwargs))) as items:
            return next(item for item in items if isinstance(item, _Result)).value
    return method


def _async_method(call):
    if getattr(call, "streams", False):
        @functools.wraps(call)
        async def stream(self: AsyncClient, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            async with contextlib.aclosing(self._drive(call(self.protocol, *args, **kwargs))) as items:
                async for item in items:
                    if not isinstance(item, _Result):
                        yield item
        return stream

    @functools.wraps(call)
    async def method(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
        async with contextlib.aclosing(self._drive(call(self.protocol, *args, **kwargs))) as items:
            async for item in items:
                if isinstance(item, _Result):
                    return item.value
        raise AssertionError("the protocol ended without a value")
    return method


API_METHODS = [name for name, call in inspect.getmembers(ApiProtocol, inspect.isfunction) if not name.startswith("_")]
for _name in API_METHODS:
    setattr(Client, _name, _sync_method(getattr(ApiProtocol, _name)))
    setattr(AsyncClient, _name, _async_method(getattr(ApiProtocol, _name)))
