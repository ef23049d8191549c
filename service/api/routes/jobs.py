"""/v1/jobs: submit, read, list, cancel; events (SSE or JSON pages), attempts, solution, curve, adapter."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from sdpo_core.measure.plot import discovery_svg
from sdpo_core.methods import learns
from sdpo_core.records import Attempt
from sdpo_core.statuses import BASELINE_LIVE, FINISHED, WITH_CURVE, JobStatus
from service.deps import BlobsDep, IdempotencyDep, SettingsDep, StoreDep, TenantDep, owned
from service.errors import ApiError
from service.schemas import AttemptList, EventList, Job, JobCreate, JobCurve, JobEvent, JobList, JobSummary, Solution
from service.streams import SlotStream
from service.streams import job_events as stream_events
from service.submission import fingerprint, job_spec, new_job, submission_error, summary_json
from service.views import job_comparison, job_summary_view, job_view
from workers.checkpoint import ADAPTER
from workers.jobs import JobHead, JobSpec
from workers.store import JobStore, TenantIndex

router = APIRouter(prefix="/jobs", tags=["jobs"])
STREAM_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")  # a Redis stream id: two unsigned 64-bit numbers
ERRORS = {401: {"description": "Missing or invalid API key"}, 404: {"description": "No such job"}}


async def read_summaries(store: JobStore, job_ids: list[str]) -> list[JobSummary | None]:
    """The listing views of `job_ids` (None where gone), read without their specs; a record stored before summaries
    existed is read whole once to make its summary."""
    heads = await store.get_heads(job_ids)
    older = [head.id for head in heads if head is not None and not head.summary]
    if older:
        specs = {r.id: r.job_spec() for r in await store.get_many(older) if r is not None}
        heads = [_with_summary(head, specs) for head in heads]
    return [job_summary_view(head) if head is not None else None for head in heads]


def _with_summary(head: JobHead | None, specs: dict[str, JobSpec]) -> JobHead | None:
    if head is None or head.summary:
        return head
    spec = specs.get(head.id)
    return head.model_copy(update={"summary": summary_json(spec)}) if spec is not None else None


@router.post("", status_code=201, response_model=Job, responses={**ERRORS, 409: {}, 413: {}, 422: {}, 429: {}})
async def create_job(body: JobCreate, response: Response, tenant: TenantDep, store: StoreDep, settings: SettingsDep,
                     idempotency: IdempotencyDep) -> Job:
    """Submit one problem; the same Idempotency-Key with the same body returns the same job."""
    job = new_job(job_spec(body, body.problem, settings), json.dumps(body.metadata))
    outcome = await store.submit(
        tenant=tenant, jobs=[job], result_id=job.id,
        idempotency_key=idempotency, fingerprint=fingerprint(body), idempotency_ttl_s=settings.idempotency_ttl_s,
        max_active_jobs=settings.max_active_jobs, max_tenant_bytes=settings.max_tenant_bytes,
    )
    if outcome.outcome not in ("created", "existing"):
        raise submission_error(outcome.outcome, outcome.id, settings, 1)
    if outcome.outcome == "existing":
        response.status_code = 200
    return job_view(await owned(store, tenant, outcome.id))


@router.get("", response_model=JobList, responses=ERRORS)
async def list_jobs(
    tenant: TenantDep, store: StoreDep, status: JobStatus | None = None,
    after: Annotated[str | None, Query(max_length=100, description="The last id of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobList:
    """The tenant's jobs, newest first, in cursor pages; each a summary (GET /v1/jobs/{id} has the problem)."""
    index = TenantIndex(tenant, status=status)
    ids, has_more = await store.page_ids(index, after=after, limit=limit)
    summaries = await read_summaries(store, ids)
    await store.prune_index(index, [i for i, s in zip(ids, summaries, strict=True) if s is None])
    jobs = [s for s in summaries if s is not None]
    return JobList(data=jobs, has_more=has_more, last_id=ids[-1] if ids else None)


@router.get("/{job_id}", response_model=Job, responses=ERRORS)
async def get_job(job_id: str, tenant: TenantDep, store: StoreDep) -> Job:
    """One job: status, timestamps, progress."""
    return job_view(await owned(store, tenant, job_id))


