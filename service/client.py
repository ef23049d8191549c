"""The Python client of the discovery service: `Client` (blocking) and `AsyncClient`, same methods.

    from service.client import Client
    with Client("http://localhost:8000", api_key="...") as client:
        result = client.solve({"prompt": "What is 17 * 23?", "verifier": {"type": "numeric", "answer": 391}})
        print(result.job.status, result.solution.attempt.text if result.solution.solved else None)

Retries: 429, 5xx and connection errors are retried with exponential backoff (honouring Retry-After); a POST keeps
one Idempotency-Key across its retries, so a retried submission never creates a second job.
Imports only httpx, pydantic and the API schemas (no torch, no redis).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from sdpo_core.discovery import Comparison
from sdpo_core.problem import Problem
from sdpo_core.records import Attempt
from service.schemas import (
    AttemptList,
    Batch,
    BatchCreate,
    BatchCurve,
    BatchList,
    EventList,
    Job,
    JobCreate,
    JobCurve,
    JobEvent,
    JobList,
    Solution,
)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


# ---- errors ----------------------------------------------------------------------------------------------------
class SDPOError(Exception):
    """Any error of the client."""


class ServiceUnreachable(SDPOError):
    """The server could not be reached (after retries)."""


class WaitTimeout(SDPOError):
    """A job or batch did not finish within the time given to wait()."""


class APIError(SDPOError):
    """The server answered with an error (RFC 9457 problem details)."""

    def __init__(self, status: int, detail: str, *, code: str | None = None, problem: dict | None = None) -> None:
        super().__init__(f"{status} {code or 'error'}: {detail}")
        self.status, self.detail, self.code, self.problem = status, detail, code, problem or {}

    @property
    def errors(self) -> list[dict[str, Any]]:
        """For validation errors: [{field, message}]."""
        return self.problem.get("errors") or []


class BadRequest(APIError): ...  # 400, 413, 422: change the request


class AuthenticationError(APIError): ...  # 401: the API key is missing or wrong


class NotFound(APIError): ...  # 404


class Conflict(APIError): ...  # 409: not possible in the resource's current state


class RateLimited(APIError): ...  # 429 after all retries


class ServerError(APIError): ...  # 5xx after all retries


def _error_for(response: httpx.Response) -> APIError:
    try:
        problem = response.json()
    except ValueError:
        problem = {"detail": response.text[:500]}
    detail = problem.get("detail") or response.reason_phrase
    cls = {401: AuthenticationError, 404: NotFound, 409: Conflict, 429: RateLimited}.get(response.status_code)
    if cls is None:
        cls = ServerError if response.status_code >= 500 else BadRequest
    return cls(response.status_code, str(detail), code=problem.get("code"), problem=problem)


# ---- results ---------------------------------------------------------------------------------------------------
class SolveResult(BaseModel):
    """A finished job with its solution and (when it succeeded or exhausted its budget) its discovery curve."""

    job: Job
    solution: Solution
    comparison: Comparison | None = None


class BatchResult(BaseModel):
    """A finished batch: one result per problem, in the order given, and the batch's average curve."""

    batch: Batch
    results: list[SolveResult]
    curve: BatchCurve | None


def _problem(problem: Problem | dict[str, Any]) -> Problem:
    return problem if isinstance(problem, Problem) else Problem.model_validate(problem)


