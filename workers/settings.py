"""The settings of the service's processes, typed, each read once: environment variables SDPO_<NAME> (or a .env
file), overridden by command-line flags that are derived from the same fields.

    StoreSettings    the part every process shares: Redis, the key prefix, the blob store, retention, storage caps
    WorkerSettings   `sdpo worker`: StoreSettings + the model, the job slots, leases, tries, and the verifier pool
                     with its sandbox (nested: sdpo_core/verification/settings.py, also read by `sdpo solve`)
    (ApiSettings     `sdpo serve`: StoreSettings + keys, limits, streams; in service/config.py)

Each field is documented once, in its description; `--help`, docs/settings.md (service/settings_doc.py) and the
flags all come from it. A flag left out keeps the environment's value, else the default.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from sdpo_core.serving import EngineSettings, adapter_slots
from sdpo_core.verification.settings import VerifierPoolSettings, env_var

LogFormat = Literal["json", "text"]
LogLevel = Literal["debug", "info", "warning", "error"]


class StoreSettings(BaseSettings):
    """Redis, the blob store and what they keep: the same values for the API and every worker."""

    model_config = SettingsConfigDict(env_prefix="SDPO_", env_file=".env", extra="ignore")

    redis_url: str = Field(default="redis://localhost:6379/0", description="The Redis holding queue and jobs.")
    redis_prefix: str = Field(default="sdpo", description="Prefix of every key; '{sdpo}' on a Redis Cluster.",
                              json_schema_extra={"flags": ["--prefix"]})
    redis_max_connections: int = Field(default=64, ge=2, description="Connections in this process's Redis pool.")
    checkpoint_dir: Path = Field(default=Path("checkpoints"), description="Checkpoints and finished adapters: a "
                                 "directory every worker (and, to serve adapters, the API) reaches.")
    checkpoint_url: str | None = Field(default=None, description="s3://bucket/prefix (or a path) instead of "
                                       "checkpoint_dir.")
    s3_endpoint_url: str | None = Field(default=None, description="An S3-compatible server for s3:// checkpoints, "
                                        "e.g. http://minio:9000 (default: AWS).")
    retention_s: int = Field(default=7 * 86400, ge=60, description="How long finished jobs (records, attempts, "
                             "events, adapters) are kept.")
    events_maxlen: int = Field(default=10_000, ge=100, description="Events kept per job (oldest trimmed).")
    max_attempt_bytes: int = Field(default=8 << 20, ge=4096, description="Bytes of attempts stored per job; later "
                                   "attempts are counted, not stored (the first solution always is).")
    max_step_tokens: int = Field(default=65_536, ge=256, description="Largest attempts_per_step x max_new_tokens of a "
                                 "job: refused at submission, and by a worker at admission (with the model's "
                                 "context), so that no job's step can take a worker's memory.")
    max_baseline_attempts: int = Field(default=2048, ge=1, description="Most best-of-k samples a job's baseline may "
                                       "draw (the default, twice the budget, is capped here).")
    log_format: LogFormat = Field(default="text", description="json: one object per line with job_id, tenant, "
                                  "worker.")
    log_level: LogLevel = Field(default="info", description="The lowest level logged.")

    @property
    def checkpoint_location(self) -> str:
        """Where checkpoints and adapters go: the URL if given, else the directory."""
        return self.checkpoint_url or str(self.checkpoint_dir)


class WorkerSettings(StoreSettings):
    """A worker process: one base model, several interleaved jobs."""

    model: str | None = Field(default=None, description="HF id or local folder of the base model (default: the "
                              "offline smollm2-135m-instruct).")
    max_jobs: int = Field(default=4, ge=1, description="Jobs run at once; their attempts share generation batches.")
    max_batch_size: int = Field(default=32, ge=1, description="Generation slots of the engine.")
    engine: Literal["transformers", "vllm"] | None = Field(default=None, description="Generation engine (default: "
                                                           "sdpo_core.engine_choice.default_engine(), transformers); the "
                                                           "update always runs on transformers + peft.")
    dtype: Literal["auto", "bfloat16", "float32"] | None = Field(default=None, description="Base weights' dtype "
                                                                  "(default auto: bfloat16 on a GPU and on CPUs with "
                                                                  "bfloat16 instructions, else float32).")
    lease_ms: int = Field(default=30_000, ge=1000, description="A job whose worker has not renewed its lease for "
                          "this long is reclaimed by another.")
    max_tries: int = Field(default=3, ge=1, description="Starts a job gets (crashes and errors included) before it "
                           "ends failed.")
    poll_ms: int = Field(default=1000, ge=1, description="How long an idle worker blocks waiting for a job.")
    max_step_seconds: float = Field(default=900.0, gt=0, le=86_400, description="Wall clock of one step's generation: "
                                    "a job whose step runs past it fails (step_timeout) and its rows leave the batch.")
    shutdown_grace_s: float = Field(default=20.0, ge=0, le=3600, description="After SIGTERM, how long the step in "
                                    "progress may go on before its generation is stopped and every job is handed "
                                    "back (resumed elsewhere from its checkpoint).")
    fair_share: bool = Field(default=True, description="While another tenant's job waits, no tenant holds more than "
                             "its share (max_jobs / tenants) of the slots: its longest-running job over the share is "
                             "handed back (resumed later from its checkpoint).")
    worker_id: str | None = Field(default=None, description="This worker's name (default: host-pid-random).")
    verifier_pool: VerifierPoolSettings = Field(default_factory=VerifierPoolSettings, description="The verifier "
                                                "processes and the sandbox of code-running verifiers.")

    @property
    def engine_settings(self) -> EngineSettings:
        """What the worker serves: its model and engine, with one vLLM adapter slot per job slot."""
        return EngineSettings(model=self.model, engine=self.engine, dtype=self.dtype,
                              max_batch_size=self.max_batch_size, max_adapters=adapter_slots(self.max_jobs))


# ---- flags derived from the fields -------------------------------------------------------------------------------
def nested_settings(info: FieldInfo) -> type[BaseSettings] | None:
    """The settings class of a field that nests one (WorkerSettings.verifier_pool), else None."""
    kind = info.annotation
    return kind if isinstance(kind, type) and issubclass(kind, BaseSettings) else None


def flag(settings: type[BaseSettings], name: str) -> str:
    """The flag of a field: its environment variable without SDPO_ (--redis-url, --sandbox-isolation)."""
    return "--" + env_var(settings, name).removeprefix("SDPO_").lower().replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, settings: type[BaseSettings], *, skip: tuple[str, ...] = (),
              _dest: str = "") -> None:
    """One flag per field, nested settings' fields included, its help from the field's description."""
    for name, info in settings.model_fields.items():
        if name in skip:
            continue
        nested = nested_settings(info)
        if nested is not None:
            add_flags(parser, nested, _dest=f"{_dest}{name}.")
            continue
        flags = [flag(settings, name), *((info.json_schema_extra or {}).get("flags", []))]
        kind, choices = _flag_type(info.annotation)
        default = info.default_factory() if info.default_factory else info.default
        help_text = f"{info.description} [{env_var(settings, name)}; default {default}]".replace("%", "%%")
        if kind is bool:
            parser.add_argument(*flags, dest=_dest + name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parser.add_argument(*flags, dest=_dest + name, type=kind, choices=choices, default=None, help=help_text,
                                metavar=None if choices else name.upper())


def from_flags(settings: type[BaseSettings], args: argparse.Namespace, **overrides: Any) -> Any:
    """The settings from the environment, with the flags the user gave on top."""
    return settings(**_given(settings, args, ""), **overrides)


def _given(settings: type[BaseSettings], args: argparse.Namespace, dest: str) -> dict[str, Any]:
    given: dict[str, Any] = {}
    for name, info in settings.model_fields.items():
        nested = nested_settings(info)
        if nested is not None:
            inner = _given(nested, args, f"{dest}{name}.")
            if inner:  # the nested settings from the environment, these flags on top
                given[name] = nested(**inner)
        elif getattr(args, dest + name, None) is not None:
            given[name] = getattr(args, dest + name)
    return given


def _flag_type(annotation: Any) -> tuple[type, list[str] | None]:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is Literal:
        return str, list(typing.get_args(annotation))
    if annotation in (int, float, bool, Path):
        return annotation, None
    return str, None
