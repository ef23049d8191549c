"""The sandbox that runs every piece of untrusted code: programs written by the model and verifiers written by users.

One run: a fresh run directory as working directory, a leased uid (when the service is root), the isolation of
isolation.py (refused below the configured minimum), rlimits, its own process group, a scrubbed environment,
stdout/stderr captured up to a cap, a wall clock that kills the whole group, a watch on the private memory of all
its processes together (killed past memory_mb), and the verdict returned as data on a pipe (the result channel).
Nothing the run produces is ever executed or unpickled here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sdpo_core.verification.isolation import (
    SANDBOX_DIR,
    bwrap_argv,
    bwrap_mounts_proc,
    checked_isolation,
    drop_argv,
    is_root,
    limits_argv,
    python_paths,
    unshare_argv,
    userns_filter_fd,
)
from sdpo_core.verification.settings import SandboxSettings
from sdpo_core.verification.uids import UidLease, UidPool, kill_processes_of, processes_of
from sdpo_core.verifiers.sandbox import RESULT_FD_ENV, RunLimits, RunResult

logger = logging.getLogger(__name__)

SCRIPT_NAME = "main.py"
RUN_DIR_PREFIX = "sdpo-run-"
STALE_RUN_DIR_S = 3600.0  # a run directory this old belongs to a worker that was killed mid-run
_EXIT_GRACE_S = 0.2  # after the main process exits, how long to wait for pipes held by its children
_MEMORY_CHECK_S = 0.1  # how often the run's total memory is measured
_PAGE = os.sysconf("SC_PAGE_SIZE")


class SubprocessSandbox:
    """Implements sdpo_core's `Sandbox` protocol with subprocesses; safe to share between threads."""

    def __init__(self, options: SandboxSettings | None = None) -> None:
        self.options = options or SandboxSettings()
        self.isolation = checked_isolation(self.options)  # SandboxRefused below the minimum: nothing runs
        self._ro_paths = python_paths(self.options.python) if self.isolation == "bwrap" else []
        self._proc = self.isolation == "bwrap" and bwrap_mounts_proc(self.options)
        self._uids: UidPool | None = None
        if is_root():
            lock_dir = Path(self.options.tmp_dir or tempfile.gettempdir()) / "sdpo-sandbox-uids"
            self._uids = UidPool(base=self.options.uid_base, count=self.options.uid_count, lock_dir=lock_dir)
        logger.info("sandbox isolation: %s%s, uid drop: %s", self.isolation,
                    " (no /proc: this machine cannot mount one)" if self.isolation == "bwrap" and not self._proc else "",
                    self._uids is not None)
        _sweep_stale_run_dirs(Path(self.options.tmp_dir or tempfile.gettempdir()))

    def run_python(
        self,
        script: str,
        *,
        stdin: str = "",
        files: Mapping[str, str] | None = None,
        limits: RunLimits | None = None,
        site_packages: bool = True,
    ) -> RunResult:
        """Run `script` as main.py in a fresh directory holding `files`; see `RunResult` for what comes back."""
        limits = limits or RunLimits()
        lease = self._uids.acquire() if self._uids is not None else None
        workdir = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=self.options.tmp_dir))
        try:
            staged = _stage(workdir, {SCRIPT_NAME: script, **(files or {})}, lease)
            with tempfile.TemporaryFile() as stdin_file:
                stdin_file.write(stdin.encode())
                stdin_file.seek(0)
                return self._execute(workdir, staged, stdin_file, limits, lease, site_packages)
        finally:
            if lease is not None:
                if self.isolation == "rlimits":  # no pid namespace took the leftovers with it
                    kill_processes_of(lease.uid)
                lease.release()
            shutil.rmtree(workdir, ignore_errors=True)

    def _command(
        self, workdir: Path, staged: list[str], limits: RunLimits, lease: UidLease | None, env: dict[str, str],
        site_packages: bool, filter_fd: int | None,
    ) -> list[str]:
        python = [self.options.python, "-I", "-B", *([] if site_packages else ["-S"]), SCRIPT_NAME]
        inner = (drop_argv(lease.uid) if lease else []) + limits_argv(limits, with_nproc=lease is not None or
                                                                       self.isolation != "rlimits") + python
        if self.isolation == "bwrap":
            assert filter_fd is not None
            return bwrap_argv(workdir=workdir, files=staged, extra_ro=self._ro_paths, env=env,
                              disk_mb=limits.max_disk_mb, proc=self._proc, filter_fd=filter_fd) + inner
        if self.isolation == "unshare":
            return unshare_argv() + inner
        return inner

    def _execute(
        self, workdir: Path, staged: list[str], stdin_file: IO[bytes], limits: RunLimits, lease: UidLease | None,
        site_packages: bool,
    ) -> RunResult:
        with userns_filter_fd() if self.isolation == "bwrap" else contextlib.nullcontext() as filter_fd:
            result_r, result_w = os.pipe()
            home = SANDBOX_DIR if self.isolation == "bwrap" else str(workdir)
            env = {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                   RESULT_FD_ENV: str(result_w)}
            command = self._command(workdir, staged, limits, lease, env, site_packages, filter_fd)
            started = time.monotonic()
            try:
                proc = subprocess.Popen(
                    command, stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    pass_fds=(result_w,) if filter_fd is None else (result_w, filter_fd),
                    start_new_session=True, cwd=workdir, env=env,
                )
            finally:
                os.close(result_w)
        try:
            captured = _collect(proc, result_r, limits, started, lease.uid if lease else None)
        finally:
            _kill_group(proc)
            with proc:  # waits, closes stdout and stderr
                os.close(result_r)
        return _result(proc.returncode, captured, limits, time.monotonic() - started, self.isolation)