def _job_body(problem: Problem | dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    body = JobCreate.model_validate({"problem": _problem(problem), **options})
    return body.model_dump(mode="json", exclude_unset=True)


class _SSELines:
    """Collects the lines of one server-sent event; a blank line ends the event."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def feed(self, line: str) -> JobEvent | None:
        """The event that `line` completes, if any (events without an id, like keep-alive comments, are skipped)."""
        if line:
            self.lines.append(line)
            return None
        event, self.lines = _parse_sse(self.lines), []
        return event


def _parse_sse(lines: Sequence[str]) -> JobEvent | None:
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name in ("id", "event"):
            fields[name] = value
    if "id" not in fields:
        return None
    return JobEvent(id=fields["id"], type=fields.get("event", "message"), data=json.loads("\n".join(data) or "{}"))


class _Base:
    def __init__(self, base_url: str | None, api_key: str | None, *, timeout: float, max_retries: int,
                 backoff_s: float, max_backoff_s: float) -> None:
        self.base_url = (base_url or os.environ.get("SDPO_URL") or "http://localhost:8000").rstrip("/")
        api_key = api_key or os.environ.get("SDPO_API_KEY")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s

    def _delay(self, try_number: int, response: httpx.Response | None) -> float:
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after and retry_after.replace(".", "", 1).isdigit():
            return min(float(retry_after), self.max_backoff_s)
        return min(self.max_backoff_s, self.backoff_s * 2 ** try_number) * (0.5 + random.random() / 2)

    def _headers(self, method: str, idempotency_key: str | None) -> dict[str, str]:
        headers = dict(self.headers)
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        return headers


class Client(_Base):
    """Blocking client. Use as a context manager, or call close()."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 max_retries: int = 4, backoff_s: float = 0.5, max_backoff_s: float = 20.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries, backoff_s=backoff_s,
                         max_backoff_s=max_backoff_s)
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
                idempotency_key: str | None = None) -> httpx.Response:
        """One logical request, retried on 429/5xx/connection errors with the same Idempotency-Key."""
        headers = self._headers(method, idempotency_key)
        params = {k: v for k, v in (params or {}).items() if v is not None}
        for try_number in range(self.max_retries + 1):
            response = None
            try:
                response = self.http.request(method, path, json=json_body, params=params, headers=headers)
            except httpx.TransportError as exc:
                if try_number == self.max_retries:
                    raise ServiceUnreachable(f"cannot reach {self.base_url}: {type(exc).__name__}: {exc}") from exc
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRY_STATUSES or try_number == self.max_retries:
                    raise _error_for(response)
            time.sleep(self._delay(try_number, response))
        raise AssertionError("unreachable")

    # ---- jobs -------------------------------------------------------------------------------------------------
    def submit(self, problem: Problem | dict[str, Any], *, idempotency_key: str | None = None, **options: Any) -> Job:
        """Submit one problem. Options: method, budget, settings, baselines, metadata, model."""
        body = _job_body(problem, options)
        return Job.model_validate(self.request("POST", "/v1/jobs", json_body=body,
                                               idempotency_key=idempotency_key).json())

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self.request("GET", f"/v1/jobs/{job_id}").json())

    def list(self, *, status: str | None = None, after: str | None = None, limit: int = 20) -> JobList:
        params = {"status": status, "after": after, "limit": limit}
        return JobList.model_validate(self.request("GET", "/v1/jobs", params=params).json())

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self.request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def event_page(self, job_id: str, *, after: str | None = None, limit: int = 100) -> EventList:
        params = {"after": after, "limit": limit}
        return EventList.model_validate(self.request("GET", f"/v1/jobs/{job_id}/events", params=params).json())

    def events(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[JobEvent]:
        """The job's events as they happen (SSE), reconnecting with Last-Event-ID, until its final status."""
        failures = 0
        while True:
            headers = {**self.headers, "Accept": "text/event-stream"}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            try:
                with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                      timeout=httpx.Timeout(self.timeout, read=None)) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise _error_for(response)
                    sse = _SSELines()
                    for line in response.iter_lines():
                        event = sse.feed(line)
                        if event is None:
                            continue
                        last_event_id, failures = event.id, 0
                        yield event
                        if event.type == "status" and event.data.get("status") in _TERMINAL:
                            return
                return  # the server closed the stream: the job is over
            except httpx.TransportError as exc:
                failures += 1
                if failures > self.max_retries:
                    raise ServiceUnreachable(f"event stream of {job_id} lost: {exc}") from exc
                time.sleep(self._delay(failures - 1, None))

    def wait(self, job_id: str, *, timeout: float | None = None, poll_s: float = 1.0, progress: bool = False) -> Job:
        """Poll until the job has finished (any final status); optionally draw a progress bar."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with _progress(progress, job_id) as show:
            while True:
                job = self.get(job_id)
                show(job)
                if job.done:
                    return job
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(f"job {job_id} still {job.status} after {timeout} s")
                time.sleep(poll_s)

    def attempts(self, job_id: str) -> list[Attempt]:
        attempts, after = [], 0
        while True:
            page = AttemptList.model_validate(self.request(
                "GET", f"/v1/jobs/{job_id}/attempts", params={"after": after, "limit": 500}).json())
            attempts += page.data
            if not page.has_more or page.last_id is None:
                return attempts
            after = page.last_id

    def solution(self, job_id: str) -> Solution:
        return Solution.model_validate(self.request("GET", f"/v1/jobs/{job_id}/solution").json())

    def curve(self, job_id: str) -> JobCurve:
        return JobCurve.model_validate(self.request("GET", f"/v1/jobs/{job_id}/curve").json())

    def curve_svg(self, job_id: str) -> str:
        return self.request("GET", f"/v1/jobs/{job_id}/curve.svg").text

    def download_adapter(self, job_id: str, path: str | Path) -> Path:
        """Save the job's LoRA adapter (tar.gz of a peft adapter folder) to `path`."""
        path = Path(path)
        path.write_bytes(self.request("GET", f"/v1/jobs/{job_id}/adapter").content)
        return path

    def result(self, job: Job) -> SolveResult:
        comparison = self.curve(job.id).comparison if job.status in ("succeeded", "exhausted") else None
        return SolveResult(job=job, solution=self.solution(job.id), comparison=comparison)

    def solve(self, problem: Problem | dict[str, Any], *, timeout: float | None = None, progress: bool = False,
              poll_s: float = 1.0, **options: Any) -> SolveResult:
        """Submit, wait for the end, and return the job with its solution and discovery curve."""
        job = self.submit(problem, **options)
        return self.result(self.wait(job.id, timeout=timeout, progress=progress, poll_s=poll_s))

    # ---- batches ----------------------------------------------------------------------------------------------
    def submit_batch(self, problems: Sequence[Problem | dict[str, Any]], *, concurrency: int | None = None,
                     idempotency_key: str | None = None, **options: Any) -> Batch:
        body = _batch_body(problems, concurrency, options)
        return Batch.model_validate(self.request("POST", "/v1/batches", json_body=body,
                                                 idempotency_key=idempotency_key).json())

    def get_batch(self, batch_id: str) -> Batch:
        return Batch.model_validate(self.request("GET", f"/v1/batches/{batch_id}").json())

    def list_batches(self, *, after: str | None = None, limit: int = 10) -> BatchList:
        params = {"after": after, "limit": limit}
        return BatchList.model_validate(self.request("GET", "/v1/batches", params=params).json())

    def cancel_batch(self, batch_id: str) -> Batch:
        return Batch.model_validate(self.request("POST", f"/v1/batches/{batch_id}/cancel").json())

    def wait_batch(self, batch_id: str, *, timeout: float | None = None, poll_s: float = 1.0) -> Batch:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = self.get_batch(batch_id)
            if batch.status != "in_progress":
                return batch
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"batch {batch_id} unfinished after {timeout} s: {batch.counts}")
            time.sleep(poll_s)

    def solve_batch(self, problems: Sequence[Problem | dict[str, Any]], *, concurrency: int = 4,
                    timeout: float | None = None, poll_s: float = 1.0, **options: Any) -> BatchResult:
        """Solve many problems (at most `concurrency` at once); results in the problems' order and the batch curve."""
        batch = self.submit_batch(problems, concurrency=concurrency, **options)
        batch = self.wait_batch(batch.id, timeout=timeout, poll_s=poll_s)
        results = [self.result(self.get(job_id)) for job_id in batch.job_ids]
        return BatchResult(batch=batch, results=results, curve=batch.curve)


