"""What a worker process does to itself so that code it runs or verifies cannot read its secrets.

PR_SET_DUMPABLE=0 makes /proc/<pid>/{environ,mem,maps,fd,...} owned by root and closes ptrace to every process of
the same uid: the Redis URL with its password, storage keys and the checkpoint key in the worker's environment and
memory stay out of reach of anything running as the worker's user (a sandbox that could only drop to that uid, or
code run under the single-user opt-in). The flag is reset by execve, so every process of ours sets it for itself:
the worker, and each verifier pool process. Sandboxed programs get a scrubbed environment of their own.
One process of ours runs no code of ours first: multiprocessing's resource tracker, a python started by the verifier
pool's first process that inherits the environment and stays dumpable. The worker starts it itself, before anything
else, with only what python needs (`start_resource_tracker_without_secrets`).
"""

from __future__ import annotations

import ctypes
import logging
import os

logger = logging.getLogger(__name__)
PR_SET_DUMPABLE, PR_GET_DUMPABLE = 4, 3


def make_undumpable() -> bool:
    """Mark this process undumpable; False (and a warning) where the C library has no prctl."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 or libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
    except (OSError, AttributeError) as exc:
        logger.warning("could not make this process undumpable (%s): processes of its uid may read its secrets",
                       exc)
        return False
    return True


# What the resource tracker (a bare python) needs of the environment; everything else, secrets included, stays out.
TRACKER_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")


def start_resource_tracker_without_secrets() -> None:
    """Start multiprocessing's resource tracker now, its environment cut to TRACKER_ENVIRONMENT; every process the
    verifier pool spawns later shares this one. Call it before any thread starts (it swaps os.environ briefly)."""
    from multiprocessing import resource_tracker

    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update({name: saved[name] for name in TRACKER_ENVIRONMENT if name in saved})
        resource_tracker.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(saved)
