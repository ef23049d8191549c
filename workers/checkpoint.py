"""Job checkpoints behind one small interface, and the finished adapter as an archive peft loads.

A job's checkpoint is one blob holding the state of each of its runs (the method and its best-of-k baseline), so
the runs always resume from the same step. A job's blobs sit under its id: the checkpoint of each lease generation
(`runs-g<N>.pt`; the job record names the current one, so a worker that lost its lease cannot replace it) and, once
it has finished, its adapter (`adapter.tar.gz`). Every worker that may reclaim another's jobs, and the API that
serves adapters, must reach the same store:

    DirectoryStore   a local or shared directory (NFS, CephFS, EFS...): <root>/<job_id>/<name>, written to a
                     temporary file and renamed, so a worker killed while writing leaves the previous one intact
    S3Store          object storage, s3://bucket/prefix -> <prefix>/<job_id>/<name> (AWS S3 or any S3-compatible
                     server such as MinIO); one PUT replaces an object whole, so a reader never sees half of one

`open_store("s3://bucket/prefix")` or `open_store("/data/checkpoints")` picks the store from a URL or a path.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

log = logging.getLogger(__name__)
FILENAME = "runs.pt"  # a checkpoint's name before lease generations named them
ADAPTER = "adapter.tar.gz"
States = dict[str, dict[str, Any]]  # run key (method / baseline) -> ProblemRun.state_dict()


class CheckpointStore(Protocol):
    """Where job checkpoints and adapters live: named blobs per job, each replaced whole or not at all."""

    url: str  # where it points, for logs (never holds credentials)

    def save(self, job_id: str, data: bytes, name: str = FILENAME) -> None: ...

    def load(self, job_id: str, name: str = FILENAME) -> bytes | None: ...

    def delete(self, job_id: str, keep: Sequence[str] = ()) -> None:
        """Delete the job's blobs except those named in `keep`."""

    def exists(self, job_id: str, name: str = FILENAME) -> bool: ...


class CheckpointConfigError(ValueError):
    """A checkpoint location that cannot be used; the message says why."""


# ---- serialisation ---------------------------------------------------------------------------------------------
def encode(states: States) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({"runs": states}, buffer)
    return buffer.getvalue()


def decode(data: bytes) -> States:
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)["runs"]


def save_states(store: CheckpointStore, job_id: str, states: States, name: str = FILENAME) -> None:
    """Write the runs' states as the job's checkpoint `name`."""
    store.save(job_id, encode(states), name)


def load_states(store: CheckpointStore, job_id: str, name: str = FILENAME) -> States | None:
    """The runs' states of the job's checkpoint `name`, or None if it has none."""
    data = store.load(job_id, name)
    return None if data is None else decode(data)


def checkpoint_name(generation: int) -> str:
    """The checkpoint blob of one lease generation."""
    return f"runs-g{generation}.pt"


# ---- a directory -----------------------------------------------------------------------------------------------
class DirectoryStore:
    """Checkpoints as files under a directory (local, or shared by every worker)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def path(self, job_id: str, name: str = FILENAME) -> Path:
        return self.root / _safe(job_id) / _safe(name)

    def save(self, job_id: str, data: bytes, name: str = FILENAME) -> None:
        target = self.path(job_id, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self, job_id: str, name: str = FILENAME) -> bytes | None:
        try:
            return self.path(job_id, name).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, job_id: str, keep: Sequence[str] = ()) -> None:
        directory = self.root / _safe(job_id)
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
            return
        for path in directory.glob("*") if directory.is_dir() else ():
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def exists(self, job_id: str, name: str = FILENAME) -> bool:
        return self.path(job_id, name).is_file()


# ---- object storage --------------------------------------------------------------------------------------------
class S3Store:
    """Checkpoints as objects under s3://bucket/prefix.

    Credentials and region come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile,
    an instance or pod role). `endpoint_url` (or SDPO_S3_ENDPOINT_URL, or boto3's own AWS_ENDPOINT_URL_S3) points
    it at an S3-compatible server; such servers get path-style addressing, which MinIO and others expect.
    """

    def __init__(self, url: str, *, endpoint_url: str | None = None, client: Any = None) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise CheckpointConfigError(f"'{url}': expected s3://bucket/prefix")
        self.url, self.bucket, self.prefix = url, parsed.netloc, parsed.path.strip("/")
        self.endpoint_url = endpoint_url or os.environ.get("SDPO_S3_ENDPOINT_URL") or None
        self.client = client or self._client()

    def _client(self) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise CheckpointConfigError("s3:// checkpoints need boto3: pip install 'sdpo-discovery[s3]'") from exc
        config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60,
                        s3={"addressing_style": "path"} if self.endpoint_url else None)
        return boto3.client("s3", endpoint_url=self.endpoint_url, config=config)

    def key(self, job_id: str, name: str = FILENAME) -> str:
        return "/".join(part for part in (self.prefix, _safe(job_id), _safe(name)) if part)

    def save(self, job_id: str, data: bytes, name: str = FILENAME) -> None:
        # upload_fileobj switches to a multipart upload for large checkpoints; the object appears when it completes
        self.client.upload_fileobj(io.BytesIO(data), self.bucket, self.key(job_id, name))

    def load(self, job_id: str, name: str = FILENAME) -> bytes | None:
        buffer = io.BytesIO()
        try:
            self.client.download_fileobj(self.bucket, self.key(job_id, name), buffer)
        except Exception as exc:
            if _not_found(exc):
                return None
            raise
        return buffer.getvalue()

    def delete(self, job_id: str, keep: Sequence[str] = ()) -> None:
        folder = self.key(job_id, "x")[:-1]  # <prefix>/<job_id>/
        listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=folder)
        for item in listing.get("Contents", []):
            if item["Key"][len(folder):] not in keep:
                self.client.delete_object(Bucket=self.bucket, Key=item["Key"])

    def exists(self, job_id: str, name: str = FILENAME) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(job_id, name))
        except Exception as exc:
            if _not_found(exc):
                return False
            raise
        return True


def _not_found(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def _safe(job_id: str) -> str:
    if not job_id or "/" in job_id or job_id in (".", ".."):
        raise ValueError(f"not a job id or blob name: {job_id!r}")
    return job_id


def open_store(location: str | Path, *, s3_endpoint_url: str | None = None) -> CheckpointStore:
    """The store for a path or URL: s3://bucket/prefix, file:///path, or a plain directory path."""
    text = str(location)
    scheme = urlparse(text).scheme
    if scheme == "s3":
        return S3Store(text, endpoint_url=s3_endpoint_url)
    if scheme == "file":
        return DirectoryStore(urlparse(text).path)
    if scheme and len(scheme) > 1:  # (a one-letter scheme is a Windows drive)
        raise CheckpointConfigError(f"'{text}': checkpoints go to a directory path, file:///path or s3://bucket/prefix")
    return DirectoryStore(text)


# ---- the finished adapter --------------------------------------------------------------------------------------
def adapter_archive(state: dict[str, Any], settings: Any, base_model: str) -> bytes:
    """The run's adapter as a tar.gz of a peft adapter folder (adapter_config.json + safetensors)."""
    from sdpo_core.adapter_io import save_peft_adapter

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_peft_adapter(state["adapter"], settings.sdpo, base_model, Path(tmp) / "adapter")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for path in sorted(folder.iterdir()):
                tar.add(path, arcname=f"adapter/{path.name}")
        return buffer.getvalue()
