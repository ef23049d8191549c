"""Request dependencies: the settings, the job store, and the caller's tenant (authenticated and rate-limited)."""

from __future__ import annotations

import re
import time
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.auth import tenant_for
from service.config import Settings
from service.errors import ApiError
from workers.logs import set_context
from workers.store import JobStore

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")
ID_PATTERN = re.compile(r"^[a-z]+_[0-9a-f]{22}$")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]


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
    window = int(time.time() // 60)
    key = store.keys.rate(tenant, window)
    async with store.redis.pipeline(transaction=False) as pipe:
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = await pipe.execute()
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


async def owned(store: JobStore, tenant: str, job_id: str, kind: str = "job") -> dict[str, str]:
    """The record of the tenant's job (or batch); another tenant's looks exactly like a missing one: 404."""
    record = None
    if ID_PATTERN.match(job_id) and job_id.startswith(f"{kind}_"):
        record = await (store.get(job_id) if kind == "job" else store.batch(job_id))
    if record is None or record.get("tenant") != tenant:
        raise ApiError(404, f"no {kind} '{job_id[:80]}'", code=f"{kind}_not_found")
    return record