@router.post("/{job_id}/cancel", response_model=Job, responses={**ERRORS, 409: {}})
async def cancel_job(job_id: str, tenant: TenantDep, store: StoreDep) -> Job:
    """Cancel a job: a queued one at once, a running one within one step. Idempotent. A job whose outcome is final
    while its best-of-k baseline still draws: the baseline stops (the job's status stays)."""
    record = await owned(store, tenant, job_id)
    if record.status in FINISHED and record.baseline_state in BASELINE_LIVE:
        await store.request_cancel(record)
    elif record.status in FINISHED - {"cancelled"}:
        raise ApiError(409, f"job '{job_id}' already {record.status}; there is nothing to cancel",
                       code="job_finished")
    await store.cancel(record)
    return job_view(await owned(store, tenant, job_id))


# ---- events ----------------------------------------------------------------------------------------------------
def _event(entry_id: str, fields: dict[str, str]) -> JobEvent:
    return JobEvent(id=entry_id, type=fields.get("type", "status"), data=json.loads(fields.get("data") or "{}"))


def _cursor(value: str | None, name: str) -> str | None:
    """An event id as Redis takes it: checked here, so that a malformed or out-of-range one is a 400 naming the
    parameter, not an error from Redis."""
    if value is None:
        return None
    found = STREAM_ID.match(value)
    if found is None or any(int(part) >= 2**64 for part in found.groups()):
        message = "must be an event id like '1712345678901-0': two whole numbers below 2^64"
        raise ApiError(400, f"{name} {message}", code="invalid_cursor", errors=[{"field": name, "message": message}])
    return value


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
        release = request.app.state.stream_slots.take(tenant)
        events = stream_events(request, store, request.app.state.event_hub, job_id, cursor or "0", settings.sse_ping_s)
        return SlotStream(events, release, media_type="text/event-stream",
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
    record = await owned(store, tenant, job_id)
    job = job_view(record)
    attempt = Attempt.model_validate_json(record.solution) if record.solution else None
    if attempt is None and job.first_success_attempt is not None:  # a record from before the solution field
        rows, _ = await store.attempts(job_id, after=job.first_success_attempt - 1, limit=1)
        attempt = Attempt.model_validate_json(rows[0]) if rows else None
    return Solution(job_id=job.id, status=job.status, solved=attempt is not None, attempt=attempt)


async def _finished_job(store: StoreDep, tenant: str, job_id: str) -> Job:
    job = job_view(await owned(store, tenant, job_id))
    if job.status not in WITH_CURVE:
        raise ApiError(409, f"job '{job_id}' is {job.status}: the curve exists once it has succeeded or exhausted "
                            "its budget", code="curve_not_ready")
    return job


@router.get("/{job_id}/curve", response_model=JobCurve, responses={**ERRORS, 409: {}})
async def job_curve(job_id: str, tenant: TenantDep, store: StoreDep) -> JobCurve:
    """discovery@k of the method and pass@k of best-of-k, with confidence bands."""
    job = await _finished_job(store, tenant, job_id)
    return JobCurve(job_id=job.id, status=job.status, baseline=job.baseline,
                    comparison=await asyncio.to_thread(job_comparison, job))


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
async def job_adapter(job_id: str, tenant: TenantDep, store: StoreDep, blobs: BlobsDep) -> Response:
    """The trained LoRA adapter: a tar.gz of a folder that peft's PeftModel.from_pretrained loads."""
    record = await owned(store, tenant, job_id)
    job = job_view(record)
    if not learns(job.method):
        raise ApiError(409, f"a {job.method} job trains no adapter", code="no_adapter")
    if job.status not in WITH_CURVE:
        raise ApiError(409, f"job '{job_id}' is {job.status}: the adapter is exported when it finishes",
                       code="adapter_not_ready")
    blob = await asyncio.to_thread(blobs.stream, job_id, ADAPTER) if blobs is not None and record.adapter else None
    if blob is None:
        raise ApiError(404, f"the adapter of job '{job_id}' is not stored (export failed or expired)",
                       code="adapter_not_found")
    return StreamingResponse(iterate_in_threadpool(blob.chunks), media_type="application/gzip", headers={
        "Content-Disposition": f'attachment; filename="{job_id}-adapter.tar.gz"', "Content-Length": str(blob.size)})
