"""The sandbox as the shipped containers run it (issue 12, item 1): the worker is the unprivileged user 10001.

Without bubblewrap, code-running verifiers refuse: a failed job and reward-0 verdicts that say why, a log line, and
none of the hostile programs runs. With bubblewrap in a container that masks part of /proc (as Docker and
Kubernetes do, so no fresh /proc can be mounted), the hostile programs run and every attack fails. The single-user
opt-in runs code with a warning. In every case the worker's and its pool's /proc/<pid>/environ stay unreadable.
Each case runs tests/hostile_as_deployed.py under `setpriv` as uid 10001 (this suite runs as root), with the system
interpreter and the project's packages on PYTHONPATH: the project's own interpreter may sit under a directory that
uid cannot enter (a pyenv under /root), as the image's /opt/venv does not."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
USER = 10001
SYSTEM_PYTHON = "/usr/bin/python3"
SECRET = "sdpo-service-secret-7d2e41"
SECRET_ENV = "SDPO_TEST_SERVICE_SECRET"
ATTACKS = ("reads the worker's secrets", "writes the checkpoint volume", "connects to the host",
           "leaves a process behind")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid 10001 needs root (CI runs as root)")


def test_the_system_interpreter_can_load_the_project():
    """The cases below borrow the project's packages: the system Python must be the same version."""
    version = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert version == str(sys.version_info[:2]), f"{SYSTEM_PYTHON} is {version}, the project's Python is not"


def run_as_the_container_user(*, tools: tuple[str, ...], env: dict[str, str] | None = None,
                              masked_proc: bool = False) -> tuple[dict, str, str, Path, socket.socket]:
    """The report of hostile_as_deployed.py run as uid 10001 with only `tools` on its PATH."""
    home = Path(tempfile.mkdtemp(prefix="sdpo-as-deployed-"))
    checkpoints, bin_dir = home / "checkpoints", home / "bin"
    checkpoints.mkdir()
    bin_dir.mkdir()
    for tool in tools:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for path in (home, checkpoints):
        os.chown(path, USER, USER)
    home.chmod(0o755)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    command = ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", SYSTEM_PYTHON,
               str(HERE / "hostile_as_deployed.py"), str(checkpoints), str(listener.getsockname()[1])]
    if masked_proc:  # Docker's and Kubernetes' default: files of /proc hidden under other mounts
        command = [shutil.which("unshare"), "--mount", "/bin/sh", "-c",
                   f'{shutil.which("mount")} --bind /dev/null /proc/keys && exec "$@"', "sh", *command]
    environment = {"PATH": str(bin_dir), "HOME": str(home), "LANG": "C.UTF-8", SECRET_ENV: SECRET,
                   "PYTHONPATH": f"{HERE.parent}:{sysconfig.get_paths()['purelib']}", **(env or {})}
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, cwd=home)
    report = json.loads(done.stdout.splitlines()[0]) if done.stdout.strip() else {}
    return report, done.stdout, done.stderr, checkpoints, listener


def assert_nothing_escaped(report: dict, stdout: str, checkpoints: Path, listener: socket.socket) -> None:
    time.sleep(4)  # longer than the would-be survivor waits before writing
    assert sorted(p.name for p in checkpoints.iterdir()) == [], "a run wrote the checkpoint volume"
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()
    assert SECRET not in json.dumps(report)
    assert report["environ readable"] == {"worker": False, "pool": False}
    assert "worker alive" in stdout, "a run killed the worker"


def test_without_bubblewrap_code_running_verifiers_refuse():
    report, stdout, stderr, checkpoints, listener = run_as_the_container_user(tools=("prlimit", "setpriv", "unshare"))
    assert report.get("uid") == USER, stderr[-3000:]
    assert report["job"].startswith("SandboxRefused: code-running verifiers are refused on this worker")
    for attack in ATTACKS:
        verdict = report[attack]
        assert not verdict["solved"] and verdict["feedback"].startswith("Not run: code-running verifiers are refused"), \
            (attack, verdict)
    assert "SDPO_SANDBOX_MIN_ISOLATION=rlimits" in report["job"]
    assert "sandbox: code-running verifiers are refused" in stderr  # the log line
    assert_nothing_escaped(report, stdout, checkpoints, listener)


def test_with_bubblewrap_in_a_container_every_attack_fails():
    report, stdout, stderr, checkpoints, listener = run_as_the_container_user(
        tools=("prlimit", "setpriv", "unshare", "bwrap"), masked_proc=True)
    assert report.get("uid") == USER, stderr[-3000:]
    assert report["job"] == "accepted"
    for attack in ATTACKS:
        assert report[attack]["solved"], (attack, report[attack])  # it ran, and its attack found nothing
    assert_nothing_escaped(report, stdout, checkpoints, listener)


def test_the_single_user_opt_in_runs_code_and_says_so():
    report, stdout, stderr, checkpoints, listener = run_as_the_container_user(
        tools=("prlimit", "setpriv", "unshare"), env={"SDPO_SANDBOX_MIN_ISOLATION": "rlimits"})
    listener.close()
    assert report.get("uid") == USER, stderr[-3000:]
    assert report["job"] == "accepted"
    assert report["reads the worker's secrets"]["solved"]  # even here the worker's environ is closed to it
    assert report["environ readable"] == {"worker": False, "pool": False}
    assert "untrusted code runs with" in stderr and "as SDPO_SANDBOX_MIN_ISOLATION=rlimits allows" in stderr
