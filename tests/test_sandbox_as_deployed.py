"""The sandbox as the shipped containers run it (issue 12, item 1): the worker is the unprivileged user 10001.

Without bubblewrap, code-running verifiers refuse: a failed job and reward-0 verdicts that say why, a log line, and
none of the hostile programs runs. With bubblewrap, in a container that masks part of /proc (as Docker and
Kubernetes do, so no fresh /proc can be mounted) and on a host that does not, the hostile programs run and every
attack fails, the escapes of issue 17 (host files, unix sockets, files left in /tmp and /dev/shm, /dev/shm past its
bound, nested user namespaces) included, and tests/test_hostile_code.py passes whole as that user. The single-user
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
from sandbox_helpers import ESCAPE_ATTACKS, Bait, host_bait

HERE = Path(__file__).resolve().parent
USER = 10001
SYSTEM_PYTHON = "/usr/bin/python3"
SECRET = "sdpo-service-secret-7d2e41"
SECRET_ENV = "SDPO_TEST_SERVICE_SECRET"
ATTACKS = ("reads the worker's secrets", "writes the checkpoint volume", "connects to the host",
           "leaves a process behind", *ESCAPE_ATTACKS)

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid 10001 needs root (CI runs as root)"),
              pytest.mark.sandbox]


def test_the_system_interpreter_can_load_the_project():
    """The cases below borrow the project's packages: the system Python must be the same version."""
    version = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert version == str(sys.version_info[:2]), f"{SYSTEM_PYTHON} is {version}, the project's Python is not"


def run_as_the_container_user(bait: Bait, *, tools: tuple[str, ...], env: dict[str, str] | None = None,
                              masked_proc: bool = False) -> tuple[dict, str, str, Path, socket.socket]:
    """The report of hostile_as_deployed.py run as uid 10001 with only `tools` on its PATH, `bait` on the host."""
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
               str(HERE / "hostile_as_deployed.py"), str(checkpoints), str(listener.getsockname()[1]),
               str(bait.directory)]
    if masked_proc:  # Docker's and Kubernetes' default: files of /proc hidden under other mounts
        command = [shutil.which("unshare"), "--mount", "/bin/sh", "-c",
                   f'{shutil.which("mount")} --bind /dev/null /proc/keys && exec "$@"', "sh", *command]
    environment = {"PATH": str(bin_dir), "HOME": str(home), "LANG": "C.UTF-8", SECRET_ENV: SECRET,
                   "PYTHONPATH": f"{HERE.parent}:{sysconfig.get_paths()['purelib']}", **(env or {})}
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, cwd=home)
    report = json.loads(done.stdout.splitlines()[0]) if done.stdout.strip() else {}
    return report, done.stdout, done.stderr, checkpoints, listener


def assert_nothing_escaped(report: dict, stdout: str, checkpoints: Path, listener: socket.socket, bait: Bait) -> None:
    time.sleep(4)  # longer than the would-be survivor waits before writing
    assert sorted(p.name for p in checkpoints.iterdir()) == [], "a run wrote the checkpoint volume"
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()
    assert bait.escapes() == []
    assert SECRET not in json.dumps(report) and bait.secret not in json.dumps(report)
    assert report["environ readable"] == {"worker": False, "pool": False}
    assert report["tracker holds the secret"] is False  # the one dumpable process of ours never had it
    assert "worker alive" in stdout, "a run killed the worker"


def test_without_bubblewrap_code_running_verifiers_refuse():
    with host_bait() as bait:
        report, stdout, stderr, checkpoints, listener = run_as_the_container_user(
            bait, tools=("prlimit", "setpriv", "unshare"))
        assert report.get("uid") == USER, stderr[-3000:]
        assert report["job"].startswith("SandboxRefused: code-running verifiers are refused on this worker")
        for attack in ATTACKS:
            verdict = report[attack]
            assert not verdict["solved"] and verdict["feedback"].startswith(
                "Not run: code-running verifiers are refused"), (attack, verdict)
        assert "bubblewrap is not installed" in report["job"] and "SDPO_SANDBOX_MIN_ISOLATION=rlimits" in report["job"]
        assert "sandbox: code-running verifiers are refused" in stderr  # the log line
        assert_nothing_escaped(report, stdout, checkpoints, listener, bait)


@pytest.mark.parametrize("masked_proc", [True, False], ids=["in a container", "on a host"])
def test_with_bubblewrap_every_attack_fails(masked_proc):
    """In a container bwrap cannot mount a fresh /proc and gives the run an empty one; on a host it mounts one."""
    with host_bait() as bait:
        report, stdout, stderr, checkpoints, listener = run_as_the_container_user(
            bait, tools=("prlimit", "setpriv", "unshare", "bwrap"), masked_proc=masked_proc)
        assert report.get("uid") == USER, stderr[-3000:]
        assert report["job"] == "accepted" and report["proc mounted"] is not masked_proc
        for attack in ATTACKS:
            assert report[attack]["solved"], (attack, report[attack])  # it ran, and its attack found nothing
        assert_nothing_escaped(report, stdout, checkpoints, listener, bait)


def test_the_single_user_opt_in_runs_code_and_says_so():
    with host_bait() as bait:  # its leftovers (the opt-in lets them through) go with it
        report, stdout, stderr, checkpoints, listener = run_as_the_container_user(
            bait, tools=("prlimit", "setpriv", "unshare"), env={"SDPO_SANDBOX_MIN_ISOLATION": "rlimits"})
        escaped = bait.escapes()
    listener.close()
    assert report.get("uid") == USER, stderr[-3000:]
    assert report["job"] == "accepted"
    # What the opt-in leaves open, and so proof that the bait catches an escape.
    assert not report["reads world-readable host files"]["solved"] and bait.secret in json.dumps(report)
    assert str(bait.socket_path) in "".join(escaped) and f"/tmp/{bait.left_prefix}" in escaped
    assert report["reads the worker's secrets"]["solved"]  # even here the worker's environ is closed to it
    assert report["environ readable"] == {"worker": False, "pool": False}
    assert report["tracker holds the secret"] is False
    assert "untrusted code runs with" in stderr and "as SDPO_SANDBOX_MIN_ISOLATION=rlimits allows" in stderr


def test_the_hostile_suite_passes_as_the_container_user():
    """tests/test_hostile_code.py, every case, run by uid 10001 with bubblewrap (a user namespace of the worker's
    own, no leased uids): the shipped images' sandbox, where this suite's root run has bwrap start as root."""
    home = Path(tempfile.mkdtemp(prefix="sdpo-hostile-as-10001-"))
    os.chown(home, USER, USER)
    command = ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", SYSTEM_PYTHON, "-m", "pytest", "-q",
               "-p", "no:cacheprovider", str(HERE / "test_hostile_code.py")]
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                   "PYTHONPATH": f"{HERE.parent}:{sysconfig.get_paths()['purelib']}"}
    try:
        done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600, cwd=home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert done.returncode == 0 and " passed" in done.stdout and "failed" not in done.stdout, done.stdout[-5000:]
