"""deploy/k8s: the base and each overlay rendered by kustomize (`kubectl kustomize`), every object validated
offline against the Kubernetes API schemas that the PyPI package kubernetes-validate bundles, KEDA's ScaledObject
against a schema written below from KEDA's documented fields, then the deployment's own rules: Redis persistence,
probes, GPU requests, grace periods, the KEDA trigger's stream and group, shared checkpoints, secrets."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy/k8s"
VARIANTS = {"base": K8S / "base", "external-redis": K8S / "overlays/external-redis",
            "single-node-cpu": K8S / "overlays/single-node-cpu"}
# The oldest Kubernetes these manifests claim to support, and the newest whose schemas are bundled.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# Made by the operator before applying (docs/deploy.md), so absent from the rendered objects.
EXTERNAL_SECRETS = {variant: {"sdpo-api-keys", "sdpo-redis", "sdpo-checkpoint-key"} for variant in VARIANTS}
WORKER_GROUP = "workers"  # workers/keys.py GROUP

# ---- KEDA ScaledObject (keda.sh/v1alpha1), from keda.sh/docs/2.17/reference/scaledobject-spec and the
# redis-streams scaler page; extra keys are refused so that a misspelt field fails here, not in the cluster.
_INT = {"type": "integer", "minimum": 0}
_NUMBER_STRING = {"type": "string", "pattern": r"^\d+$"}
REDIS_STREAMS_METADATA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["stream"],
    "properties": {
        **{k: {"type": "string"} for k in ("address", "host", "port", "addressFromEnv", "hostFromEnv", "portFromEnv",
                                           "usernameFromEnv", "passwordFromEnv", "stream", "consumerGroup")},
        **{k: _NUMBER_STRING for k in ("pendingEntriesCount", "streamLength", "lagCount", "activationLagCount",
                                       "databaseIndex")},
        "enableTLS": {"enum": ["true", "false"]},
        "unsafeSsl": {"enum": ["true", "false"]},
    },
    "anyOf": [{"required": [k]} for k in ("address", "host", "addressFromEnv", "hostFromEnv")],
    "dependentRequired": {"lagCount": ["activationLagCount", "consumerGroup"],
                          "pendingEntriesCount": ["consumerGroup"]},
}
SCALED_OBJECT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object", "additionalProperties": False, "required": ["name"],
                    "properties": {k: {"type": "string"} for k in ("apiVersion", "kind", "name",
                                                                    "envSourceContainerName")},
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": _INT, "initialCooldownPeriod": _INT, "idleReplicaCount": _INT,
                "minReplicaCount": _INT, "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object", "additionalProperties": False, "required": ["failureThreshold", "replicas"],
                    "properties": {"failureThreshold": _INT, "replicas": _INT,
                                   "behavior": {"enum": ["static", "currentReplicas", "currentReplicasIfHigher",
                                                         "currentReplicasIfLower"]}},
                },
                "advanced": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                        "scalingModifiers": {
                            "type": "object", "additionalProperties": False, "required": ["formula", "target"],
                            "properties": {"formula": {"type": "string"}, "target": {"type": "string"},
                                           "activationTarget": {"type": "string"},
                                           "metricType": {"enum": ["AverageValue", "Value"]}},
                        },
                    },
                },
                "triggers": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False, "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"}, "name": {"type": "string"},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "authenticationRef": {"type": "object", "required": ["name"]},
                        },
                        "if": {"properties": {"type": {"const": "redis-streams"}}},
                        "then": {"properties": {"metadata": REDIS_STREAMS_METADATA}},
                    },
                },
            },
        },
    },
}


# ---- rendering and lookups -------------------------------------------------------------------------------------
def render(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kustomize failed for {path}:\n{out.stderr[-2000:]}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(path) for name, path in VARIANTS.items()}


def objects(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = objects(docs, kind)
    assert name in found, f"no {kind} {name} (have {sorted(found)})"
    return found[name]


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def container(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]["containers"][0]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_of(docs: list[dict], workload: dict) -> dict[str, str | None]:
    """The container's environment: ConfigMap entries via envFrom, then `env` (None for values from secrets)."""
    env: dict[str, str | None] = {}
    for source in container(workload).get("envFrom", []):
        env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container(workload).get("env", []):
        env[var["name"]] = var.get("value")
    return env


