"""The shipped deployments let the verifier sandbox isolate and lock what the sandbox must not reach (issue 12,
item 1): workers require bubblewrap (SDPO_SANDBOX_MIN_ISOLATION=bwrap) and get the seccomp profile and AppArmor
setting it needs as a non-root user, checkpoints are signed with a shared key, Redis requires a password every
client has, and the worker's egress names its destinations."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from test_deploy_dockerfile import dockerfile, lineage  # noqa: F401 - the fixture
from test_deploy_k8s import VARIANTS, container, env_of, gpu_worker, objects, one, rendered  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "deploy/seccomp/sdpo-worker.json"
COMPOSE = ROOT / "deploy/compose.yaml"
WORKERS = ("worker", "worker-gpu")
# seccomp and prctl: bwrap loads the sandbox's own filter (no nested user namespaces, issue 17 item 7)
BUBBLEWRAP_NEEDS = {"clone", "clone3", "unshare", "mount", "umount2", "pivot_root", "chroot", "sethostname", "seccomp",
                    "prctl"}
KERNEL_SURFACE = {"keyctl", "add_key", "bpf", "perf_event_open", "io_uring_setup", "userfaultfd", "ptrace",
                  "process_vm_readv", "init_module", "kexec_load"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def worker_k8s(docs: list[dict], variant: str) -> dict:
    return gpu_worker(docs) if variant != "single-node-cpu" else one(docs, "Deployment", "sdpo-worker-cpu")


# ---- the seccomp profile -------------------------------------------------------------------------------------------
def test_the_seccomp_profile_allows_what_bubblewrap_needs_and_denies_kernel_surface():
    profile = json.loads(PROFILE.read_text())
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    denied = {name for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ERRNO" for name in rule["names"]}
    assert not BUBBLEWRAP_NEEDS & denied
    assert KERNEL_SURFACE <= denied
    assert {rule["action"] for rule in profile["syscalls"]} == {"SCMP_ACT_ERRNO"}


# ---- compose -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("service", WORKERS)
def test_compose_workers_get_the_profile_and_require_bubblewrap(compose, service):
    spec = compose["services"][service]
    options = spec["security_opt"]
    seccomp = next(o.split("=", 1)[1] for o in options if o.startswith("seccomp="))
    assert (COMPOSE.parent / seccomp).resolve() == PROFILE
    assert "apparmor=unconfined" in options and "no-new-privileges:true" in options
    assert spec["environment"]["SDPO_SANDBOX_MIN_ISOLATION"] == "bwrap"
    assert re.fullmatch(r"\$\{SDPO_CHECKPOINT_KEY:\?[^}]+\}", spec["environment"]["SDPO_CHECKPOINT_KEY"])


def test_compose_redis_requires_a_password_compose_will_not_start_without(compose):
    redis = compose["services"]["redis"]
    command = redis["command"]
    required = r"\$\{SDPO_REDIS_PASSWORD:\?[^}]+\}"
    assert re.fullmatch(required, command[command.index("--requirepass") + 1])
    assert re.fullmatch(required, redis["environment"]["REDISCLI_AUTH"])  # the health check's redis-cli
    for service in ("api", *WORKERS):
        url = compose["services"][service]["environment"]["SDPO_REDIS_URL"]
        assert re.fullmatch(rf"redis://:{required}@redis:6379/\d+", url), service
    assert "deploy/.env" in (ROOT / ".gitignore").read_text().split()


# ---- Kubernetes ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_k8s_workers_get_the_profile_and_require_bubblewrap(rendered, variant):  # noqa: F811
    docs = rendered[variant]
    worker = worker_k8s(docs, variant)
    pod = worker["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "Localhost", "localhostProfile": PROFILE.name}
    assert container(worker)["securityContext"]["appArmorProfile"] == {"type": "Unconfined"}
    assert container(worker)["securityContext"]["allowPrivilegeEscalation"] is False
    env = env_of(docs, worker)
    assert env["SDPO_SANDBOX_MIN_ISOLATION"] == "bwrap"
    key = next(v for v in container(worker)["env"] if v["name"] == "SDPO_CHECKPOINT_KEY")
    assert key["valueFrom"]["secretKeyRef"]["name"] == "sdpo-checkpoint-key"


def test_k8s_redis_requires_a_password_that_every_client_has(rendered):  # noqa: F811
    docs = rendered["base"]
    redis = one(docs, "StatefulSet", "redis")
    args = container(redis)["args"]
    password = args[args.index("--requirepass") + 1]
    assert password == "$(REDIS_PASSWORD)"
    redis_env = {v["name"]: v for v in container(redis)["env"]}
    for name in ("REDIS_PASSWORD", "REDISCLI_AUTH"):
        assert redis_env[name]["valueFrom"]["secretKeyRef"] == {"name": "sdpo-redis", "key": "password"}
    for workload in (one(docs, "Deployment", "sdpo-api"), gpu_worker(docs)):
        env = [v["name"] for v in container(workload)["env"]]
        assert env.index("SDPO_REDIS_PASSWORD") < env.index("SDPO_REDIS_URL"), "$(VAR) needs VAR defined before"
        assert "$(SDPO_REDIS_PASSWORD)@" in env_of(docs, workload)["SDPO_REDIS_URL"]
    for variant in ("base", "external-redis"):
        worker_env = {v["name"] for v in container(gpu_worker(rendered[variant]))["env"]}
        for trigger in one(rendered[variant], "ScaledObject", "sdpo-worker-gpu")["spec"]["triggers"]:
            assert trigger["metadata"]["passwordFromEnv"] in worker_env, "KEDA must authenticate too"


@pytest.mark.parametrize("variant", VARIANTS)
def test_k8s_worker_egress_names_its_destinations(rendered, variant):  # noqa: F811
    docs = rendered[variant]
    policy = one(docs, "NetworkPolicy", "sdpo-worker")
    for rule in policy["spec"]["egress"]:
        assert rule.get("to"), f"an egress rule open to any destination: {rule}"
        for peer in rule["to"]:
            assert peer.get("podSelector") or peer.get("ipBlock", {}).get("cidr", "0.0.0.0/0") != "0.0.0.0/0", peer
    dns, redis = policy["spec"]["egress"][:2]
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    if variant == "external-redis":
        assert redis["to"][0]["ipBlock"]["cidr"].endswith("/32")
    else:
        assert redis["to"][0]["podSelector"]["matchLabels"] == objects(docs, "StatefulSet")["redis"]["spec"][
            "selector"]["matchLabels"]


# ---- the image -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["cpu-worker", "gpu-worker"])
def test_worker_images_require_bubblewrap(dockerfile, target):  # noqa: F811
    _, stages, _ = dockerfile
    env = " ".join(e for s in lineage(stages, target) for e in s.all("ENV"))
    assert re.search(r"SDPO_SANDBOX_MIN_ISOLATION=bwrap\b", env), target
