"""`make test-images` (deploy/test_images.sh, deploy/image_checks.py) checked offline: its compose override changes
only what a machine with no registry and no container networks needs, its Redis keeps the shipped command, its
image tags are the ones compose runs, and `make test` never reaches it. The script itself needs Docker and minutes;
docs/deploy.md says what it showed."""

from __future__ import annotations

import importlib.util
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
HOSTNET = ROOT / "deploy/compose.hostnet.yaml"
SCRIPT = ROOT / "deploy/test_images.sh"


class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it: `!reset VALUE` (drop what the file below set) reads as VALUE."""


ComposeLoader.add_constructor("!reset", lambda loader, node: loader.construct_sequence(node)
                              if isinstance(node, yaml.SequenceNode) else loader.construct_scalar(node))


@pytest.fixture(scope="module")
def shipped() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def override() -> dict:
    return yaml.load(HOSTNET.read_text(), Loader=ComposeLoader)  # noqa: S506 - a SafeLoader subclass


@pytest.fixture(scope="module")
def image_checks():
    spec = importlib.util.spec_from_file_location("image_checks", ROOT / "deploy/image_checks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_override_follows_the_compose_specification(override):
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert [e.message for e in validator.iter_errors(override)] == []


def test_the_override_puts_every_service_on_the_host_network_and_nothing_else_on_a_network(shipped, override):
    assert set(override) == {"services"}, "no networks or volumes of its own"
    assert set(override["services"]) == set(shipped["services"]) - {"worker-gpu"}
    for name, service in override["services"].items():
        assert service["network_mode"] == "host", name
        assert "networks" not in service
        assert service.get("ports", []) == [], f"{name}: nothing is published on the host network"
        allowed = {"network_mode", "ports", "command", "environment", "healthcheck", "image"}
        assert set(service) <= allowed, f"{name} changes {set(service) - allowed}"
    assert override["services"]["api"]["ports"] == [], "the api's published port is reset (`!reset []`)"


def test_the_override_keeps_the_shipped_redis_command_and_only_binds_it_to_loopback(shipped, override):
    redis = override["services"]["redis"]
    assert redis["command"] == shipped["services"]["redis"]["command"] + [
        "--bind", "127.0.0.1", "--port", "${SDPO_TEST_REDIS_PORT:?}"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "-p", "${SDPO_TEST_REDIS_PORT:?}", "ping"]
    assert redis["image"].startswith("sdpo-local/redis:"), "a local image: no registry is reachable there"
    assert "environment" not in redis, "REDISCLI_AUTH as shipped"


def test_the_override_serves_the_shipped_api_on_loopback_and_points_everyone_at_that_redis(shipped, override):
    api = override["services"]["api"]
    assert api["command"] == ["sdpo", "serve", "--host", "127.0.0.1", "--port", "${SDPO_TEST_API_PORT:?}"]
    assert shipped["services"]["api"]["command"][:3] == api["command"][:3]
    assert api["healthcheck"]["test"][:-1] == shipped["services"]["api"]["healthcheck"]["test"][:-1]
    assert api["healthcheck"]["test"][-1] == "http://127.0.0.1:${SDPO_TEST_API_PORT:?}/healthz"
    for name in ("api", "worker"):
        url = override["services"][name]["environment"]["SDPO_REDIS_URL"]
        assert url == "redis://:${SDPO_REDIS_PASSWORD:?}@127.0.0.1:${SDPO_TEST_REDIS_PORT:?}/0", name
    assert set(override["services"]["worker"]) == {"network_mode", "environment"}, \
        "the worker keeps its image, command, seccomp profile, volumes and health check"


def test_the_script_builds_the_tags_compose_runs(shipped):
    script = SCRIPT.read_text()
    for variable, service in (("API_IMAGE", "api"), ("WORKER_IMAGE", "worker")):
        assert re.search(rf"^{variable}=(\S+)$", script, re.M).group(1) == shipped["services"][service]["image"]
    local_redis = re.search(r"^REDIS_IMAGE=(\S+)$", script, re.M).group(1)
    assert local_redis == yaml.load(HOSTNET.read_text(), Loader=ComposeLoader)["services"]["redis"]["image"]  # noqa: S506


def test_the_script_parses_and_make_test_does_not_run_it():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test-images:.*\n\t.*deploy/test_images\.sh", makefile, re.M)
    test_target = re.search(r"^test:(.*)\n((?:\t.*\n)+)", makefile, re.M)
    assert "test-images" not in test_target.group(1) and "test_images" not in test_target.group(2)
    assert "test_images" not in (ROOT / "pyproject.toml").read_text(), "pytest must not collect it"


def test_the_script_keeps_machine_specifics_out_of_the_images():
    script = SCRIPT.read_text()
    assert '--secret "id=pip_ca,src=$CA_BUNDLE"' in script, "the CA bundle goes in as a build secret"
    assert "--network host" in script and "--bridge=none" in script, "no container network, no private addresses"
    assert "sed '1{/^# syntax=/d}' Dockerfile" in script, "only the syntax line of the Dockerfile is dropped"


def test_the_wheel_index_is_pep_503(image_checks, tmp_path):
    (tmp_path / "files").mkdir()
    for name in ("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "typing_extensions-4.16.0-py3-none-any.whl",
                 "MarkupSafe-3.0.2-cp311-cp311-manylinux_2_17_x86_64.whl"):
        (tmp_path / "files" / name).write_bytes(b"")
    image_checks.wheel_index(tmp_path)
    assert sorted(p.name for p in (tmp_path / "simple").iterdir()) == [
        "index.html", "markupsafe", "torch", "typing-extensions"]
    page = (tmp_path / "simple" / "torch" / "index.html").read_text()
    assert 'href="../../files/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"' in page
    with pytest.raises(SystemExit, match="no wheels"):
        image_checks.wheel_index(tmp_path / "simple")


def test_the_summary_names_what_held(image_checks, tmp_path):
    results = tmp_path / "results.env"
    results.write_text("api_image_mb=1900\nbuild_api_s=600\nworker_image_mb=1900\nbuild_cpu_worker_s=3\n"
                       "redis_image_mb=250\ngpu_worker=parses, stops at its CUDA base\n")
    assert image_checks.summary(results).endswith("the stack was not started")
    results.write_text(results.read_text() + "healthy_s=40\njob=add-12-30 solved at attempt 3 of 16\njob_s=60\n"
                       "hostile=10 contained, 10 refused\nkill_resume=40/40 attempts once\nredis_restart=no job lost\n"
                       "no_worker=API answered\ntotal_s=900\n")
    line = image_checks.summary(results)
    assert line.startswith("test-images held: images built (api 1.90 GB in 600 s with ? steps from the cache")
    for held in ("job solved", "hostile programs: 10 contained, 10 refused", "kill/resume exact", "Redis restart"):
        assert held in line
