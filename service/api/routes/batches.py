"""/v1/batches: many problems under shared options; counts by status and the batch's average discovery curve."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Query, Response

from sdpo_core.statuses import FINISHED
from service.api.routes.jobs import ERRORS, read_summaries
from service.deps import IdempotencyDep, SettingsDep, StoreDep, TenantDep, owned_batch
from service.errors import ApiError
from service.schemas import Batch, BatchCreate, BatchList
from service.submission import fingerprint, job_spec, new_job, submission_error
from service.views import BatchOutcome, batch_counts, batch_outcome, batch_view
from workers.jobs import BatchRecord, new_id, now
from workers.store import JobStore, TenantIndex

router = APIRouter(prefix="/batches", tags=["batches"])


async def _view(store: JobStore, record: BatchRecord) -> Batch:
    """A finished batch is read from its record (counts and curve, stored once when the view first finds every job
    finished); an unfinished one from its jobs' heads, without a curve (it exists once every problem has ended: an
    average over the early finishers would favour the problems solved fast)."""
    job_ids = await store.batch_job_ids(record.id)
    if record.outcome:
        outcome = BatchOutcome.model_validate_json(record.outcome)
        return batch_view(record, job_ids, outcome.counts, outcome.curve, finished=True)
    summaries = await read_summaries(store, job_ids)  # never the problems: a batch has up to 1000
    jobs = [job for job in summaries if job is not None]
    finished = all(job.status in FINISHED for job in jobs)
    if not jobs or not finished:
        return batch_view(record, job_ids, batch_counts(jobs), None, finished=finished)
    outcome = await asyncio.to_thread(batch_outcome, record, jobs)
    await store.finish_batch(record.id, outcome.model_dump_json())  # and it expires with its jobs
    return batch_view(record, job_ids, outcome.counts, outcome.curve, finished=True)


@router.post("", status_code=201, response_model=Batch, responses={**ERRORS, 413: {}, 422: {}, 429: {}})
async def create_batch(body: BatchCreate, response: Response, tenant: TenantDep, store: StoreDep,
                       settings: SettingsDep, idempotency: IdempotencyDep) -> Batch:
    """Submit many problems; each becomes a job with the batch's options."""
    if len(body.problems) > settings.max_active_jobs:  # a 429 would invite retries that can never succeed
        detail = (f"the batch has {len(body.problems)} problems, more than the {settings.max_active_jobs} queued or "
                  f"running jobs a tenant may have: it can never be accepted; split it into batches of at most "
                  f"{settings.max_active_jobs}")
        raise ApiError(422, detail, code="batch_exceeds_active_job_cap",
                       errors=[{"field": "problems", "message": detail}])
    batch_id = new_id("batch")
    metadata = json.dumps(body.metadata)
    jobs = [new_job(job_spec(body, problem, settings), metadata) for problem in body.problems]
    batch = BatchRecord(id=batch_id, tenant=tenant, created_at=now(), method=body.settings.method,
                        budget=body.settings.max_attempts, metadata=metadata, size=len(jobs))
    outcome = await store.submit(
        tenant=tenant, jobs=jobs, result_id=batch_id, idempotency_key=idempotency, fingerprint=fingerprint(body),
        idempotency_ttl_s=settings.idempotency_ttl_s, max_active_jobs=settings.max_active_jobs,
        max_tenant_bytes=settings.max_tenant_bytes, batch=batch, enqueue=body.concurrency,
    )
    if outcome.outcome not in ("created", "existing"):
        raise submission_error(outcome.outcome, outcome.id, settings, len(jobs))
    if outcome.outcome == "existing":
        response.status_code = 200
    return await _view(store, await owned_batch(store, tenant, outcome.id))


@router.get("", response_model=BatchList, responses=ERRORS)
async def list_batches(
    tenant: TenantDep, store: StoreDep,
    after: Annotated[str | None, Query(max_length=100)] = None, limit: Annotated[int, Query(ge=1, le=50)] = 10,
) -> BatchList:
    """The tenant's batches, newest first, in cursor pages."""
    index = TenantIndex(tenant, batches=True)
    ids, has_more = await store.page_ids(index, after=after, limit=limit)
    batches = []
    for batch_id in ids:
        record = await store.batch(batch_id)
        if record is None:
            await store.prune_index(index, [batch_id])
        else:
            batches.append(await _view(store, record))
    return BatchList(data=batches, has_more=has_more, last_id=ids[-1] if ids else None)


@router.get("/{batch_id}", response_model=Batch, responses=ERRORS)
async def get_batch(batch_id: str, tenant: TenantDep, store: StoreDep) -> Batch:
    """A batch: its job ids, counts by status and average discovery curve against best-of-k."""
    return await _view(store, await owned_batch(store, tenant, batch_id))


@router.post("/{batch_id}/cancel", response_model=Batch, responses=ERRORS)
async def cancel_batch(batch_id: str, tenant: TenantDep, store: StoreDep) -> Batch:
    """Cancel every unfinished job of the batch. Idempotent."""
    record = await owned_batch(store, tenant, batch_id)
    await store.request_batch_cancel(batch_id)
    for job in await store.get_heads(await store.batch_job_ids(batch_id)):
        if job is not None:
            await store.cancel(job)
    return await _view(store, await owned_batch(store, tenant, record.id))
