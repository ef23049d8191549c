"""/v1/jobs: submit, read, list, cancel; events (SSE or JSON pages), attempts, solution, curve, adapter."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event

from sdpo_core.measure.plot import discovery_svg
from sdpo_core.records import Attempt
from service.deps import IdempotencyDep, SettingsDep, StoreDep, TenantDep, owned
from service.errors import ApiError
from service.schemas import AttemptList, EventList, Job, JobCreate, JobCurve, JobEvent, JobList, Solution
from service.views import FINISHED_WITH_CURVE, job_comparison, job_view
from workers.jobs import STATUSES, TERMINAL, JobStatus, new_id
from workers.store import NewJob

router = APIRouter(prefix="/jobs", tags=["jobs"])
STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
ERRORS = {401: {"description": "Missing or invalid API key"}, 404: {"description": "No such job"}}


def fingerprint(body: JobCreate | object) -> str:
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


def submission_error(outcome: str, found: str, cap: int, n: int) -> ApiError:
    if outcome == "mismatch":
        return ApiError(422, f"this Idempotency-Key was used for another request body (it created '{found}'); "
                             "use a new key for a new request", code="idempotency_key_reused")
    return ApiError(429, f"the tenant has {found} queued or running jobs; the cap is {cap} and this request adds "
                         f"{n}", code="too_many_active_jobs", headers={"Retry-After": "30"})


@router.post("", status_code=201, response_model=Job, responses={**ERRORS, 409: {}, 413: {}, 422: {}, 429: {}})
async def create_job(body: JobCreate, response: Response, tenant: TenantDep, store: StoreDep, settings: SettingsDep,
                     idempotency: IdempotencyDep) -> Job:
    """Submit one problem; the same Idempotency-Key with the same body returns the same job."""
    spec = body.to_spec(body.problem)
    job_id = new_id("job")
    outcome = await store.submit(
        tenant=tenant, jobs=[NewJob(job_id, spec.model_dump_json(), json.dumps(body.metadata))], result_id=job_id,
        idempotency_key=idempotency, fingerprint=fingerprint(body), idempotency_ttl_s=settings.idempotency_ttl_s,
        max_active_jobs=settings.max_active_jobs,
    )
    if outcome.outcome not in ("created", "existing"):
        raise submission_error(outcome.outcome, outcome.id, settings.max_active_jobs, 1)
    if outcome.outcome == "existing":
        response.status_code = 200
    return job_view(await owned(store, tenant, outcome.id))


@router.get("", response_model=JobList, responses=ERRORS)
async def list_jobs(
    tenant: TenantDep, store: StoreDep, status: JobStatus | None = None,
    after: Annotated[str | None, Query(max_length=100, description="The last id of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobList:
    """The tenant's jobs, newest first, in cursor pages."""
    index = store.keys.tenant_status(tenant, status) if status else store.keys.tenant_jobs(tenant)
    ids, has_more = await store.page_ids(index, after=after, limit=limit)
    records = await store.get_many(ids)
    await store.prune_index(index, [i for i, r in zip(ids, records, strict=True) if r is None])
    jobs = [job_view(r) for r in records if r is not None]
    return JobList(data=jobs, has_more=has_more, last_id=ids[-1] if ids else None)


@router.get("/{job_id}", response_model=Job, responses=ERRORS)
async def get_job(job_id: str, tenant: TenantDep, store: StoreDep) -> Job:
    """One job: status, timestamps, progress."""
    return job_view(await owned(store, tenant, job_id))


@router.post("/{job_id}/cancel", response_model=Job, responses={**ERRORS, 409: {}})
async def cancel_job(job_id: str, tenant: TenantDep, store: StoreDep) -> Job:
    """Cancel a job: a queued one at once, a running one within one step. Idempotent."""
    record = await owned(store, tenant, job_id)
    if record["status"] in TERMINAL - {"cancelled"}:
        raise ApiError(409, f"job '{job_id}' already {record['status']}; there is nothing to cancel",
                       code="job_finished")
    await store.cancel(job_id)
    return job_view(await owned(store, tenant, job_id))


# ---- events ----------------------------------------------------------------------------------------------------
def _event(entry_id: str, fields: dict[str, str]) -> JobEvent:
    return JobEvent(id=entry_id, type=fields.get("type", "status"), data=json.loads(fields.get("data") or "{}"))


def _cursor(value: str | None, name: str) -> str | None:
    if value is not None and not STREAM_ID.match(value):
        raise ApiError(400, f"{name} must be an event id like '1712345678901-0'", code="invalid_cursor")
    return value


async def _sse(request: Request, store: StoreDep, job_id: str, cursor: str, ping_s: float) -> AsyncIterator[bytes]:
    """Events after `cursor`, then new ones as they come, until the job's final status event."""
    while not await request.is_disconnected():
        rows = await store.events(job_id, after=cursor, limit=100, block_ms=int(ping_s * 1000))
        if not rows:
            record = await store.get(job_id)
            if record is None or record["status"] in TERMINAL and not await store.events(job_id, after=cursor,
                                                                                          limit=1):
                return
            yield KEEPALIVE_COMMENT
            continue
        for entry_id, fields in rows:
            event = _event(entry_id, fields)
            yield format_sse_event(data_str=json.dumps(event.data), event=event.type, id=entry_id)
            cursor = entry_id
            if event.type == "status" and event.data.get("status") in TERMINAL:
                return
        await asyncio.sleep(0)


