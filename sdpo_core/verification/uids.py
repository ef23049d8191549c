"""Dedicated uids for sandboxed runs, leased with file locks so that two concurrent runs never share one.

RLIMIT_NPROC counts processes per uid, and the kernel does not enforce it for root (uid 0 is exempt even inside a
user namespace it maps), so a fork bomb is only contained when each run has a non-root uid of its own. Owning the
uid for the length of a run also lets the sandbox kill every process left behind with that uid.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import signal
import time
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_UID_BASE = 61000  # Debian leaves 60000-64999 to local allocation; no account uses these here
DEFAULT_UID_COUNT = 256


class NoFreeUid(RuntimeError):
    """Every uid of the range is leased by a running sandbox."""


class UidLease:
    """One uid held by this process until `release`."""

    def __init__(self, uid: int, lock_fd: int) -> None:
        self.uid = uid
        self._lock_fd: int | None = lock_fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None


class UidPool:
    """Hands out uids from [base, base + count), one run at a time each, across processes."""

    def __init__(self, *, base: int = DEFAULT_UID_BASE, count: int = DEFAULT_UID_COUNT, lock_dir: Path) -> None:
        if base <= 0 or count <= 0:
            raise ValueError("the uid range must be positive and non-empty")
        self.base, self.count = base, count
        self.lock_dir = lock_dir
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def acquire(self, timeout_s: float = 30.0) -> UidLease:
        """A free uid; waits for one up to `timeout_s` when all are taken."""
        deadline = time.monotonic() + timeout_s
        while True:
            for uid in random.sample(range(self.base, self.base + self.count), self.count):
                lease = self._try(uid)
                if lease is not None:
                    return lease
            if time.monotonic() > deadline:
                raise NoFreeUid(f"all {self.count} sandbox uids from {self.base} are in use")
            time.sleep(0.05)

    def _try(self, uid: int) -> UidLease | None:
        fd = os.open(self.lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return UidLease(uid, fd)


def processes_of(uid: int) -> list[int]:
    """Pids whose real uid is `uid`, read from /proc."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if entry.stat(follow_symlinks=False).st_uid == uid and _real_uid(entry.name) == uid:
                pids.append(int(entry.name))
    return pids


def _real_uid(pid: str) -> int | None:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return None


def kill_processes_of(uid: int, rounds: int = 20) -> int:
    """SIGKILL every process of `uid`, again until none is left (a fork bomb keeps spawning); returns how many."""
    killed = 0
    for _ in range(rounds):
        pids = processes_of(uid)
        if not pids:
            return killed
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.01)
    logger.warning("processes of sandbox uid %d still alive after %d rounds of SIGKILL", uid, rounds)
    return killed
