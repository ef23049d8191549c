"""Job checkpoints on disk, and the finished adapter as an archive peft loads.

A job's checkpoint is one file holding the state of each of its runs (the method and its best-of-k baseline), so
the runs always resume from the same step. It is written to a temporary file and renamed: a worker killed while
writing leaves the previous checkpoint intact. The directory must be shared by the workers that may reclaim each
other's jobs.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
FILENAME = "runs.pt"


def job_dir(root: Path, job_id: str) -> Path:
    return root / job_id


def save(root: Path, job_id: str, states: dict[str, dict[str, Any]]) -> Path:
    """Write the runs' states atomically; returns the checkpoint file."""
    import torch

    directory = job_dir(root, job_id)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".runs-", suffix=".pt", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"runs": states}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / FILENAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return directory / FILENAME


def load(root: Path, job_id: str) -> dict[str, dict[str, Any]] | None:
    """The runs' states of the last checkpoint, or None if the job has none."""
    import torch

    path = job_dir(root, job_id) / FILENAME
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)["runs"]


def remove(root: Path, job_id: str) -> None:
    shutil.rmtree(job_dir(root, job_id), ignore_errors=True)


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