class AsyncClient(_Base):
    """The asyncio client: the same methods as `Client`, awaited."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 30.0,
                 max_retries: int = 4, backoff_s: float = 0.5, max_backoff_s: float = 20.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries, backoff_s=backoff_s,
                         max_backoff_s=max_backoff_s)
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
                      idempotency_key: str | None = None) -> httpx.Response:
        headers = self._headers(method, idempotency_key)
        params = {k: v for k, v in (params or {}).items() if v is not None}
        for try_number in range(self.max_retries + 1):
            response = None
            try:
                response = await self.http.request(method, path, json=json_body, params=params, headers=headers)
            except httpx.TransportError as exc:
                if try_number == self.max_retries:
                    raise ServiceUnreachable(f"cannot reach {self.base_url}: {type(exc).__name__}: {exc}") from exc
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRY_STATUSES or try_number == self.max_retries:
                    raise _error_for(response)
            await asyncio.sleep(self._delay(try_number, response))
        raise AssertionError("unreachable")

    async def submit(self, problem: Problem | dict[str, Any], *, idempotency_key: str | None = None,
                     **options: Any) -> Job:
        body = _job_body(problem, options)
        response = await self.request("POST", "/v1/jobs", json_body=body, idempotency_key=idempotency_key)
        return Job.model_validate(response.json())

    async def get(self, job_id: str) -> Job:
        return Job.model_validate((await self.request("GET", f"/v1/jobs/{job_id}")).json())

    async def list(self, *, status: str | None = None, after: str | None = None, limit: int = 20) -> JobList:
        params = {"status": status, "after": after, "limit": limit}
        return JobList.model_validate((await self.request("GET", "/v1/jobs", params=params)).json())

    async def cancel(self, job_id: str) -> Job:
        return Job.model_validate((await self.request("POST", f"/v1/jobs/{job_id}/cancel")).json())

    async def events(self, job_id: str, *, last_event_id: str | None = None) -> AsyncIterator[JobEvent]:
        failures = 0
        while True:
            headers = {**self.headers, "Accept": "text/event-stream"}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            try:
                async with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                            timeout=httpx.Timeout(self.timeout, read=None)) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise _error_for(response)
                    sse = _SSELines()
                    async for line in response.aiter_lines():
                        event = sse.feed(line)
                        if event is None:
                            continue
                        last_event_id, failures = event.id, 0
                        yield event
                        if event.type == "status" and event.data.get("status") in _TERMINAL:
                            return
                return
            except httpx.TransportError as exc:
                failures += 1
                if failures > self.max_retries:
                    raise ServiceUnreachable(f"event stream of {job_id} lost: {exc}") from exc
                await asyncio.sleep(self._delay(failures - 1, None))

    async def wait(self, job_id: str, *, timeout: float | None = None, poll_s: float = 1.0,
                   progress: bool = False) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        with _progress(progress, job_id) as show:
            while True:
                job = await self.get(job_id)
                show(job)
                if job.done:
                    return job
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(f"job {job_id} still {job.status} after {timeout} s")
                await asyncio.sleep(poll_s)

    async def event_page(self, job_id: str, *, after: str | None = None, limit: int = 100) -> EventList:
        params = {"after": after, "limit": limit}
        return EventList.model_validate((await self.request("GET", f"/v1/jobs/{job_id}/events", params=params)).json())

    async def attempts(self, job_id: str) -> list[Attempt]:
        attempts, after = [], 0
        while True:
            response = await self.request("GET", f"/v1/jobs/{job_id}/attempts", params={"after": after, "limit": 500})
            page = AttemptList.model_validate(response.json())
            attempts += page.data
            if not page.has_more or page.last_id is None:
                return attempts
            after = page.last_id

    async def curve_svg(self, job_id: str) -> str:
        return (await self.request("GET", f"/v1/jobs/{job_id}/curve.svg")).text

    async def download_adapter(self, job_id: str, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes((await self.request("GET", f"/v1/jobs/{job_id}/adapter")).content)
        return path

    async def list_batches(self, *, after: str | None = None, limit: int = 10) -> BatchList:
        params = {"after": after, "limit": limit}
        return BatchList.model_validate((await self.request("GET", "/v1/batches", params=params)).json())

    async def solution(self, job_id: str) -> Solution:
        return Solution.model_validate((await self.request("GET", f"/v1/jobs/{job_id}/solution")).json())

    async def curve(self, job_id: str) -> JobCurve:
        return JobCurve.model_validate((await self.request("GET", f"/v1/jobs/{job_id}/curve")).json())

    async def result(self, job: Job) -> SolveResult:
        comparison = (await self.curve(job.id)).comparison if job.status in ("succeeded", "exhausted") else None
        return SolveResult(job=job, solution=await self.solution(job.id), comparison=comparison)

    async def solve(self, problem: Problem | dict[str, Any], *, timeout: float | None = None,
                    progress: bool = False, poll_s: float = 1.0, **options: Any) -> SolveResult:
        job = await self.submit(problem, **options)
        return await self.result(await self.wait(job.id, timeout=timeout, progress=progress, poll_s=poll_s))

    async def submit_batch(self, problems: Sequence[Problem | dict[str, Any]], *, concurrency: int | None = None,
                           idempotency_key: str | None = None, **options: Any) -> Batch:
        body = _batch_body(problems, concurrency, options)
        response = await self.request("POST", "/v1/batches", json_body=body, idempotency_key=idempotency_key)
        return Batch.model_validate(response.json())

    async def get_batch(self, batch_id: str) -> Batch:
        return Batch.model_validate((await self.request("GET", f"/v1/batches/{batch_id}")).json())

    async def cancel_batch(self, batch_id: str) -> Batch:
        return Batch.model_validate((await self.request("POST", f"/v1/batches/{batch_id}/cancel")).json())

    async def solve_batch(self, problems: Sequence[Problem | dict[str, Any]], *, concurrency: int = 4,
                          timeout: float | None = None, poll_s: float = 1.0, **options: Any) -> BatchResult:
        batch = await self.submit_batch(problems, concurrency=concurrency, **options)
        deadline = None if timeout is None else time.monotonic() + timeout
        while batch.status == "in_progress":
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"batch {batch.id} unfinished after {timeout} s: {batch.counts}")
            await asyncio.sleep(poll_s)
            batch = await self.get_batch(batch.id)
        results = [await self.result(await self.get(job_id)) for job_id in batch.job_ids]
        return BatchResult(batch=batch, results=results, curve=batch.curve)


_TERMINAL = frozenset({"succeeded", "exhausted", "failed", "cancelled"})


def _batch_body(problems: Sequence[Problem | dict[str, Any]], concurrency: int | None,
                options: dict[str, Any]) -> dict[str, Any]:
    body = BatchCreate.model_validate({"problems": [_problem(p) for p in problems], "concurrency": concurrency,
                                       **options})
    return body.model_dump(mode="json", exclude_unset=True)


class _progress:
    """A rich progress bar of a job's attempts (or nothing), fed with each polled Job."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled, self.label = enabled, label

    def __enter__(self):
        if not self.enabled:
            return lambda job: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("attempts {task.fields[status]}"), TimeElapsedColumn(),
                            console=Console(stderr=True))
        self.bar.__enter__()
        task = self.bar.add_task(self.label, total=None, status="")

        def show(job: Job) -> None:
            status = f"[green]solved @ {job.first_success_attempt}[/]" if job.solved else job.status
            self.bar.update(task, total=job.budget, completed=job.attempts, status=status)

        return show

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)
