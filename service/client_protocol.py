"""The client's protocol, written once and free of I/O: how each call builds its request, retries, keeps its
Idempotency-Key, reads its answer, pages, polls and follows an event stream.

Each API method is a generator. Where it needs the network or the clock it yields an instruction (`Send`,
`Sleep`, `Open`, `NextLine`) and gets the result sent back (or the transport error thrown in); a stream's events
come out as `Emit`. service/client.py runs these generators with blocking httpx (`Client`) and with asyncio
(`AsyncClient`): both classes are generated from `ApiProtocol`, so they cannot drift apart.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from sdpo_core.curves import Comparison
from sdpo_core.problem import Problem
from sdpo_core.records import Attempt
from sdpo_core.statuses import FINISHED, WITH_CURVE
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
T = TypeVar("T")


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


def error_for(response: httpx.Response) -> APIError:
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


# ---- instructions to the I/O driver -------------------------------------------------------------------------------
@dataclass
class Send:
    """Send one HTTP request; the driver answers with the httpx.Response or throws the transport error in."""

    method: str
    path: str
    headers: dict[str, str]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None


@dataclass
class Sleep:
    seconds: float


@dataclass
class Open:
    """Open a streamed GET (closing any stream open before); the driver answers with the response, its body
    read when the status is an error."""

    path: str
    headers: dict[str, str]


@dataclass
class NextLine:
    """The next line of the open stream, or None at its end."""


@dataclass
class Emit:
    """An item of a streaming method's output (the driver hands it to the caller)."""

    item: Any


Steps = Generator[Any, Any, T]  # what every protocol method is: instructions out, results in, a value at the end


def streaming(method):
    """Marks a protocol method whose callers iterate over its `Emit`s (sync: an iterator, async: an async one)."""
    method.streams = True
    return method


