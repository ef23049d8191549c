"""The hostile suite as the shipped containers run it: started (by test_sandbox_as_deployed.py) as the unprivileged
user 10001, this process plays the worker (undumpable, a secret in its environment) and sends hostile programs
through the real verifier pool, among them the escapes of sandbox_helpers.escape_attacks against the bait in
BAIT_DIR. It prints one JSON report, then lets a last program try to kill every process of its user and prints
"worker alive" if it is still there.

    python hostile_as_deployed.py CHECKPOINT_DIR LISTENER_PORT BAIT_DIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sandbox_helpers import SUM_SOLUTION, Bait, block, escape_attacks, sum_problem  # noqa: E402

from sdpo_core.verification.hardening import make_undumpable, start_resource_tracker_without_secrets  # noqa: E402
from sdpo_core.verification.isolation import bwrap_mounts_proc  # noqa: E402
from sdpo_core.verification.pool import VerifierPool  # noqa: E402
from sdpo_core.verification.settings import SandboxSettings  # noqa: E402
from sdpo_core.verification.verify import verify_function  # noqa: E402

SECRET_ENV = "SDPO_TEST_SERVICE_SECRET"


def programs(checkpoints: str, port: int, bait: Bait) -> dict[str, str]:
    """Each prints the sum (and so solves) only if its attack failed; otherwise it prints what it got."""
    return {
        "reads the worker's secrets": (
            "import glob\nfound = []\nfor path in glob.glob('/proc/*/environ'):\n    try:\n"
            f"        found += [path] if b'{os.environ[SECRET_ENV]}' in open(path, 'rb').read() else []\n"
            "    except OSError:\n        pass\nif found:\n    print('LEAKED', found)\n"
        ),
        "writes the checkpoint volume": (
            f"try:\n    open({checkpoints + '/runs.pt'!r}, 'w').write('x')\n    print('WROTE')\n"
            "except OSError:\n    pass\n"
        ),
        "connects to the host": (
            f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    print('CONNECTED')\nexcept OSError:\n    pass\n"
        ),
        "leaves a process behind": (
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(3)\n"
            f"        open({checkpoints + '/survivor'!r}, 'w').write('x')\n    os._exit(0)\n"
        ),
        **escape_attacks(bait),
    }


def environ_readable(pid: int) -> bool:
    """Whether another process of this user can read /proc/<pid>/environ."""
    probe = subprocess.run([sys.executable, "-c", f"open('/proc/{pid}/environ', 'rb').read()"], capture_output=True)
    return probe.returncode == 0


def tracker_holds_secret() -> bool:
    """Whether multiprocessing's resource tracker (dumpable: it runs no code of ours) has the secret in its
    environment, where any process of this user could read it."""
    from multiprocessing import resource_tracker

    pid = resource_tracker._resource_tracker._pid
    return pid is not None and os.environ[SECRET_ENV].encode() in Path(f"/proc/{pid}/environ").read_bytes()


def main() -> None:
    checkpoints, port, bait = sys.argv[1], int(sys.argv[2]), Bait(Path(sys.argv[3]))
    make_undumpable()  # as Worker.run does
    start_resource_tracker_without_secrets()
    report: dict[str, object] = {"uid": os.getuid(), "proc mounted": bwrap_mounts_proc(SandboxSettings())}
    try:
        verify_function(sum_problem())
        report["job"] = "accepted"
    except Exception as exc:  # noqa: BLE001 - reported
        report["job"] = f"{type(exc).__name__}: {exc}"
    with VerifierPool(max_workers=1) as pool:
        for name, attack in programs(checkpoints, port, bait).items():
            verdict = pool.verify_batch(sum_problem(), [block(attack + SUM_SOLUTION)])[0]
            report[name] = {"solved": verdict.solved, "feedback": verdict.feedback}
        pool_pid = pool.process_ids()[0]  # the pool's process, to probe its /proc
        report["environ readable"] = {"worker": environ_readable(os.getpid()), "pool": environ_readable(pool_pid)}
        report["tracker holds the secret"] = tracker_holds_secret()
        print(json.dumps(report), flush=True)
        pool.verify_batch(sum_problem(), [block("import os, signal\nos.kill(-1, signal.SIGKILL)")])
    print("worker alive", flush=True)


if __name__ == "__main__":
    main()
