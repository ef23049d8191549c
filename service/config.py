"""The server's settings: environment variables SDPO_* (or a .env file), with defaults that work locally."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """API settings; `SDPO_API_KEYS=tenant=<sha256 hex>,...` or `SDPO_API_KEYS_FILE` configure the keys."""

    model_config = SettingsConfigDict(env_prefix="SDPO_", env_file=".env", extra="ignore")

    redis_url: str = "redis://localhost:6379/0"
    redis_prefix: str = "sdpo"
    api_keys: str = Field(default="", description="Comma-separated tenant=sha256(key) pairs.")
    api_keys_file: Path | None = Field(default=None, description='JSON: {"keys": [{"tenant", "sha256"}]}.')
    allow_anonymous: bool = Field(default=False, description="Requests without a key act as tenant 'anonymous'.")
    rate_limit_per_minute: int = Field(default=600, ge=1, description="Requests per tenant per minute.")
    max_active_jobs: int = Field(default=100, ge=1, description="Queued plus running jobs per tenant.")
    max_body_bytes: int = Field(default=2_000_000, ge=1024, description="Largest request body.")
    retention_s: int = Field(default=7 * 86400, ge=60, description="How long finished jobs are kept.")
    idempotency_ttl_s: int = Field(default=86400, ge=60, description="How long an Idempotency-Key is remembered.")
    events_maxlen: int = Field(default=10_000, ge=100, description="Events kept per job (oldest trimmed).")
    worker_stale_s: float = Field(default=60.0, gt=0, description="A worker unseen for longer is not counted.")
    sse_ping_s: float = Field(default=15.0, gt=0, description="Keep-alive interval of event streams.")
