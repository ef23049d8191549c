"""The checkpoint stores' shared contract, run against a directory and against an S3 server (moto on loopback)."""

from __future__ import annotations

import pytest
import torch

from workers.checkpoint import (
    CheckpointConfigError,
    DirectoryStore,
    S3Store,
    load_states,
    open_store,
    save_states,
)


@pytest.fixture(params=["directory", "s3"])
def store(request, tmp_path):
    if request.param == "directory":
        return DirectoryStore(tmp_path / "ckpt")
    bucket, _ = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/team/checkpoints")  # endpoint from SDPO_S3_ENDPOINT_URL (the fixture sets it)


def test_save_load_replace_delete(store):
    assert store.load("job_a") is None and not store.exists("job_a")
    store.save("job_a", b"first")
    store.save("job_b", b"other")
    assert store.exists("job_a") and store.load("job_a") == b"first"
    store.save("job_a", b"second" * 1000)
    assert store.load("job_a") == b"second" * 1000  # replaced whole
    store.delete("job_a")
    assert store.load("job_a") is None and not store.exists("job_a")
    assert store.load("job_b") == b"other"  # other jobs untouched
    store.delete("job_a")  # deleting what is gone is fine


def test_states_round_trip_with_tensors(store):
    states = {"method": {"adapter": {"w": torch.arange(6.0).reshape(2, 3)}, "step": 3, "attempts": [{"i": 1}]}}
    save_states(store, "job_t", states)
    loaded = load_states(store, "job_t")
    assert torch.equal(loaded["method"]["adapter"]["w"], states["method"]["adapter"]["w"])
    assert loaded["method"]["step"] == 3 and loaded["method"]["attempts"] == [{"i": 1}]
    assert load_states(store, "job_none") is None


def test_job_ids_cannot_escape_the_store(store):
    for bad in ("../x", "a/b", "", ".."):
        with pytest.raises(ValueError, match="not a job id"):
            store.save(bad, b"x")


def test_directory_layout_is_unchanged_and_writes_leave_no_temporary_files(tmp_path):
    store = DirectoryStore(tmp_path)
    store.save("job_1", b"data")
    assert [p.name for p in (tmp_path / "job_1").iterdir()] == ["runs.pt"]  # older workers' layout


def test_s3_objects_are_named_prefix_job_runs(s3_bucket):
    bucket, client = s3_bucket
    store = open_store(f"s3://{bucket}/a/b/")
    assert isinstance(store, S3Store)
    store.save("job_1", b"data")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["a/b/job_1/runs.pt"]
    assert open_store(f"s3://{bucket}").key("job_1") == "job_1/runs.pt"  # no prefix


def test_open_store_reads_paths_and_urls(tmp_path):
    assert isinstance(open_store(tmp_path), DirectoryStore)
    assert open_store(f"file://{tmp_path}/c").root == tmp_path / "c"
    assert open_store("relative/dir").root.as_posix() == "relative/dir"
    with pytest.raises(CheckpointConfigError, match="s3://bucket/prefix"):
        open_store("gs://bucket/x")
    with pytest.raises(CheckpointConfigError, match="expected s3://bucket/prefix"):
        open_store("s3:///no-bucket")


def test_an_unreachable_s3_server_is_an_error_not_a_missing_checkpoint():
    import boto3
    from botocore.config import Config
    from botocore.exceptions import EndpointConnectionError
    from conftest import S3_ENV, free_port

    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{free_port()}", region_name="us-east-1",
                          aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
                          config=Config(retries={"max_attempts": 1}, connect_timeout=2))
    store = S3Store("s3://bucket/p", client=client)
    with pytest.raises(EndpointConnectionError):
        store.load("job_1")  # a worker must not take "unreachable" for "no checkpoint" and restart the job
    with pytest.raises(EndpointConnectionError):
        store.exists("job_1")
