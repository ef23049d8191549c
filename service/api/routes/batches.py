"""/v1/batches: many problems under shared options; counts by status and the batch's average discovery curve."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Query, Response

from service.api.routes.jobs import ERRORS, fingerprint, read_summaries, submission_error
from service.deps import IdempotencyDep, SettingsDep, StoreDep, TenantDep, owned
from service.errors import ApiError
from service.schemas import Batch, BatchCreate, BatchList
from service.views import batch_view, job_summary_view, summary_json
from workers.jobs import TERMINAL, new_id, now
from workers.store import JobStore, NewJob

router = APIRouter(prefix="/batches", tags=["batches"])


async def _view(store: JobStore, record: dict[str, str], retention_s: int) -> Batch:
    job_ids = await store.batch_job_ids(record["id"])
    records = await read_summaries(store, job_ids)  # never the problems: a batch has up to 1000
    jobs = [job_summary_view(r) for r in records if r is not None]
    if jobs and all(job.status in TERMINAL for job in jobs):  # finished: expire with its jobs
        await store.redis.expire(store.keys.batch(record["id"]), retention_s)
        await store.redis.expire(store.keys.batch_jobs(record["id"]), retention_s)
    return await asyncio.to_thread(batch_view, record, job_ids, jobs)


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
    specs = {new_id("job"): body.to_spec(problem) for problem in body.problems}
    jobs = [NewJob(job_id, spec.model_dump_json(), metadata) for job_id, spec in specs.items()]
    fields = {"id": batch_id, "tenant": tenant, "created_at": now(), "method": body.settings.method,
              "budget": body.settings.max_attempts, "metadata": metadata, "size": len(jobs)}
    outcome = await store.submit(
        tenant=tenant, jobs=jobs, result_id=batch_id, idempotency_key=idempotency, fingerprint=fingerprint(body),
        idempotency_ttl_s=settings.idempotency_ttl_s, max_active_jobs=settings.max_active_jobs, batch_id=batch_id,
        batch_fields=fields, enqueue=body.concurrency,
    )
    if outcome.outcome not in ("created", "existing"):
        raise submission_error(outcome.outcome, outcome.id, settings.max_active_jobs, len(jobs))
    if outcome.outcome == "existing":
        response.status_code = 200
    else:
        await store.set_summaries({job_id: summary_json(spec) for job_id, spec in specs.items()})
    return await _view(store, await owned(store, tenant, outcome.id, kind="batch"), settings.retention_s)


@router.get("", response_model=BatchList, responses=ERRORS)
async def list_batches(
    tenant: TenantDep, store: StoreDep, settings: SettingsDep,
    after: Annotated[str | None, Query(max_length=100)] = None, limit: Annotated[int, Query(ge=1, le=50)] = 10,
) -> BatchList:
    """The tenant's batches, newest first, in cursor pages."""
    index = store.keys.tenant_batches(tenant)
    ids, has_more = await store.page_ids(index, after=after, limit=limit)
    batches = []
    for batch_id in ids:
        record = await store.batch(batch_id)
        if record is None:
            await store.prune_index(index, [batch_id])
        else:
            batches.append(await _view(store, record, settings.retention_s))
    return BatchList(data=batches, has_more=has_more, last_id=ids[-1] if ids else None)


@router.get("/{batch_id}", response_model=Batch, responses=ERRORS)
async def get_batch(batch_id: str, tenant: TenantDep, store: StoreDep, settings: SettingsDep) -> Batch:
    """A batch: its job ids, counts by status and average discovery curve against best-of-k."""
    return await _view(store, await owned(store, tenant, batch_id, kind="batch"), settings.retention_s)


@router.post("/{batch_id}/cancel", response_model=Batch, responses=ERRORS)
async def cancel_batch(batch_id: str, tenant: TenantDep, store: StoreDep, settings: SettingsDep) -> Batch:
    """Cancel every unfinished job of the batch. Idempotent."""
    record = await owned(store, tenant, batch_id, kind="batch")
    await store.redis.hsetnx(store.keys.batch(batch_id), "cancel_requested_at", now())
    for job_id in await store.batch_job_ids(batch_id):
        await store.cancel(job_id)
    return await _view(store, await owned(store, tenant, record["id"], kind="batch"), settings.retention_s)