@router.get(
    "/{job_id}/events", response_model=EventList,
    responses={**ERRORS, 400: {}, 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                                       "description": "JSON page, or an SSE stream with Accept: text/event-stream"}},
)
async def job_events(
    job_id: str, request: Request, tenant: TenantDep, store: StoreDep, settings: SettingsDep,
    after: Annotated[str | None, Query(max_length=50, description="Event id to continue after.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=50)] = None,
):
    """The job's events: a JSON page, or Server-Sent Events (resumable with Last-Event-ID) for text/event-stream."""
    await owned(store, tenant, job_id)
    cursor = _cursor(last_event_id, "Last-Event-ID") or _cursor(after, "after")
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(_sse(request, store, job_id, cursor or "0", settings.sse_ping_s),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    rows = await store.events(job_id, after=cursor, limit=limit + 1)
    events = [_event(i, f) for i, f in rows[:limit]]
    return EventList(data=events, has_more=len(rows) > limit, last_id=events[-1].id if events else None)


# ---- results ---------------------------------------------------------------------------------------------------
@router.get("/{job_id}/attempts", response_model=AttemptList, responses=ERRORS)
async def job_attempts(
    job_id: str, tenant: TenantDep, store: StoreDep,
    after: Annotated[int, Query(ge=0, le=10_000_000, description="Attempt index to continue after.")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AttemptList:
    """The method's attempts in order: step, text, reward, feedback."""
    await owned(store, tenant, job_id)
    rows, has_more = await store.attempts(job_id, after=after, limit=limit)
    attempts = [Attempt.model_validate_json(r) for r in rows]
    return AttemptList(data=attempts, has_more=has_more, last_id=attempts[-1].index if attempts else None)


@router.get("/{job_id}/solution", response_model=Solution, responses=ERRORS)
async def job_solution(job_id: str, tenant: TenantDep, store: StoreDep) -> Solution:
    """The first verified solution, if one was found."""
    job = job_view(await owned(store, tenant, job_id))
    attempt = None
    if job.first_success_attempt is not None:
        rows, _ = await store.attempts(job_id, after=job.first_success_attempt - 1, limit=1)
        attempt = Attempt.model_validate_json(rows[0]) if rows else None
    return Solution(job_id=job.id, status=job.status, solved=attempt is not None, attempt=attempt)


async def _finished_job(store: StoreDep, tenant: str, job_id: str) -> Job:
    job = job_view(await owned(store, tenant, job_id))
    if job.status not in FINISHED_WITH_CURVE:
        raise ApiError(409, f"job '{job_id}' is {job.status}: the curve exists once it has succeeded or exhausted "
                            "its budget", code="curve_not_ready")
    return job


@router.get("/{job_id}/curve", response_model=JobCurve, responses={**ERRORS, 409: {}})
async def job_curve(job_id: str, tenant: TenantDep, store: StoreDep) -> JobCurve:
    """discovery@k of the method and pass@k of best-of-k, with confidence bands."""
    job = await _finished_job(store, tenant, job_id)
    return JobCurve(job_id=job.id, status=job.status, comparison=await asyncio.to_thread(job_comparison, job))


@router.get("/{job_id}/curve.svg", response_class=Response, responses={
    **ERRORS, 409: {}, 200: {"content": {"image/svg+xml": {"schema": {"type": "string"}}}}})
async def job_curve_svg(job_id: str, tenant: TenantDep, store: StoreDep) -> Response:
    """The discovery curve as an SVG picture."""
    job = await _finished_job(store, tenant, job_id)
    comparison = await asyncio.to_thread(job_comparison, job)
    title = f"Discovery: {job.problem.id or job.id}"
    return Response(discovery_svg(comparison.curves, title=title, note=comparison.note), media_type="image/svg+xml")


@router.get("/{job_id}/adapter", response_class=Response, responses={
    **ERRORS, 409: {}, 200: {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}}})
async def job_adapter(job_id: str, tenant: TenantDep, store: StoreDep) -> Response:
    """The trained LoRA adapter: a tar.gz of a folder that peft's PeftModel.from_pretrained loads."""
    job = job_view(await owned(store, tenant, job_id))
    if job.method != "sdpo":
        raise ApiError(409, f"a {job.method} job trains no adapter", code="no_adapter")
    if job.status not in FINISHED_WITH_CURVE:
        raise ApiError(409, f"job '{job_id}' is {job.status}: the adapter is exported when it finishes",
                       code="adapter_not_ready")
    archive = await store.adapter(job_id)
    if archive is None:
        raise ApiError(404, f"the adapter of job '{job_id}' is not stored (export failed or expired)",
                       code="adapter_not_found")
    return Response(archive, media_type="application/gzip",
                    headers={"Content-Disposition": f'attachment; filename="{job_id}-adapter.tar.gz"'})


__all__ = ["router", "STATUSES"]
