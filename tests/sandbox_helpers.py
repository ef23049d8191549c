"""Helpers for the sandbox and verifier tests: problems, code blocks, leftover-process checks, bait on the host."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sdpo_core.problem import Problem
from sdpo_core.verification.uids import DEFAULT_UID_BASE, DEFAULT_UID_COUNT
from sdpo_core.verifiers.sandbox import RunLimits

SUM_TESTS = [{"input": f"{a} {b}\n", "output": f"{a + b}\n"} for a, b in [(1, 2), (10, 20), (-5, 5)]]
SUM_SOLUTION = "a, b = map(int, input().split())\nprint(a + b)\n"


def block(code: str) -> str:
    """`code` as a model would answer it: some reasoning, then a fenced block."""
    return f"Here is my solution.\n```python\n{code}\n```\n"


def sum_problem(**overrides: object) -> Problem:
    """A small code_io problem: read two integers, print their sum."""
    verifier = {"type": "code_io", "public_tests": SUM_TESTS, "hidden_tests": [{"input": "1000 1\n", "output": "1001\n"}],
                "time_limit_s": 1.0, **overrides}
    return Problem.model_validate({"id": "sum", "prompt": "Read a and b, print a + b.", "verifier": verifier})


def sandbox_processes() -> list[int]:
    """Pids still running under any sandbox uid."""
    pids = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/status") as status:
                uid = next(int(line.split()[1]) for line in status if line.startswith("Uid:"))
        except (OSError, StopIteration, ValueError):
            continue
        if DEFAULT_UID_BASE <= uid < DEFAULT_UID_BASE + DEFAULT_UID_COUNT:
            pids.append(int(name))
    return pids


def wait_until_no_sandbox_processes(timeout_s: float = 10.0) -> list[int]:
    """Leftover sandbox pids after waiting up to `timeout_s` for them to go (empty when contained)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = sandbox_processes()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# ---- escapes from the sandbox's filesystem view (issue 17, item 4) ---------------------------------------------------
LEFT_BEHIND_DIRS = ("/tmp", "/dev/shm", "/var/tmp")  # world-writable places a run might leave files in


@dataclass
class Bait:
    """What a test leaves on the host for hostile programs, all named after one directory anyone may enter: a
    world-readable file and a unix socket anyone may connect to (as a local Redis's often is) in it, an abstract unix
    socket, and the name prefix of files a program should not manage to leave in LEFT_BEHIND_DIRS. A hostile
    program's side rebuilds it from the directory alone (no listeners)."""

    directory: Path
    listeners: tuple[socket.socket, ...] = ()

    @property
    def secret(self) -> str:
        return f"sdpo-host-file-{self.directory.name}"

    @property
    def file(self) -> Path:
        return self.directory / "world-readable.txt"

    @property
    def socket_path(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def abstract_name(self) -> str:
        return f"sdpo-abstract-{self.directory.name}"

    @property
    def left_prefix(self) -> str:
        return f"sdpo-left-{self.directory.name}"

    def escapes(self) -> list[str]:
        """What got through: connections waiting on the listeners, files left behind."""
        found = []
        for listener in self.listeners:
            with contextlib.suppress(BlockingIOError):
                listener.accept()[0].close()
                found.append(f"a connection to {listener.getsockname()!r}")
        return found + [str(path) for where in LEFT_BEHIND_DIRS for path in Path(where).glob(f"{self.left_prefix}*")]


@contextlib.contextmanager
def host_bait() -> Iterator[Bait]:
    directory = Path(tempfile.mkdtemp(prefix="sdpo-bait-"))
    directory.chmod(0o755)
    bait = Bait(directory, (socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)))
    try:
        bait.file.write_text(bait.secret)
        bait.file.chmod(0o644)
        for listener, address in zip(bait.listeners, (str(bait.socket_path), "\0" + bait.abstract_name)):
            listener.bind(address)
            listener.listen(8)
            listener.setblocking(False)
        bait.socket_path.chmod(0o777)
        yield bait
    finally:
        for listener in bait.listeners:
            listener.close()
        shutil.rmtree(directory, ignore_errors=True)
        for where in LEFT_BEHIND_DIRS:  # what a weaker isolation (the opt-ins) let a run leave
            for path in Path(where).glob(f"{bait.left_prefix}*"):
                path.unlink(missing_ok=True)


def escape_attacks(bait: Bait) -> dict[str, str]:
    """Hostile programs that print nothing (and so, followed by SUM_SOLUTION, solve sum_problem) only when their
    attack failed; otherwise they print what they got."""
    return {
        "reads world-readable host files": (
            f"for path in [{str(bait.file)!r}, '/etc/passwd', '/etc/hostname']:\n"
            "    try:\n        print('READ', path, open(path).read()[:200])\n    except OSError:\n        pass\n"
        ),
        "connects to host unix sockets": (
            f"import socket\nfor address in [{str(bait.socket_path)!r}, '\\0' + {bait.abstract_name!r}]:\n"
            "    try:\n        socket.socket(socket.AF_UNIX).connect(address)\n        print('CONNECTED', address)\n"
            "    except OSError:\n        pass\n"
        ),
        "leaves files in the host's /tmp and /dev/shm": (
            f"for where in {LEFT_BEHIND_DIRS!r}:\n    try:\n"
            f"        open(where + '/{bait.left_prefix}', 'w').write('x')\n    except OSError:\n        pass\n"
        ),
        "fills /dev/shm past the run's bound": (  # four times the bound, in files under the per-file limit
            f"written = 0\ntry:\n    for i in range({4 * RunLimits().max_disk_mb}):\n"
            f"        with open(f'/dev/shm/{bait.left_prefix}-{{i}}', 'wb') as f:\n            f.write(b'x' * (1 << 20))\n"
            f"        written += 1\nexcept OSError:\n    pass\nif written > {RunLimits().max_disk_mb}:\n"
            "    print('WROTE', written, 'MiB')\n"
        ),
        "creates a user namespace": NESTED_USER_NAMESPACE,
    }


# Each way of making a user namespace, tried in a child of its own (one that worked changes the process); prints the
# ways that worked.
NESTED_USER_NAMESPACE = """import ctypes, os, platform, subprocess
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000

def raw_clone():
    pid = libc.syscall({'x86_64': 56, 'aarch64': 220}[platform.machine()], CLONE_NEWUSER | 17, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    return pid > 0

def in_a_child(attempt):
    pid = os.fork()
    if pid == 0:
        os._exit(0 if attempt() else 1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0

ways = {'unshare(CLONE_NEWUSER)': lambda: libc.unshare(CLONE_NEWUSER) == 0, 'clone(CLONE_NEWUSER)': raw_clone,
        'unshare -U': lambda: subprocess.run(['unshare', '-U', 'true'], capture_output=True).returncode == 0}
worked = [name for name, attempt in ways.items() if in_a_child(attempt)]
if worked:
    print('NEW USER NAMESPACE', worked)
"""

ESCAPE_ATTACKS = tuple(escape_attacks(Bait(Path("names-only"))))  # their names, to parametrize tests with
