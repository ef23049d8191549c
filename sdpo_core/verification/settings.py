"""The operator's settings of verification, typed and read once from SDPO_* variables (or a .env file).

    VerifierPoolSettings   the pool's processes, its time limits, and the sandbox (nested)
    SandboxSettings        how untrusted code is isolated (isolation.py), as whom (uids.py), where it is staged

A worker nests them in its WorkerSettings (so `sdpo worker` takes them as flags and docs/settings.md lists them);
`sdpo solve` and `sdpo verify` read them from the environment alone. A bad value is refused naming the variable and
the value (SettingsInvalid), never taken for the default.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sdpo_core.verification.uids import DEFAULT_UID_BASE, DEFAULT_UID_COUNT

Isolation = Literal["bwrap", "unshare", "rlimits"]
IsolationChoice = Literal["auto", "bwrap", "unshare", "rlimits"]


class SettingsInvalid(ValueError):
    """An SDPO_* variable (or the flag for it) holds a value its setting cannot take."""


def env_var(settings: type[BaseSettings], field: str) -> str:
    """The environment variable `field` of `settings` is read from."""
    alias = settings.model_fields[field].validation_alias
    if isinstance(alias, str):
        return alias
    return f"{settings.model_config.get('env_prefix', '')}{field}".upper()


def invalid_settings_message(exc: ValidationError, settings: type[BaseSettings]) -> str:
    """'<variable>: <what is wrong>, not <value>' for each bad field of `settings`."""
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        name = env_var(settings, field) if field in settings.model_fields else field or settings.__name__
        problems.append(f"{name}: {error['msg']}, not {error['input']!r}")
    return "; ".join(problems)


class _VerificationSettings(BaseSettings):
    """Refuses a bad value with SettingsInvalid naming the variable; an empty variable counts as unset."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsInvalid(invalid_settings_message(exc, type(self))) from None


class SandboxSettings(_VerificationSettings):
    """The sandbox of code-running verifiers; below `min_isolation` they refuse to run (docs/verifiers.md)."""

    # frozen: hashable, so the isolation probe runs once per settings (isolation.choose_isolation)
    model_config = SettingsConfigDict(env_prefix="SDPO_SANDBOX_", env_file=".env", extra="ignore", frozen=True,
                                      env_ignore_empty=True, populate_by_name=True)

    isolation: IsolationChoice = Field(default="auto", description="auto: the best that works here (bubblewrap, "
                                       "else unshare, else rlimits); or one of them, which must work.")
    min_isolation: Isolation = Field(default="bwrap", description="Below this, code-running verifiers refuse to run: "
                                     "unshare (as root) and rlimits (a machine with one user) accept less.")
    python: str = Field(default="", validate_default=True, description="The interpreter that runs sandboxed scripts "
                        "(default: the one running the service); the leased uids must be able to run it.")
    uid_base: int = Field(default=DEFAULT_UID_BASE, ge=1, description="First uid leased to sandboxed runs when the "
                          "service is root.")
    uid_count: int = Field(default=DEFAULT_UID_COUNT, ge=1, description="How many uids, so how many sandboxed runs "
                           "at once.")
    tmp_dir: str | None = Field(default=None, validation_alias="SDPO_SANDBOX_TMP", description="Where run "
                                "directories are staged (default: the system's temporary directory).")

    @field_validator("python")
    @classmethod
    def _this_interpreter(cls, python: str) -> str:
        return python or sys.executable


class VerifierPoolSettings(_VerificationSettings):
    """The verifier processes: every verifier type runs in one of them, under a hard time limit (pool.py)."""

    model_config = SettingsConfigDict(env_prefix="SDPO_", env_file=".env", extra="ignore", env_ignore_empty=True)

    verifier_workers: int = Field(default=0, ge=0, description="Verifier processes of each lane; a worker gives each "
                                  "job a lane of its own (0: one per core).")
    verify_attempt_timeout_s: float | None = Field(default=None, gt=0, description="Cap on one verification, in "
                                                   "seconds (default: from the verifier's own limits).")
    verify_step_budget_s: float = Field(default=600.0, gt=0, description="Seconds one job's step may spend "
                                        "verifying: attempts not verified by then are not_run, reward 0, and say so.")
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings, description="The sandbox of code-running "
                                     "verifiers.")
