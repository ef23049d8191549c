"""How a sandboxed command is wrapped: namespaces (bubblewrap, else `unshare`), a dropped uid, rlimits.

Three levels, the best that works on the machine is chosen once and logged:
- `bwrap`: new pid, net, ipc and uts namespaces; a read-only filesystem with only /usr, the Python installation,
  /dev, size-limited tmpfs for /tmp, /dev/shm and the run directory (the only writable places), a fresh /proc where
  the kernel allows mounting one (a container whose /proc is partly masked does not: the sandbox then has an empty
  /proc); a cleared environment; a seccomp filter that refuses new user namespaces. Needs the `bubblewrap` package
  and, when the service is not root, user namespaces.
- `unshare`: new net and pid namespaces from util-linux `unshare`, no private filesystem view: the dropped uid and
  file permissions keep the run out of the service's files, but it reads world-readable host files, connects to
  unix sockets anyone may use (a Redis socket) and leaves files in the host's /tmp and /dev/shm. Where bwrap is
  missing, and only when the operator accepts it (SDPO_SANDBOX_MIN_ISOLATION=unshare).
- `rlimits`: no namespaces at all, so the network is reachable; logged as a warning. Last resort.
In every level, when the service runs as root, the command drops to a uid leased for the run (`setpriv`) so that
RLIMIT_NPROC holds, and rlimits are set by util-linux `prlimit` right before the interpreter starts. Using those
two small programs rather than `preexec_fn` keeps process creation safe in a threaded caller.

The sandbox fails closed: below SDPO_SANDBOX_MIN_ISOLATION (default `bwrap`: only bubblewrap gives the run a
filesystem view of its own) code-running verifiers refuse to run (`checked_isolation` raises SandboxRefused and logs
why). `SDPO_SANDBOX_MIN_ISOLATION=unshare` accepts unshare with a uid of its own (so as root);
`SDPO_SANDBOX_MIN_ISOLATION=rlimits` is the opt-in for a machine with one user.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from sdpo_core.verification.settings import Isolation, SandboxSettings
from sdpo_core.verifiers.sandbox import RunLimits

logger = logging.getLogger(__name__)

SANDBOX_DIR = "/sandbox"  # where the run directory appears inside bwrap
_CORE_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32")


class SandboxUnavailable(RuntimeError):
    """The isolation asked for cannot run on this machine."""


class SandboxRefused(SandboxUnavailable):
    """The isolation that works here is below the required minimum: untrusted code is not run."""


def is_root() -> bool:
    return os.geteuid() == 0


def limits_argv(limits: RunLimits, *, with_nproc: bool) -> list[str]:
    """`prlimit` arguments; the CPU hard limit is one second above the soft one so SIGXCPU comes first."""
    cpu = max(1, math.ceil(limits.cpu_s))
    argv = [
        "prlimit",
        f"--as={limits.memory_mb * 1024 * 1024}",
        f"--cpu={cpu}:{cpu + 1}",
        f"--fsize={limits.max_file_mb * 1024 * 1024}",
        f"--nofile={limits.max_open_files}",
        "--core=0",
    ]
    if with_nproc:
        argv.append(f"--nproc={limits.max_processes}")
    return [*argv, "--"]


def drop_argv(uid: int) -> list[str]:
    """`setpriv` arguments that become `uid` with no groups and no capabilities, for good."""
    return [
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
    ]


def python_paths(python: str) -> list[str]:
    """Directories the interpreter needs: its installation and, for a venv, the venv."""
    probe = subprocess.run(
        [python, "-I", "-c", "import sys; print(sys.prefix); print(sys.base_prefix)"],
        capture_output=True, text=True, check=True, timeout=30,
    )
    paths = {p for p in probe.stdout.split("\n") if p}
    paths.add(str(Path(os.path.realpath(python)).parent.parent))
    paths.add(str(Path(python).parent.parent))
    return sorted(p for p in paths if not any(p == c or p.startswith(c + "/") for c in _CORE_PATHS))


def bwrap_argv(*, workdir: Path, files: Sequence[str], extra_ro: Sequence[str], env: dict[str, str], disk_mb: int,
               proc: bool, filter_fd: int) -> list[str]:
    """bwrap arguments up to `--`: what the sandbox sees and which namespaces it gets; `filter_fd` holds
    `userns_filter()` (see `userns_filter_fd`).

    The run directory is a tmpfs of `disk_mb` holding read-only binds of the staged `files` (names relative to
    `workdir`), and /tmp and /dev/shm are two more: what the run writes stays in memory it is allowed, never on the
    host's disk. Everything else is read-only, bwrap's own root and /dev tmpfs included: without a user namespace
    they belong to root, but in one (a non-root service) they belong to the run and have no size limit, and tmpfs
    pages are not the run's resident memory, so the memory watch would not see them fill."""
    argv = ["bwrap"]
    for path in _CORE_PATHS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    size = str(disk_mb * 1024 * 1024)
    # The private /tmp first: mounts come in order, so a tmpfs mounted later would hide an interpreter or venv that
    # lives under /tmp (a checkout in /tmp/...), which the binds below put back on top of it.
    argv += [*(["--proc", "/proc"] if proc else ["--dir", "/proc"]), "--dev", "/dev",
             "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm",
             "--perms", "1777", "--size", size, "--tmpfs", "/tmp"]
    made: set[str] = {"/tmp"}
    for path in extra_ro:
        for parent in reversed(Path(path).parents[:-1]):  # parents bwrap would otherwise make with mode 0700
            if str(parent) not in made:
                argv += ["--perms", "0755", "--dir", str(parent)]
                made.add(str(parent))
        argv += ["--ro-bind", path, path]
    argv += ["--perms", "1777", "--size", size, "--tmpfs", SANDBOX_DIR]
    for name in files:
        argv += ["--ro-bind", str(workdir / name), f"{SANDBOX_DIR}/{name}"]
    argv += [
        "--remount-ro", "/dev", "--remount-ro", "/",  # last: the mounts above need their mount points made first
        "--chdir", SANDBOX_DIR,
        "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent", "--new-session", "--clearenv", "--seccomp", str(filter_fd),
    ]
    if not is_root():
        argv += ["--unshare-user"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    return [*argv, "--"]


# The run may not make user namespaces: in one of its own it would hold every capability over the namespaces it
# makes next (mounts, network), which is the kernel surface most container escapes have used. bwrap's
# --disable-userns needs --unshare-user, which a root service does not use (the run drops to its leased uid inside,
# and bwrap's user namespace maps a single uid), so one seccomp filter, loaded by bwrap, serves both.
_CLONE_NEWUSER = 0x10000000
_SYSCALLS = {  # machine: (AUDIT_ARCH_*, unshare, clone, clone3)
    "x86_64": (0xC000003E, 272, 56, 435),
    "aarch64": (0xC00000B7, 97, 220, 435),
}


def userns_filter() -> bytes:
    """A classic-BPF seccomp program: unshare and clone with CLONE_NEWUSER fail with EPERM; clone3, whose flags a
    filter cannot read, fails with ENOSYS, on which libc falls back to clone; system calls of another ABI (32-bit,
    x32: other numbers) fail with EPERM."""
    arch, unshare, clone, clone3 = _SYSCALLS[os.uname().machine]
    load, equal, at_least, any_bit, answer = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|..|K, BPF_RET|K
    allow, refuse, no_such_call = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    program = [  # (code, instructions skipped if true, if false, operand)
        (load, 0, 0, 4),  # seccomp_data.arch
        (equal, 1, 0, arch),
        (answer, 0, 0, refuse),
        (load, 0, 0, 0),  # seccomp_data.nr
        (at_least, 0, 1, 0x40000000),  # the x32 ABI's numbers
        (answer, 0, 0, refuse),
        (equal, 0, 1, clone3),
        (answer, 0, 0, no_such_call),
        (equal, 1, 0, unshare),
        (equal, 0, 2, clone),
        (load, 0, 0, 16),  # the low half of seccomp_data.args[0] (little-endian): the flags of unshare and clone
        (any_bit, 1, 0, _CLONE_NEWUSER),
        (answer, 0, 0, allow),
        (answer, 0, 0, refuse),
    ]
    return b"".join(struct.pack("=HBBI", code, if_true, if_false, k) for code, if_true, if_false, k in program)


@contextlib.contextmanager
def userns_filter_fd() -> Iterator[int]:
    """The read end of a pipe holding `userns_filter()`, for bwrap's --seccomp (it reads to the end); closed after."""
    read_fd, write_fd = os.pipe()
    try:
        with open(write_fd, "wb") as pipe:
            pipe.write(userns_filter())
        yield read_fd
    finally:
        os.close(read_fd)


def unshare_argv() -> list[str]:
    """util-linux unshare arguments: no network, and a pid namespace whose end takes every leftover process."""
    if is_root():
        return ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--"]
    return ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--"]


def _probe(argv: list[str], pass_fds: Sequence[int] = ()) -> bool:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL, pass_fds=pass_fds)
    except (OSError, subprocess.SubprocessError):
        return False
    if done.returncode != 0:
        logger.info("sandbox probe %s failed: %s", argv[0], done.stderr.decode(errors="replace").strip()[:300])
    return done.returncode == 0


