"""deploy/compose.yaml against the Compose Specification's JSON schema (offline: the copy that the PyPI package
check-jsonschema vendors, Apache-2.0 like the spec), then what the schema cannot say: Redis persistence and
health, start order, the shared checkpoint volume, the GPU profile, and keys kept out of the file."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy/compose.yaml"
WORKERS = ("worker", "worker-gpu")


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def schema_errors(schema: dict, document: dict) -> list[str]:
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


# ---- the specification ------------------------------------------------------------------------------------------
def test_the_vendored_schema_is_the_compose_specification(schema):
    assert schema["$id"] == "compose_spec.json"
    assert {"services", "volumes", "secrets"} <= set(schema["properties"])


def test_compose_file_follows_the_compose_specification(schema, compose):
    assert schema_errors(schema, compose) == []


@pytest.mark.parametrize("mutate", [
    lambda c: c["services"]["redis"]["healthcheck"].update(intervall="5s"),
    lambda c: c["services"]["api"].update(depends_on={"redis": {"condition": "when_ready"}}),
    lambda c: c["services"]["worker-gpu"].update(profiles="gpu"),
], ids=["misspelt-key", "bad-condition", "profiles-not-a-list"])
def test_the_schema_check_catches_mistakes(schema, compose, mutate):
    broken = copy.deepcopy(compose)
    mutate(broken)
    assert schema_errors(schema, broken), "the schema accepted a broken file: the check would prove nothing"


# ---- Redis --------------------------------------------------------------------------------------------------------
def test_redis_persists_with_an_append_only_file_on_a_volume(compose):
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    # bounded: a maxmemory well under the container's limit, and writes refused (never evicted) when it is reached
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    maxmemory_mb = int(command[command.index("--maxmemory") + 1].removesuffix("mb"))
    assert maxmemory_mb * 2**20 <= 0.75 * int(redis["mem_limit"].removesuffix("g")) * 2**30
    assert any(v.split(":")[1] == "/data" and v.split(":")[0] in compose["volumes"] for v in redis["volumes"])
    assert not redis["image"].endswith(":latest") and ":" in redis["image"]
    major = int(re.search(r":(\d+)", redis["image"]).group(1))
    assert major >= 7, "the service needs Redis >= 6.2 (XAUTOCLAIM); the KEDA lag trigger needs >= 7"


def test_redis_has_a_health_check(compose):
    health = compose["services"]["redis"]["healthcheck"]
    assert health["test"][:1] == ["CMD"] and "ping" in health["test"]


@pytest.mark.parametrize("service", ["api", *WORKERS])
def test_api_and_workers_wait_for_a_healthy_redis(compose, service):
    assert compose["services"][service]["depends_on"]["redis"]["condition"] == "service_healthy"
    env = compose["services"][service]["environment"]
    assert re.match(r"redis://:\$\{SDPO_REDIS_PASSWORD:\?[^}]+\}@redis:6379/\d+$", env["SDPO_REDIS_URL"]), \
        "workers must reach the compose Redis, with its password"


# ---- checkpoints, workers, keys --------------------------------------------------------------------------------------
def test_one_checkpoint_volume_is_shared_by_the_api_and_every_worker(compose):
    mounts = {}
    for service in ("api", *WORKERS):
        spec = compose["services"][service]
        target = spec["environment"]["SDPO_CHECKPOINT_DIR"]
        sources = [v.split(":")[0] for v in spec["volumes"] if v.split(":")[1] == target]
        assert len(sources) == 1, f"{service}: nothing mounted at SDPO_CHECKPOINT_DIR={target}"
        mounts[service] = sources[0]
    assert len(set(mounts.values())) == 1, f"services mount different checkpoint volumes: {mounts}"
    assert next(iter(mounts.values())) in compose["volumes"], "the checkpoint volume must be a named volume"
    worker_modes = [v for s in WORKERS for v in compose["services"][s]["volumes"] if v.startswith("checkpoints:")]
    assert not any(v.endswith(":ro") for v in worker_modes), "workers write checkpoints"


def test_the_cpu_worker_starts_by_default_and_the_gpu_worker_under_the_gpu_profile(compose):
    services = compose["services"]
    assert "profiles" not in services["worker"] and "profiles" not in services["api"]
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in services["worker"], "the CPU worker must not reserve a GPU"


def test_build_targets_exist_in_the_dockerfile(compose):
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "Dockerfile").read_text(), flags=re.M))
    wanted = {"api": "api", "worker": "cpu-worker", "worker-gpu": "gpu-worker"}
    for service, target in wanted.items():
        build = compose["services"][service]["build"]
        assert build["target"] == target and target in stages
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"


def test_workers_get_time_to_finish_a_step_on_stop(compose):
    for service in WORKERS:
        grace = compose["services"][service]["stop_grace_period"]
        seconds = int(grace[:-1]) * {"s": 1, "m": 60}[grace[-1]]
        assert seconds >= 120, f"{service}: {grace} is too short to finish and checkpoint a step"
        assert compose["services"][service]["stop_signal"] == "SIGTERM"


def test_api_keys_come_from_an_ignored_env_file_not_the_compose_file(compose):
    text = COMPOSE.read_text()
    assert "SDPO_API_KEYS" not in text, "keys (even hashes) belong in deploy/sdpo.env, not in git"
    for service in ("api", *WORKERS):
        env_files = compose["services"][service]["env_file"]
        assert {"path": "./sdpo.env", "required": False} in env_files
    example = (COMPOSE.parent / "sdpo.env.example").read_text()
    assert re.search(r"^SDPO_API_KEYS=$", example, flags=re.M), "the example must name the setting, empty"
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/sdpo.env"], cwd=ROOT)
    assert ignored.returncode == 0, "deploy/sdpo.env must be ignored by git"


def test_the_api_is_published_on_loopback_only(compose):
    assert compose["services"]["api"]["ports"] == ["127.0.0.1:8000:8000"]
