"""The API's settings: the shared Redis/storage part (workers.settings.StoreSettings) plus what only the API decides.

Environment variables SDPO_<NAME> (or a .env file), overridden by the flags of `sdpo serve` derived from the same
fields; docs/settings.md lists them all.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from workers.settings import StoreSettings


class ApiSettings(StoreSettings):
    """API settings; `SDPO_API_KEYS=tenant=<sha256 hex>,...` or `SDPO_API_KEYS_FILE` configure the keys."""

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port to listen on.")
    api_keys: str = Field(default="", description="Comma-separated tenant=sha256(key) pairs.")
    api_keys_file: Path | None = Field(default=None, description='JSON: {"keys": [{"tenant", "sha256"}]}.')
    allow_anonymous: bool = Field(default=False, description="Requests without a key act as tenant 'anonymous'.")
    rate_limit_per_minute: int = Field(default=600, ge=1, description="Requests per tenant per minute.")
    max_active_jobs: int = Field(default=100, ge=1, description="Queued plus running jobs per tenant.")
    max_tenant_bytes: int = Field(default=256 << 20, ge=0, description="Bytes a tenant's kept jobs may hold in Redis "
                                  "(records, attempts, events); past it submissions are refused and running jobs "
                                  "stop storing attempts and progress events; 0 = no cap.")
    max_lora_rank: int = Field(default=64, ge=1, le=512, description="Largest settings.sdpo.lora_rank accepted.")
    max_body_bytes: int = Field(default=2_000_000, ge=1024, description="Largest request body.")
    idempotency_ttl_s: int = Field(default=86400, ge=60, description="How long an Idempotency-Key is remembered.")
    worker_stale_s: float = Field(default=60.0, gt=0, description="A worker unseen for longer is not counted.")
    sse_ping_s: float = Field(default=15.0, gt=0, description="Keep-alive interval of event streams.")
    max_streams_per_tenant: int = Field(default=20, ge=1, description="Event streams a tenant may hold open at once "
                                        "(per API process).")
    sweep_every_s: float = Field(default=60.0, gt=0, description="How often the API deletes jobs whose retention "
                                 "ended.")


Settings = ApiSettings  # the name the API code and its tests have always used