@dataclass
class _Captured:
    """What came out of one run while it ran."""

    streams: dict[str, bytearray] = field(default_factory=lambda: {"stdout": bytearray(), "stderr": bytearray()})
    result: bytearray = field(default_factory=bytearray)
    result_overflow: bool = False
    timed_out: bool = False
    output_truncated: bool = False
    memory_limited: bool = False


def _sweep_stale_run_dirs(base: Path) -> None:
    """Remove run directories left by workers killed mid-run (their `finally` never ran)."""
    cutoff = time.time() - STALE_RUN_DIR_S
    for stale in base.glob(f"{RUN_DIR_PREFIX}*"):
        with contextlib.suppress(OSError):
            if stale.is_dir() and stale.stat().st_mtime < cutoff:
                shutil.rmtree(stale, ignore_errors=True)


def _stage(workdir: Path, files: Mapping[str, str], lease: UidLease | None) -> list[str]:
    """Write the run's files; their names relative to `workdir`."""
    names = []
    for name, text in files.items():
        path = (workdir / name).resolve()
        if workdir.resolve() not in path.parents:
            raise ValueError(f"file name {name!r} leaves the run directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        names.append(str(path.relative_to(workdir.resolve())))
    if lease is not None:  # the run's uid may write in its directory, and only there
        os.chown(workdir, lease.uid, lease.uid)
    workdir.chmod(0o700)
    return names


def _collect(proc: subprocess.Popen[bytes], result_fd: int, limits: RunLimits, started: float, uid: int | None
             ) -> _Captured:
    """Read stdout, stderr and the result channel until all close, the wall clock ends, output overflows or the
    run's processes together hold more than memory_mb."""
    assert proc.stdout is not None and proc.stderr is not None
    captured = _Captured()
    deadline = started + limits.wall_s
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout.fileno(), selectors.EVENT_READ, "stdout")
    selector.register(proc.stderr.fileno(), selectors.EVENT_READ, "stderr")
    selector.register(result_fd, selectors.EVENT_READ, "result")
    exited_at: float | None = None
    memory_checked = started
    with selector:
        while selector.get_map():
            now = time.monotonic()
            if now >= deadline:
                captured.timed_out = proc.poll() is None
                break
            if now - memory_checked >= _MEMORY_CHECK_S:
                memory_checked = now
                if run_memory_bytes(proc.pid, uid) > limits.memory_mb * 1024 * 1024:
                    captured.memory_limited = True
                    return captured
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > _EXIT_GRACE_S:
                break  # a leftover child holds a pipe open; the group kill below ends it
            timeout = min(deadline - now, 0.05 if exited_at is not None else 0.25)
            for key, _ in selector.select(timeout):
                if not _read_into(captured, key.fd, key.data, limits):
                    selector.unregister(key.fd)
            if captured.output_truncated:
                return captured
    if not captured.timed_out and proc.poll() is None:  # it closed its pipes but runs on
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            captured.timed_out = True
    return captured


def _read_into(captured: _Captured, fd: int, name: str, limits: RunLimits) -> bool:
    """Read one chunk; False at end of file."""
    chunk = os.read(fd, 65536)
    if not chunk:
        return False
    if name == "result":
        room = limits.max_result_bytes - len(captured.result)
        captured.result += chunk[: max(room, 0)]
        captured.result_overflow |= len(chunk) > room
        return True
    buffer = captured.streams[name]
    room = limits.max_output_bytes - len(buffer)
    buffer += chunk[: max(room, 0)]
    if len(chunk) > room:
        captured.output_truncated = True
    return True


def run_memory_bytes(root_pid: int, uid: int | None) -> int:
    """Private memory (resident minus shared pages) of `root_pid` and its descendants, and of every process of
    `uid` (a run's leased uid: its processes even after a double fork), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    parent = int(stat.read().rsplit(b")", 1)[1].split()[1])  # the name may hold spaces and ")"
                children.setdefault(parent, []).append(int(entry.name))
    members, frontier = {root_pid}, [root_pid]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in members:
                members.add(child)
                frontier.append(child)
    if uid is not None:
        members.update(processes_of(uid))
    total = 0
    for pid in members:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/statm", "rb") as statm:
                fields = statm.read().split()
            total += (int(fields[1]) - int(fields[2])) * _PAGE
    return total


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _result(returncode: int, captured: _Captured, limits: RunLimits, wall_s: float, isolation: str) -> RunResult:
    exit_code: int | None = returncode
    signal_number: int | None = None
    if returncode < 0:
        exit_code, signal_number = None, -returncode
    elif isolation == "bwrap" and returncode > 128 and returncode - 128 in signal.valid_signals():
        exit_code, signal_number = None, returncode - 128  # bwrap reports a signalled child as 128 + signal
    if captured.timed_out:
        exit_code, signal_number = None, int(signal.SIGKILL)
    notes = [f"isolation: {isolation}"]
    if captured.result_overflow:
        notes.append(f"the result channel went past {limits.max_result_bytes} bytes and was ignored")
    if captured.memory_limited:
        exit_code, signal_number = None, int(signal.SIGKILL)
        notes.append(f"its processes together used more than {limits.memory_mb} MB and were killed")
    return RunResult(
        exit_code=exit_code,
        signal=signal_number,
        stdout=_text(captured.streams["stdout"]),
        stderr=_text(captured.streams["stderr"]),
        timed_out=captured.timed_out,
        output_truncated=captured.output_truncated,
        result=None if captured.result_overflow or not captured.result else _text(captured.result),
        wall_s=wall_s,
        limits=limits,
        notes=tuple(notes),
        memory_limited=captured.memory_limited,
    )


def _text(data: bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")