def _probe_uid(options: SandboxSettings) -> list[str]:
    return drop_argv(options.uid_base) if is_root() else []


def _bwrap_probe(options: SandboxSettings, *, proc: bool) -> bool:
    workdir = Path(options.tmp_dir or "/tmp")
    with userns_filter_fd() as filter_fd:
        wrapped = bwrap_argv(workdir=workdir, files=[], extra_ro=python_paths(options.python), env={}, disk_mb=1,
                             proc=proc, filter_fd=filter_fd)
        return _probe(wrapped + _probe_uid(options) + [options.python, "-I", "-c", "pass"], pass_fds=(filter_fd,))


@functools.cache
def bwrap_mounts_proc(options: SandboxSettings) -> bool:
    """Whether bwrap can mount a fresh /proc here (not in a container that masks parts of its own /proc)."""
    return shutil.which("bwrap") is not None and _bwrap_probe(options, proc=True)


@functools.cache
def choose_isolation(options: SandboxSettings) -> Isolation:
    """The best isolation that works here, probed once per options; raises if an explicit choice cannot run."""
    if shutil.which("prlimit") is None or (is_root() and shutil.which("setpriv") is None):
        raise SandboxUnavailable("the sandbox needs util-linux `prlimit` and `setpriv`")
    python_cmd = [options.python, "-I", "-c", "pass"]
    candidates: list[Isolation] = ["bwrap", "unshare", "rlimits"] if options.isolation == "auto" else [
        options.isolation
    ]
    for mode in candidates:
        if mode == "bwrap" and shutil.which("bwrap"):
            if os.uname().machine not in _SYSCALLS:
                logger.warning("sandbox: bubblewrap is not used: no user-namespace filter for %s in _SYSCALLS",
                               os.uname().machine)
            elif bwrap_mounts_proc(options) or _bwrap_probe(options, proc=False):
                return mode
        elif mode == "unshare" and shutil.which("unshare"):
            if _probe(unshare_argv() + _probe_uid(options) + python_cmd):
                return mode
        elif mode == "rlimits":
            if not _probe(_probe_uid(options) + python_cmd):
                raise SandboxUnavailable(f"the sandbox uid {options.uid_base} cannot run {options.python}")
            logger.warning(
                "sandbox: neither bubblewrap nor unshare works here; sandboxed code runs with rlimits only, "
                "WITH network access and a view of the whole filesystem. Install bubblewrap."
            )
            return mode
    raise SandboxUnavailable(f"sandbox isolation {options.isolation!r} does not work on this machine")


