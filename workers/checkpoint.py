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
A checkpoint is JSON and safetensors under an HMAC (see "serialisation"); the .pt in its names is older than that
format. Adapters are read back in pieces (`stream`), so the API never holds a whole archive in memory.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import json
import logging
import os
import secrets
import shutil
import struct
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from workers.jobs import JobFailure

log = logging.getLogger(__name__)
FILENAME = "runs.pt"  # a checkpoint's name before lease generations named them
ADAPTER = "adapter.tar.gz"
CHUNK_BYTES = 1 << 20  # a streamed blob's pieces
States = dict[str, dict[str, Any]]  # run key (method / baseline) -> ProblemRun.state_dict()


@dataclass
class BlobStream:
    """One stored version of a blob, read in pieces: its size, then its bytes."""

    size: int
    chunks: Iterator[bytes]


class CheckpointStore(Protocol):
    """Where job checkpoints and adapters live: named blobs per job, each replaced whole or not at all."""

    url: str  # where it points, for logs (never holds credentials)

    def save(self, job_id: str, data: bytes, name: str = FILENAME) -> None: ...

    def load(self, job_id: str, name: str = FILENAME) -> bytes | None: ...

    def delete(self, job_id: str, keep: Sequence[str] = ()) -> None:
        """Delete the job's blobs except those named in `keep`."""

    def exists(self, job_id: str, name: str = FILENAME) -> bool: ...

    def stream(self, job_id: str, name: str, chunk_bytes: int = CHUNK_BYTES) -> BlobStream | None:
        """The blob in pieces of at most `chunk_bytes`, or None if there is none."""


class CheckpointConfigError(ValueError):
    """A checkpoint location that cannot be used; the message says why."""


# ---- serialisation ---------------------------------------------------------------------------------------------
# A checkpoint is data, never code: JSON for the structure, safetensors for the tensors, under an HMAC-SHA256 with
# the workers' shared key that also binds the job id. Nothing is unpickled, and bytes whose tag does not verify are
# not parsed at all, so a writer of the store without the key (sandboxed code, a shared volume, leaked storage
# credentials) can neither run code in a worker nor substitute another job's or a forged state. The signed JSON
# names the blob it was written as (its lease generation), so an older checkpoint of the same job copied over the
# current one is refused too; the job record's checkpoint_step refuses an older step of the same generation.
#
#     MAGIC | tag (32 bytes) | JSON length (8 bytes, big-endian) | JSON {"name", "runs"} | safetensors
MAGIC = b"SDPO-CKPT-2\n"
KEY_ENV, KEY_FILE_ENV = "SDPO_CHECKPOINT_KEY", "SDPO_CHECKPOINT_KEY_FILE"
_TAG_BYTES = 32


class CheckpointRejected(JobFailure):
    """A checkpoint that is not this job's, was changed, or is not in this format: the job fails, nothing is run."""

    def __init__(self, message: str) -> None:
        super().__init__("checkpoint_rejected", message)


@functools.cache
def signing_key() -> bytes:
    """The HMAC key: SDPO_CHECKPOINT_KEY_FILE or SDPO_CHECKPOINT_KEY, the same on every worker of a deployment.

    Without one, a random key for this process: its own checkpoints verify, but no other worker can resume them
    (a takeover then fails the job with a message naming the setting)."""
    path, value = os.environ.get(KEY_FILE_ENV), os.environ.get(KEY_ENV)
    if path:
        key = Path(path).read_bytes().strip()
    elif value:
        key = value.encode()
    else:
        log.warning("%s is not set: checkpoints are signed with a key of this process only, so no other worker "
                    "can resume its jobs; set the same secret on every worker", KEY_ENV)
        return secrets.token_bytes(32)
    if len(key) < 16:
        raise CheckpointConfigError(f"{KEY_ENV} must be at least 16 characters (a random secret shared by the workers)")
    return key


def _tag(key: bytes, job_id: str, body: bytes) -> bytes:
    return hmac.new(key, job_id.encode() + b"\0" + body, hashlib.sha256).digest()


