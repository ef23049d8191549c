"""Shared fixtures: the tiny random model (fast unit tests), the real SmolLM2 (integration tests), and a real
redis-server on a free loopback port (service tests), the sandbox and verifier pool (subprocesses, no mocks)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import make_tiny_model_dir  # noqa: E402

from sdpo_core.verification.pool import VerifierPool  # noqa: E402
from sdpo_core.verification.subprocess_sandbox import SubprocessSandbox  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-llama")


# The engine contract suite also runs on a GPU machine with SDPO_TEST_DEVICE=cuda (benchmarks/gpu_suite.sh).
TEST_DEVICE = os.environ.get("SDPO_TEST_DEVICE", "cpu")


@pytest.fixture
def tiny_policy(tiny_model_dir):
    """A fresh LoraPolicy on the tiny model (adapters are per test)."""
    from sdpo_core.models import load_model_and_tokenizer
    from sdpo_core.policy import LoraPolicy

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), device=TEST_DEVICE, dtype="float32")
    return LoraPolicy(model, tokenizer)


def solve_alone(problem, settings, policy, engine, *, name: str = "run", **options):
    """One run to its end through the scheduler every caller drives (DiscoveryRuns.run_until_done); its adapter is
    freed in the policy and the engine. Returns its RunResult."""
    from sdpo_core.loop import ProblemRun
    from sdpo_core.runs import DiscoveryRuns

    runs = DiscoveryRuns(engine)
    run = ProblemRun(problem, settings, policy, name=name, **options)
    runs.add(name, run)
    try:
        runs.run_until_done()
        return run.result()
    finally:
        runs.close(name)


# ---- engines: a tiny model both engines run (vLLM's CPU attention needs a head size of 32 or more), real vLLM -------
HAS_VLLM = importlib.util.find_spec("vllm") is not None  # true in .venv-vllm (scripts/setup.sh), see test_vllm_environment


def contract_policy(model_dir: Path):
    """A fresh float32 LoraPolicy on `model_dir`."""
    from sdpo_core.models import load_model_and_tokenizer
    from sdpo_core.policy import LoraPolicy

    model, tokenizer = load_model_and_tokenizer(str(model_dir), device=TEST_DEVICE, dtype="float32")
    return LoraPolicy(model, tokenizer)


@pytest.fixture(scope="session")
def contract_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-llama-128", hidden_size=128)


@pytest.fixture(scope="session")
def vllm_engine(contract_model_dir):
    """One real vLLM for the session, on its own policy; its users drop the adapters they publish."""
    from sdpo_core.vllm_engine import VLLMEngine

    engine = VLLMEngine(contract_policy(contract_model_dir), str(contract_model_dir), max_model_len=512)
    yield engine
    engine.close()


ENGINES = ["transformers"] + (["vllm"] if HAS_VLLM else [])


@pytest.fixture(params=ENGINES)
def engine_and_policy(request, contract_model_dir):
    """Each engine on a float32 policy of the contract model: a fresh transformers engine, or the session's vLLM
    (the adapters a test made are dropped from it and from its policy afterwards)."""
    from sdpo_core.hf_engine import TransformersEngine

    if request.param == "transformers":
        policy = contract_policy(contract_model_dir)
        yield TransformersEngine(policy), policy
        return
    engine = request.getfixturevalue("vllm_engine")
    yield engine, engine.policy
    for name in list(engine.policy.adapters):
        engine.drop_adapter(name)
        engine.policy.delete_adapter(name)


@pytest.fixture(scope="session")
def smollm2_policy():
    """The real offline default model, loaded once per session (converted from the GGUF on first use)."""
    from sdpo_core.models import load_model_and_tokenizer
    from sdpo_core.policy import LoraPolicy

    model, tokenizer = load_model_and_tokenizer(None, device="cpu")
    return LoraPolicy(model, tokenizer)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """redis://127.0.0.1:N/0 of a redis-server started for this test session (no persistence)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed: run ./scripts/setup.sh"
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while not _redis_answers(port):
        assert process.poll() is None, "redis-server exited at start"
        assert time.monotonic() < deadline, "redis-server did not answer within 20 s"
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def sandbox() -> SubprocessSandbox:
    return SubprocessSandbox()


@pytest.fixture(scope="session")
def pool():
    with VerifierPool(max_workers=2) as verifier_pool:
        yield verifier_pool


# ---- object storage: an S3-compatible server on loopback (moto), for the s3:// checkpoint store ----------------------
S3_ENV = {"AWS_ACCESS_KEY_ID": "sdpo-test", "AWS_SECRET_ACCESS_KEY": "sdpo-test-secret",
          "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint():
    """http://127.0.0.1:N of a moto S3 server running in this process (its objects live in memory)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch, request):
    """A fresh bucket on the test S3 server, and the credentials in the environment (inherited by subprocesses)."""
    import re

    import boto3

    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SDPO_S3_ENDPOINT_URL", s3_endpoint)
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + f"-{os.getpid()}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])
    client.create_bucket(Bucket=name)
    return name, client


# ---- tiers: `make test-fast` runs the unit tier (pytest -m unit), `make test` everything -----------------------------
# A test's tier follows from the fixtures it uses (and a module may mark itself): no marker is written by hand twice.
TIER_FIXTURES = {
    "redis": {"redis_url"},
    "model": {"tiny_model_dir", "tiny_policy", "contract_model_dir", "engine_and_policy", "vllm_engine",
              "smollm2_policy"},
    "sandbox": {"sandbox", "pool", "s3_endpoint"},
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        tiers = {tier for tier, names in TIER_FIXTURES.items() if names & set(item.fixturenames)}
        tiers |= {tier for tier in TIER_FIXTURES if item.get_closest_marker(tier)}
        for tier in tiers:
            item.add_marker(getattr(pytest.mark, tier))
        if not tiers and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.unit)
