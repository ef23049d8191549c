"""What a worker process does to itself so that code it runs or verifies cannot read its secrets.

PR_SET_DUMPABLE=0 makes /proc/<pid>/{environ,mem,maps,fd,...} owned by root and closes ptrace to every process of
the same uid: the Redis URL with its password, storage keys and the checkpoint key in the worker's environment and
memory stay out of reach of anything running as the worker's user (a sandbox that could only drop to that uid, or
code run under the single-user opt-in). The flag is reset by execve, so every process of ours sets it for itself:
the worker, and each verifier pool process. Sandboxed programs get a scrubbed environment of their own.
"""

from __future__ import annotations

import ctypes
import logging

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