def encode(states: States, *, job_id: str, key: bytes, name: str = FILENAME) -> bytes:
    """The checkpoint blob `name` of the job, signed."""
    from safetensors.torch import save

    tensors: dict[str, Any] = {}
    header = json.dumps({"name": name, "runs": _to_json(states, tensors)}).encode()
    body = struct.pack(">Q", len(header)) + header + (save(tensors) if tensors else b"")
    return MAGIC + _tag(key, job_id, body) + body


def decode(data: bytes, *, job_id: str, key: bytes, name: str = FILENAME) -> States:
    """The runs' states of the job's checkpoint blob `name`; CheckpointRejected unless it was signed for this job
    and written as that blob."""
    from safetensors.torch import load

    if not data.startswith(MAGIC):
        raise CheckpointRejected("the job's checkpoint is not in this service's checkpoint format (written by an older "
                                 "version, or not a checkpoint); it was not loaded")
    tag, body = data[len(MAGIC): len(MAGIC) + _TAG_BYTES], data[len(MAGIC) + _TAG_BYTES:]
    if not hmac.compare_digest(tag, _tag(key, job_id, body)):
        raise CheckpointRejected(f"the job's checkpoint does not carry this job's signature: it was changed, belongs "
                                 f"to another job, or the workers do not share one {KEY_ENV}; it was not loaded")
    (length,) = struct.unpack(">Q", body[:8])
    header, weights = json.loads(body[8: 8 + length]), body[8 + length:]
    written_as = header.get("name")
    if written_as != name:
        origin = f"was written as {written_as}" if written_as else "names no blob (an older version wrote it)"
        raise CheckpointRejected(f"the job's checkpoint {name} {origin}: an older checkpoint of the job was put in "
                                 "its place; it was not loaded")
    return _from_json(header, load(weights) if weights else {})["runs"]


def _to_json(value: Any, tensors: dict[str, Any]) -> Any:
    """`value` as JSON, its tensors moved into `tensors` (named by their order) and referenced as {"$tensor": name}."""
    import torch

    if isinstance(value, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = value.detach().to("cpu").contiguous()
        return {"$tensor": name}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _to_json(v, tensors) for k, v in value.items()}
        return {"$items": [[_to_json(k, tensors), _to_json(v, tensors)] for k, v in value.items()]}  # e.g. int keys
    if isinstance(value, tuple):
        return {"$tuple": [_to_json(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_to_json(v, tensors) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"a checkpoint holds plain data and tensors, not {type(value).__name__}")


def _from_json(value: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [_from_json(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "$tensor" in value:
        return tensors[value["$tensor"]]
    if "$items" in value:
        return {_from_json(k, tensors): _from_json(v, tensors) for k, v in value["$items"]}
    if "$tuple" in value:
        return tuple(_from_json(v, tensors) for v in value["$tuple"])
    return {k: _from_json(v, tensors) for k, v in value.items()}


def save_states(store: CheckpointStore, job_id: str, states: States, name: str = FILENAME) -> None:
    """Write the runs' states, signed for this job, as the job's checkpoint `name`."""
    store.save(job_id, encode(states, job_id=job_id, key=signing_key(), name=name), name)


def load_states(store: CheckpointStore, job_id: str, name: str = FILENAME) -> States | None:
    """The runs' states of the job's checkpoint `name`, or None if it has none; CheckpointRejected if not trusted."""
    data = store.load(job_id, name)
    return None if data is None else decode(data, job_id=job_id, key=signing_key(), name=name)


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

    def stream(self, job_id: str, name: str, chunk_bytes: int = CHUNK_BYTES) -> BlobStream | None:
        try:
            handle = self.path(job_id, name).open("rb")  # this version, even if a writer replaces the file meanwhile
        except FileNotFoundError:
            return None
        return BlobStream(os.fstat(handle.fileno()).st_size, _pieces(handle, chunk_bytes))


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

    def stream(self, job_id: str, name: str, chunk_bytes: int = CHUNK_BYTES) -> BlobStream | None:
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self.key(job_id, name))
        except Exception as exc:
            if _not_found(exc):
                return None
            raise
        return BlobStream(int(reply["ContentLength"]), _pieces(reply["Body"], chunk_bytes))


def _pieces(body: Any, chunk_bytes: int) -> Iterator[bytes]:
    """Read a file-like body to its end in pieces, closing it however the reader stops."""
    try:
        while piece := body.read(chunk_bytes):
            yield piece
    finally:
        body.close()


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
