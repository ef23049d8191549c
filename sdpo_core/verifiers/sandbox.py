"""What a code-running verifier needs from a sandbox, as a Protocol, so that the specs never import the runtime.

`sdpo_core.verification.subprocess_sandbox` implements it (own process group, rlimits, namespaces, a dropped uid, a
wall clock). A verifier hands it a Python script and gets back a RunResult. A verdict computed inside the sandbox
travels on the result channel: a pipe whose write end the script finds in the environment variable RESULT_FD_ENV.
Stdout and the exit status are controlled by the code under test, so nothing trusted is ever read from them.
"""

from __future__ import annotations

import signal as _signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

# The script writes its JSON verdict to the file descriptor named by this variable.
RESULT_FD_ENV = "SDPO_RESULT_FD"


@dataclass(frozen=True)
class RunLimits:
    """Limits of one sandboxed run; CPU per process (rlimits), memory per process and per run, processes per run."""

    wall_s: float = 10.0  # wall clock; the whole process group is killed after it
    cpu_s: float = 10.0  # CPU seconds per process (RLIMIT_CPU)
    memory_mb: int = 1024  # address space per process (RLIMIT_AS), and private memory of all its processes together
    max_processes: int = 32  # processes and threads of the run (RLIMIT_NPROC on a uid of its own)
    max_file_mb: int = 16  # largest file it may write (RLIMIT_FSIZE)
    max_disk_mb: int = 64  # what it may write in its directory, again in /tmp and /dev/shm (bwrap: tmpfs sizes)
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_output_bytes: int = 4_000_000  # stdout and stderr each; beyond this the run is stopped
    max_result_bytes: int = 1_000_000  # the result channel


@dataclass(frozen=True)
class RunResult:
    """How a sandboxed run ended, with its (capped) output."""

    exit_code: int | None  # None when a signal ended it
    signal: int | None  # the signal that ended it, e.g. SIGKILL after the wall clock, SIGXCPU after the CPU limit
    stdout: str
    stderr: str
    timed_out: bool  # the wall clock ran out and the group was killed
    output_truncated: bool  # stdout or stderr went past the cap and the run was stopped
    result: str | None  # what the script wrote on the result channel; None when it wrote nothing
    wall_s: float
    limits: RunLimits = field(default_factory=RunLimits)
    notes: tuple[str, ...] = ()  # what the sandbox noticed: limits reached, isolation used
    memory_limited: bool = False  # its processes together went past memory_mb and were killed

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.output_truncated

    @property
    def cpu_limited(self) -> bool:
        return self.signal == _signal.SIGXCPU

    @property
    def out_of_memory(self) -> bool:
        return self.memory_limited or "MemoryError" in self.stderr[-4000:]

    def describe(self) -> str:
        """One sentence on how the run ended, for feedback."""
        if self.timed_out:
            return f"it was stopped after the wall-clock limit of {self.limits.wall_s:g} s"
        if self.memory_limited:
            return f"it ran out of memory (its processes together used more than {self.limits.memory_mb} MB)"
        if self.output_truncated:
            return f"it was stopped after writing more than {self.limits.max_output_bytes} bytes of output"
        if self.cpu_limited:
            return f"it was stopped after the CPU-time limit of {self.limits.cpu_s:g} s"
        if self.signal is not None:
            return f"it was killed by signal {_signal_name(self.signal)}"
        if self.out_of_memory:
            return f"it ran out of memory (limit {self.limits.memory_mb} MB)"
        return f"it exited with status {self.exit_code}"


def _signal_name(number: int) -> str:
    try:
        return _signal.Signals(number).name
    except ValueError:
        return str(number)


class Sandbox(Protocol):
    """Runs untrusted Python in isolation and reports what happened as data."""

    def run_python(
        self,
        script: str,
        *,
        stdin: str = "",
        files: Mapping[str, str] | None = None,
        limits: RunLimits | None = None,
        site_packages: bool = True,
    ) -> RunResult:
        """Run `script` with `stdin`, in a fresh directory that holds `files` (name -> text).

        `site_packages=False` starts the interpreter without third-party packages (`python -S`), 2-3x faster.
        """
        ...
