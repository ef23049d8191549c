"""Request dependencies: the settings, the job store, the blob store, and the caller's tenant (authenticated and
rate-limited)."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.auth import tenant_for
from service.config import ApiSettings
from service.errors import ApiError
from workers.jobs import BatchRecord, JobRecord
from workers.logs import set_context
from workers.store import JobStore, StoreFull

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")
ID_PATTERN = re.compile(r"^[a-z]+_[0-9a-f]{22}$")


def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_blobs(request: Request) -> Any:
    """The checkpoint store (workers.checkpoint), where finished adapters are kept."""
    return request.app.state.blobs


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
BlobsDep = Annotated[Any, Depends(get_blobs)]


async def current_tenant(
    request: Request, settings: SettingsDep, store: StoreDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller's tenant; 401 without a valid key, 429 over the tenant's rate limit."""
    authorization = request.headers.get("authorization")
    tenant = tenant_for(request.app.state.api_keys, authorization, allow_anonymous=settings.allow_anonymous)
    if tenant is None:
        detail = "invalid API key" if authorization else "missing API key: send 'Authorization: Bearer <key>'"
        raise ApiError(401, detail, code="unauthorized", headers={"WWW-Authenticate": "Bearer"})
    request.state.tenant = tenant  # for the request's log line
    set_context(tenant=tenant)
    try:
        count = await store.count_request(tenant)
    except StoreFull:  # a full Redis refuses the counter's write; reads must go on answering
        count = 0
    if count > settings.rate_limit_per_minute:
        retry = str(60 - int(time.time()) % 60)
        raise ApiError(429, f"rate limit of {settings.rate_limit_per_minute} requests per minute exceeded; "
                            f"retry in {retry} s", code="rate_limited", headers={"Retry-After": retry})
    return tenant


TenantDep = Annotated[str, Depends(current_tenant)]


def idempotency_key(
    key: Annotated[str | None, Header(alias="Idempotency-Key", description="Retries with the same key and body "
                                      "return the same resource; a different body is a 422.")] = None,
) -> str | None:
    if key is None:
        return None
    key = key.strip().strip('"')
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ApiError(400, "Idempotency-Key must be 1-255 printable characters", code="invalid_idempotency_key")
    return key


IdempotencyDep = Annotated[str | None, Depends(idempotency_key)]


def _missing(kind: str, some_id: str) -> ApiError:
    return ApiError(404, f"no {kind} '{some_id[:80]}'", code=f"{kind}_not_found")


async def owned(store: JobStore, tenant: str, job_id: str) -> JobRecord:
    """The record of the tenant's job; another tenant's looks exactly like a missing one: 404."""
    record = await store.get(job_id) if ID_PATTERN.match(job_id) and job_id.startswith("job_") else None
    if record is None or record.tenant != tenant:
        raise _missing("job", job_id)
    return record


async def owned_batch(store: JobStore, tenant: str, batch_id: str) -> BatchRecord:
    """The record of the tenant's batch; another tenant's looks exactly like a missing one: 404."""
    record = await store.batch(batch_id) if ID_PATTERN.match(batch_id) and batch_id.startswith("batch_") else None
    if record is None or record.tenant != tenant:
        raise _missing("batch", batch_id)
    return record