# ---- the protocol ------------------------------------------------------------------------------------------------
class ApiProtocol:
    """Every call of the API, with its retries and parsing; no I/O of its own (see the module's docstring)."""

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

    # ---- one logical request ----------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
                idempotency_key: str | None = None) -> Steps[httpx.Response]:
        """One logical request, retried on 429/5xx/connection errors; a POST keeps one Idempotency-Key."""
        headers = dict(self.headers)
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        params = {k: v for k, v in (params or {}).items() if v is not None}
        for try_number in range(self.max_retries + 1):
            response = None
            try:
                response = yield Send(method, path, headers, params, json_body)
            except httpx.TransportError as exc:
                if try_number == self.max_retries:
                    raise ServiceUnreachable(f"cannot reach {self.base_url}: {type(exc).__name__}: {exc}") from exc
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRY_STATUSES or try_number == self.max_retries \
                        or response.headers.get("x-should-retry") == "false":  # the server says it will not pass
                    raise error_for(response)
            yield Sleep(self._delay(try_number, response))
        raise AssertionError("unreachable")

    def _get(self, path: str, model: type[T], params: dict | None = None) -> Steps[T]:
        response = yield from self.request("GET", path, params=params)
        return model.model_validate(response.json())

    def _post(self, path: str, model: type[T], body: Any = None, idempotency_key: str | None = None) -> Steps[T]:
        response = yield from self.request("POST", path, json_body=body, idempotency_key=idempotency_key)
        return model.model_validate(response.json())

    # ---- jobs -------------------------------------------------------------------------------------------------
    def submit(self, problem: Problem | dict[str, Any], *, idempotency_key: str | None = None,
               **options: Any) -> Steps[Job]:
        """Submit one problem. Options: method, budget, settings, baselines, metadata, model."""
        return (yield from self._post("/v1/jobs", Job, _job_body(problem, options), idempotency_key))

    def get(self, job_id: str) -> Steps[Job]:
        return (yield from self._get(f"/v1/jobs/{job_id}", Job))

    def list(self, *, status: str | None = None, after: str | None = None, limit: int = 20) -> Steps[JobList]:
        return (yield from self._get("/v1/jobs", JobList, {"status": status, "after": after, "limit": limit}))

    def cancel(self, job_id: str) -> Steps[Job]:
        return (yield from self._post(f"/v1/jobs/{job_id}/cancel", Job))

    def event_page(self, job_id: str, *, after: str | None = None, limit: int = 100) -> Steps[EventList]:
        return (yield from self._get(f"/v1/jobs/{job_id}/events", EventList, {"after": after, "limit": limit}))

    @streaming
    def events(self, job_id: str, *, last_event_id: str | None = None) -> Steps[None]:
        """The job's events as they happen (SSE), reconnecting with Last-Event-ID, until its final status."""
        failures = 0
        while True:
            headers = {**self.headers, "Accept": "text/event-stream"}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            try:
                response = yield Open(f"/v1/jobs/{job_id}/events", headers)
                if response.status_code >= 400:
                    raise error_for(response)
                sse = _SSELines()
                while (line := (yield NextLine())) is not None:
                    event = sse.feed(line)
                    if event is None:
                        continue
                    last_event_id, failures = event.id, 0
                    yield Emit(event)
                    if event.type == "status" and event.data.get("status") in FINISHED:
                        return
                return  # the server closed the stream: the job is over
            except httpx.TransportError as exc:
                failures += 1
                if failures > self.max_retries:
                    raise ServiceUnreachable(f"event stream of {job_id} lost: {exc}") from exc
                yield Sleep(self._delay(failures - 1, None))

    def wait(self, job_id: str, *, timeout: float | None = None, poll_s: float = 1.0,
             progress: bool = False) -> Steps[Job]:
        """Poll until the job has finished (any final status); optionally draw a progress bar."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with _progress(progress, job_id) as show:
            while True:
                job = yield from self.get(job_id)
                show(job)
                if job.done:
                    return job
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(f"job {job_id} still {job.status} after {timeout} s")
                yield Sleep(poll_s)

    def attempts(self, job_id: str) -> Steps[list[Attempt]]:
        """Every stored attempt of the job, in order."""
        attempts, after = [], 0
        while True:
            page = yield from self._get(f"/v1/jobs/{job_id}/attempts", AttemptList, {"after": after, "limit": 500})
            attempts += page.data
            if not page.has_more or page.last_id is None:
                return attempts
            after = page.last_id

    def solution(self, job_id: str) -> Steps[Solution]:
        return (yield from self._get(f"/v1/jobs/{job_id}/solution", Solution))

    def curve(self, job_id: str) -> Steps[JobCurve]:
        return (yield from self._get(f"/v1/jobs/{job_id}/curve", JobCurve))

    def curve_svg(self, job_id: str) -> Steps[str]:
        return (yield from self.request("GET", f"/v1/jobs/{job_id}/curve.svg")).text

    def download_adapter(self, job_id: str, path: str | Path) -> Steps[Path]:
        """Save the job's LoRA adapter (tar.gz of a peft adapter folder) to `path`."""
        response = yield from self.request("GET", f"/v1/jobs/{job_id}/adapter")
        path = Path(path)
        path.write_bytes(response.content)
        return path

    def result(self, job: Job) -> Steps[SolveResult]:
        comparison = (yield from self.curve(job.id)).comparison if job.status in WITH_CURVE else None
        return SolveResult(job=job, solution=(yield from self.solution(job.id)), comparison=comparison)

    def solve(self, problem: Problem | dict[str, Any], *, timeout: float | None = None, progress: bool = False,
              poll_s: float = 1.0, **options: Any) -> Steps[SolveResult]:
        """Submit, wait for the end, and return the job with its solution and discovery curve."""
        job = yield from self.submit(problem, **options)
        return (yield from self.result((yield from self.wait(job.id, timeout=timeout, progress=progress,
                                                             poll_s=poll_s))))

    # ---- batches ----------------------------------------------------------------------------------------------
    def submit_batch(self, problems: Sequence[Problem | dict[str, Any]], *, concurrency: int | None = None,
                     idempotency_key: str | None = None, **options: Any) -> Steps[Batch]:
        return (yield from self._post("/v1/batches", Batch, _batch_body(problems, concurrency, options),
                                      idempotency_key))

    def get_batch(self, batch_id: str) -> Steps[Batch]:
        return (yield from self._get(f"/v1/batches/{batch_id}", Batch))

    def list_batches(self, *, after: str | None = None, limit: int = 10) -> Steps[BatchList]:
        return (yield from self._get("/v1/batches", BatchList, {"after": after, "limit": limit}))

    def cancel_batch(self, batch_id: str) -> Steps[Batch]:
        return (yield from self._post(f"/v1/batches/{batch_id}/cancel", Batch))

    def wait_batch(self, batch_id: str, *, timeout: float | None = None, poll_s: float = 1.0) -> Steps[Batch]:
        """Poll until every job of the batch has finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = yield from self.get_batch(batch_id)
            if batch.status != "in_progress":
                return batch
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"batch {batch_id} unfinished after {timeout} s: {batch.counts}")
            yield Sleep(poll_s)

    def solve_batch(self, problems: Sequence[Problem | dict[str, Any]], *, concurrency: int = 4,
                    timeout: float | None = None, poll_s: float = 1.0, **options: Any) -> Steps[BatchResult]:
        """Solve many problems (at most `concurrency` at once); results in the problems' order and the batch curve."""
        batch = yield from self.submit_batch(problems, concurrency=concurrency, **options)
        batch = yield from self.wait_batch(batch.id, timeout=timeout, poll_s=poll_s)
        results = []
        for job_id in batch.job_ids:
            results.append((yield from self.result((yield from self.get(job_id)))))
        return BatchResult(batch=batch, results=results, curve=batch.curve)


# ---- request bodies and the event-stream format ------------------------------------------------------------------
def _problem(problem: Problem | dict[str, Any]) -> Problem:
    return problem if isinstance(problem, Problem) else Problem.model_validate(problem)


def _job_body(problem: Problem | dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    body = JobCreate.model_validate({"problem": _problem(problem), **options})
    return body.model_dump(mode="json", exclude_unset=True)


def _batch_body(problems: Sequence[Problem | dict[str, Any]], concurrency: int | None,
                options: dict[str, Any]) -> dict[str, Any]:
    body = BatchCreate.model_validate({"problems": [_problem(p) for p in problems], "concurrency": concurrency,
                                       **options})
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
