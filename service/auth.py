"""API keys: each maps to a tenant; only their SHA-256 hashes are configured or held in memory."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from service.config import Settings

TENANT_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ANONYMOUS = "anonymous"


class KeyConfigError(ValueError):
    """The key configuration is malformed; the message says where."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _entry(tenant: str, digest: str, source: str) -> tuple[str, str]:
    tenant, digest = tenant.strip(), digest.strip().lower()
    if not TENANT_PATTERN.match(tenant):
        raise KeyConfigError(f"{source}: tenant '{tenant}' must be 1-64 of A-Z a-z 0-9 _ . -")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise KeyConfigError(f"{source}: tenant '{tenant}': expected a SHA-256 hex digest (sdpo hash-key KEY)")
    return digest, tenant


def load_keys(settings: Settings) -> dict[str, str]:
    """sha256(key) -> tenant, from SDPO_API_KEYS and SDPO_API_KEYS_FILE."""
    keys: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in settings.api_keys.split(","))):
        tenant, sep, digest = pair.partition("=")
        if not sep:
            raise KeyConfigError(f"SDPO_API_KEYS: '{pair[:20]}...' is not tenant=sha256")
        digest, tenant = _entry(tenant, digest, "SDPO_API_KEYS")
        keys[digest] = tenant
    if settings.api_keys_file:
        path = Path(settings.api_keys_file)
        try:
            entries = json.loads(path.read_text())["keys"]
            for item in entries:
                digest, tenant = _entry(item["tenant"], item["sha256"], str(path))
                keys[digest] = tenant
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, KeyConfigError):
                raise
            raise KeyConfigError(f'{path}: expected {{"keys": [{{"tenant": ..., "sha256": ...}}]}} ({exc})') from exc
    return keys


def tenant_for(keys: dict[str, str], authorization: str | None, *, allow_anonymous: bool) -> str | None:
    """The tenant of a `Bearer` key, 'anonymous' when allowed and no key is given, else None."""
    if not authorization:
        return ANONYMOUS if allow_anonymous else None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return keys.get(hash_key(token.strip()))