def gpu_worker(docs: list[dict]) -> dict:
    return one(docs, "Deployment", "sdpo-worker-gpu")


# ---- rendering and schemas ----------------------------------------------------------------------------------------
def test_every_variant_renders_the_objects_it_promises(rendered):
    kinds = {name: {d["kind"] for d in docs} for name, docs in rendered.items()}
    core = {"Namespace", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "NetworkPolicy"}
    assert core | {"StatefulSet", "ScaledObject"} <= kinds["base"]
    assert core | {"ScaledObject"} <= kinds["external-redis"] and "StatefulSet" not in kinds["external-redis"]
    assert core | {"StatefulSet"} <= kinds["single-node-cpu"] and "ScaledObject" not in kinds["single-node-cpu"]
    for docs in rendered.values():
        assert all(d["metadata"].get("namespace") == "sdpo" for d in docs if d["kind"] != "Namespace")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_objects_follow_the_kubernetes_schemas(rendered, variant, version):
    failures = []
    for doc in rendered[variant]:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert failures == []


def test_the_example_secret_and_raw_base_files_follow_the_schemas():
    """Without kustomize too: each file as written (the example Secret is not in the kustomization)."""
    version = K8S_VERSIONS[-1]
    for path in sorted((K8S / "base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] in ("Kustomization", "ScaledObject"):
                continue
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_kubernetes_schema_check_catches_mistakes(rendered):
    broken = copy.deepcopy(gpu_worker(rendered["base"]))
    container(broken)["resources"]["limts"] = container(broken)["resources"].pop("limits")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("variant", ["base", "external-redis"])
def test_scaled_objects_follow_the_keda_schema(rendered, variant):
    for scaled in objects(rendered[variant], "ScaledObject").values():
        jsonschema.Draft202012Validator(SCALED_OBJECT_SCHEMA).validate(scaled)


@pytest.mark.parametrize("mutate", [
    lambda s: s["spec"]["triggers"][0]["metadata"].update(pendingEntries="4"),
    lambda s: s["spec"]["triggers"][1]["metadata"].pop("activationLagCount"),
    lambda s: s["spec"]["triggers"][0]["metadata"].update(pendingEntriesCount=4),
    lambda s: s["spec"].update(minReplicas=1),
    lambda s: s["spec"]["advanced"]["scalingModifiers"].pop("target"),
], ids=["misspelt-field", "lag-without-activation", "number-not-string", "hpa-field", "modifier-without-target"])
def test_the_keda_schema_catches_mistakes(rendered, mutate):
    broken = copy.deepcopy(one(rendered["base"], "ScaledObject", "sdpo-worker-gpu"))
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SCALED_OBJECT_SCHEMA).validate(broken)


# ---- wiring: selectors, references, images, security ------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_selectors_match_their_pods(rendered, variant):
    docs = rendered[variant]
    pods = [w["spec"]["template"]["metadata"]["labels"] for w in workloads(docs)]
    for workload in workloads(docs):
        assert selects(workload["spec"]["selector"]["matchLabels"], workload["spec"]["template"]["metadata"]["labels"])
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        for name, doc in objects(docs, kind).items():
            selector = doc["spec"].get("selector") or doc["spec"].get("podSelector")
            selector = selector.get("matchLabels", selector)
            assert any(selects(selector, labels) for labels in pods), f"{kind} {name} selects no pod"
    for hpa in objects(docs, "HorizontalPodAutoscaler").values():
        one(docs, hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"])
    for scaled in objects(docs, "ScaledObject").values():
        one(docs, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_referenced_configmap_secret_and_claim_exists(rendered, variant):
    docs = rendered[variant]
    secrets = set(objects(docs, "Secret")) | EXTERNAL_SECRETS[variant]
    for workload in workloads(docs):
        spec = workload["spec"]["template"]["spec"]
        for source in container(workload).get("envFrom", []):
            one(docs, "ConfigMap", source["configMapRef"]["name"])
        for var in container(workload).get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            assert ref is None or ref["name"] in secrets, f"{var['name']}: unknown Secret {ref and ref['name']}"
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                one(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets
    examples = [d for f in ("api-keys", "secrets") for d in yaml.safe_load_all((K8S / f"base/{f}.example.yaml").read_text())]
    assert {d["metadata"]["name"] for d in examples if d["kind"] == "Secret"} == EXTERNAL_SECRETS[variant]


@pytest.mark.parametrize("variant", VARIANTS)
def test_images_are_pinned_and_pods_run_as_non_root(rendered, variant):
    for workload in workloads(rendered[variant]):
        image = container(workload)["image"]
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", f"{workload['metadata']['name']}: image {image} has no fixed tag"
        assert "/" in image or name == "redis", f"{image}: the kustomization's images: list did not apply"
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert container(workload)["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["automountServiceAccountToken"] is False


# ---- Redis --------------------------------------------------------------------------------------------------------
def test_redis_is_a_statefulset_with_a_volume_claim_and_an_append_only_file(rendered):
    docs = rendered["base"]
    redis = one(docs, "StatefulSet", "redis")
    args = container(redis)["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    limit_gi = int(container(redis)["resources"]["limits"]["memory"].removesuffix("Gi"))
    assert int(args[args.index("--maxmemory") + 1].removesuffix("mb")) * 2**20 <= 0.75 * limit_gi * 2**30
    claims = {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]}
    assert {m["name"] for m in container(redis)["volumeMounts"] if m["mountPath"] == "/data"} <= claims
    assert one(docs, "Service", redis["spec"]["serviceName"])
    for workload in (one(docs, "Deployment", "sdpo-api"), gpu_worker(docs)):
        url = env_of(docs, workload)["SDPO_REDIS_URL"]
        assert re.match(rf"redis://:\$\(SDPO_REDIS_PASSWORD\)@{redis['spec']['serviceName']}:6379/\d+$", url)


def test_external_redis_replaces_the_statefulset_with_a_url_from_a_secret(rendered):
    docs = rendered["external-redis"]
    assert not objects(docs, "StatefulSet") and "redis" not in objects(docs, "Service")
    assert "SDPO_REDIS_URL" not in one(docs, "ConfigMap", "sdpo-config")["data"]
    for workload in workloads(docs):
        url = next(v for v in container(workload)["env"] if v["name"] == "SDPO_REDIS_URL")
        assert url["valueFrom"]["secretKeyRef"] == {"name": "sdpo-redis", "key": "url"} and "value" not in url
    worker_env = env_of(docs, gpu_worker(docs))
    for trigger in one(docs, "ScaledObject", "sdpo-worker-gpu")["spec"]["triggers"]:
        assert trigger["metadata"]["passwordFromEnv"] in worker_env, "KEDA reads the password from the worker's env"


# ---- API ------------------------------------------------------------------------------------------------------------
def test_api_probes_service_autoscaler_and_disruption_budget(rendered):
    docs = rendered["base"]
    api = one(docs, "Deployment", "sdpo-api")
    main = container(api)
    port = next(p for p in main["ports"] if p["name"] == "http")["containerPort"]
    assert main["args"][main["args"].index("--port") + 1] == str(port)
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = one(docs, "Service", "sdpo-api")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    hpa = one(docs, "HorizontalPodAutoscaler", "sdpo-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sdpo-api"}
    assert hpa["spec"]["minReplicas"] >= 2, "one API pod cannot roll or be drained without an outage"
    pdb = one(docs, "PodDisruptionBudget", "sdpo-api")
    assert 1 <= pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "the budget must let a drain proceed"
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_api_keys_come_from_a_secret_at_the_configured_path(rendered):
    docs = rendered["base"]
    api = one(docs, "Deployment", "sdpo-api")
    key_file = Path(env_of(docs, api)["SDPO_API_KEYS_FILE"])
    volumes = {v["name"]: v for v in api["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in container(api)["volumeMounts"] if m["mountPath"] == str(key_file.parent))
    assert volumes[mount["name"]]["secret"]["secretName"] == "sdpo-api-keys" and mount["readOnly"] is True
    example = yaml.safe_load((K8S / "base/api-keys.example.yaml").read_text())
    assert key_file.name in example["stringData"]
    assert "SDPO_API_KEYS" not in one(docs, "ConfigMap", "sdpo-config")["data"]


# ---- GPU workers -------------------------------------------------------------------------------------------------
def test_gpu_workers_request_one_gpu_and_get_time_to_checkpoint(rendered):
    docs = rendered["base"]
    worker = gpu_worker(docs)
    resources = container(worker)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 and resources["requests"]["nvidia.com/gpu"] == 1
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 300
    rolling = worker["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 1, "roll workers one at a time: each hands its jobs over"
    pdb = one(docs, "PodDisruptionBudget", "sdpo-worker-gpu")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert selects(pdb["spec"]["selector"]["matchLabels"], worker["spec"]["template"]["metadata"]["labels"])
    probes = [container(worker)[p]["exec"]["command"] for p in ("startupProbe", "livenessProbe")]
    assert probes == [["python", "/opt/sdpo/healthcheck.py", "worker"]] * 2
    assert container(worker)["startupProbe"]["failureThreshold"] * container(worker)["startupProbe"]["periodSeconds"] >= 600


@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpoints_are_one_claim_mounted_by_api_and_workers_where_they_look(rendered, variant):
    docs = rendered[variant]
    claims = set()
    for workload in (w for w in workloads(docs) if w["kind"] == "Deployment"):
        target = env_of(docs, workload)["SDPO_CHECKPOINT_DIR"]
        mount = next(m for m in container(workload)["volumeMounts"] if m["mountPath"] == target)
        volume = next(v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
        claims.add(volume["persistentVolumeClaim"]["claimName"])
        is_worker = "worker" in workload["metadata"]["name"]
        assert mount.get("readOnly", False) is not is_worker, "workers write checkpoints; the API only reads"
    assert len(claims) == 1
    modes = one(docs, "PersistentVolumeClaim", claims.pop())["spec"]["accessModes"]
    assert modes == (["ReadWriteOnce"] if variant == "single-node-cpu" else ["ReadWriteMany"]), \
        "a reclaimed job resumes on any node only if every node can mount the checkpoints"


def test_keda_scales_workers_on_the_jobs_streams_consumer_group(rendered):
    docs = rendered["base"]
    worker = gpu_worker(docs)
    scaled = one(docs, "ScaledObject", "sdpo-worker-gpu")
    env = env_of(docs, worker)
    triggers = {t["name"]: t for t in scaled["spec"]["triggers"]}
    assert {t["type"] for t in triggers.values()} == {"redis-streams"}
    for trigger in triggers.values():
        meta = trigger["metadata"]
        assert meta["stream"] == f"{env['SDPO_REDIS_PREFIX']}:queue" and meta["consumerGroup"] == WORKER_GROUP
        assert env[meta["addressFromEnv"]] == f"redis.{worker['metadata']['namespace']}.svc.cluster.local:6379", \
            "KEDA connects from its own namespace: the address must name ours"
    assert "pendingEntriesCount" in triggers["running"]["metadata"] and "lagCount" in triggers["waiting"]["metadata"]
    modifiers = scaled["spec"]["advanced"]["scalingModifiers"]
    assert set(re.findall(r"[a-z_]+", modifiers["formula"])) == set(triggers), "the formula must sum every trigger"
    args = container(worker)["args"]
    assert modifiers["target"] == args[args.index("--max-jobs") + 1], "target = jobs one worker runs at once"
    assert 0 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]


def test_single_node_overlay_runs_a_cpu_worker_without_gpus_or_keda(rendered):
    docs = rendered["single-node-cpu"]
    worker = one(docs, "Deployment", "sdpo-worker-cpu")
    assert "sdpo-worker-gpu" not in objects(docs, "Deployment")
    assert "/worker-cpu:" in container(worker)["image"]
    assert "nvidia.com/gpu" not in str(worker) and "tolerations" not in worker["spec"]["template"]["spec"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_worker_network_policy_allows_only_dns_and_redis(rendered, variant):
    docs = rendered[variant]
    policy = one(docs, "NetworkPolicy", "sdpo-worker")
    assert policy["spec"]["ingress"] == [] and set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert ports <= {53, 6379, 6380} and {53} < ports