# How much of the worker each level keeps out of reach of the code it runs.
_REQUIRED = {"rlimits": 0, "unshare": 2, "bwrap": 3}


def strength(mode: Isolation) -> int:
    """3 bwrap: its own filesystem view, processes and network. 2 unshare with a uid of its own (the service is
    root): its own processes and network, file permissions keep it out of the worker's files but not out of the
    host's world-readable files, unix sockets, /tmp and /dev/shm. 1 unshare as the worker's own uid: it can read and
    change the worker's files. 0 rlimits: the worker's network, files, processes."""
    if mode == "bwrap":
        return 3
    if mode == "unshare":
        return 2 if is_root() else 1
    return 0


def describe(mode: Isolation) -> str:
    return {
        3: "bubblewrap",
        2: "unshare with a uid of its own (the code could read the host's world-readable files, use its unix sockets "
           "and leave files in its /tmp and /dev/shm)",
        1: "unshare as the worker's own user (the code could read and change the worker's files)",
        0: "rlimits only (the code would run as the worker's user with its network, files and processes in reach)",
    }[strength(mode)]


def _why_not_bwrap(options: SandboxSettings) -> str:
    """What the refusal message says about bubblewrap: what the operator can change."""
    if options.isolation != "auto":
        return f"SDPO_SANDBOX_ISOLATION={options.isolation} chose it"
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed: install it (the `bubblewrap` package)"
    return "bubblewrap is installed but failed its probe (logged): as a non-root user it needs user namespaces"


def checked_isolation(options: SandboxSettings) -> Isolation:
    """The isolation to use, if it meets `options.min_isolation`; otherwise SandboxRefused, with a log line."""
    mode = choose_isolation(options)
    if strength(mode) < _REQUIRED[options.min_isolation]:
        message = (
            f"code-running verifiers are refused on this worker: the best sandbox here is {describe(mode)}, below "
            f"SDPO_SANDBOX_MIN_ISOLATION={options.min_isolation}. {_why_not_bwrap(options)} (docs/deploy.md, "
            "'Verifier sandbox'). "
            "Weaker isolation only by choice: SDPO_SANDBOX_MIN_ISOLATION=unshare accepts unshare with a uid of its "
            "own (the service as root), and on a machine with a single user SDPO_SANDBOX_MIN_ISOLATION=rlimits "
            "accepts rlimits alone"
        )
        logger.error("sandbox: %s", message)
        raise SandboxRefused(message)
    if strength(mode) < _REQUIRED["bwrap"]:
        logger.warning("sandbox: untrusted code runs with %s, as SDPO_SANDBOX_MIN_ISOLATION=%s allows", describe(mode),
                       options.min_isolation)
    return mode
