"""The sandbox itself: isolation, limits, capture and the result channel, on real subprocesses."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time

import pytest
from sandbox_helpers import wait_until_no_sandbox_processes

from sdpo_core.verification.isolation import SandboxRefused, choose_isolation
from sdpo_core.verification.settings import SandboxSettings
from sdpo_core.verification.subprocess_sandbox import SubprocessSandbox
from sdpo_core.verifiers.sandbox import RunLimits

pytestmark = pytest.mark.sandbox  # the test tier (tests/conftest.py): it runs processes


def test_runs_a_script_with_stdin_and_files(sandbox):
    """The script sees its stdin and the files it was given, in its own directory."""
    run = sandbox.run_python(
        "import sys\nprint(sys.stdin.read().upper(), open('data.txt').read())", stdin="hello", files={"data.txt": "42"}
    )
    assert run.ok and run.exit_code == 0
    assert run.stdout == "HELLO 42\n"
    assert not run.timed_out and run.signal is None


def test_bubblewrap_isolation_is_used_where_installed(sandbox):
    """setup.sh installs bubblewrap, so the full isolation must be active here (not a silent fallback)."""
    assert shutil.which("bwrap")
    assert sandbox.isolation == "bwrap"


def test_result_channel_carries_data_apart_from_stdout(sandbox):
    run = sandbox.run_python(
        "import os\nprint('to stdout')\nos.write(int(os.environ['SDPO_RESULT_FD']), b'{\"verdict\": 1}')"
    )
    assert run.result == '{"verdict": 1}'
    assert run.stdout == "to stdout\n"


def test_no_result_means_none(sandbox):
    assert sandbox.run_python("print('nothing on the channel')").result is None


def test_each_run_gets_a_fresh_directory(sandbox):
    first = sandbox.run_python("import os\nopen('left.txt', 'w').write('x')\nprint(os.getcwd())")
    second = sandbox.run_python("import os\nprint(sorted(os.listdir('.')))")
    assert first.ok and second.ok
    assert second.stdout.strip() == "['main.py']"


def test_runs_as_an_unprivileged_uid_without_capabilities(sandbox):
    run = sandbox.run_python(
        "import os\nprint(os.getuid(), os.geteuid(), os.getgroups())\n"
        "print([l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1])"
    )
    uid_line, caps = run.stdout.split("\n")[:2]
    if os.geteuid() == 0:
        uid, euid, groups = uid_line.split(" ", 2)
        assert int(uid) != 0 and int(euid) != 0 and groups == "[]"
    assert int(caps, 16) == 0


def test_environment_is_scrubbed(sandbox, monkeypatch):
    monkeypatch.setenv("SDPO_TEST_SERVICE_TOKEN", "token-that-must-not-leak")
    run = sandbox.run_python("import os\nprint(sorted(os.environ))")
    assert "SDPO_TEST_SERVICE_TOKEN" not in run.stdout
    assert "token-that-must-not-leak" not in run.stdout


def test_rlimits_are_in_place(sandbox):
    """Core dumps off; file size, open files, memory and processes capped as asked."""
    limits = RunLimits(memory_mb=300, max_file_mb=2, max_open_files=20, max_processes=10)
    run = sandbox.run_python(
        "import resource as r\nfor n in ('CORE', 'FSIZE', 'NOFILE', 'AS', 'NPROC'):\n"
        "    print(n, r.getrlimit(getattr(r, 'RLIMIT_' + n))[0])",
        limits=limits,
    )
    found = dict(line.split() for line in run.stdout.strip().split("\n"))
    assert found == {"CORE": "0", "FSIZE": str(2 << 20), "NOFILE": "20", "AS": str(300 << 20), "NPROC": "10"}


def test_file_size_limit_stops_big_writes(sandbox):
    run = sandbox.run_python("open('big', 'wb').write(b'x' * (5 << 20))", limits=RunLimits(max_file_mb=1))
    assert run.exit_code != 0
    assert "File too large" in run.stderr


def test_wall_clock_kills_the_whole_group(sandbox):
    """A sleeping script and the child it started are both gone after the wall clock."""
    started = time.monotonic()
    run = sandbox.run_python(
        "import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "time.sleep(60)",
        limits=RunLimits(wall_s=1.0),
    )
    assert run.timed_out and run.signal == signal.SIGKILL
    assert "wall-clock limit" in run.describe()
    assert time.monotonic() - started < 15
    assert wait_until_no_sandbox_processes() == []


def test_leftover_background_child_does_not_hold_the_run(sandbox):
    """The main process exits; a daemonised child holding stdout must not keep the run alive."""
    started = time.monotonic()
    run = sandbox.run_python(
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('parent done')",
        limits=RunLimits(wall_s=20.0),
    )
    assert run.stdout == "parent done\n" and not run.timed_out
    assert time.monotonic() - started < 10
    assert wait_until_no_sandbox_processes() == []


def test_cpu_limit_sends_sigxcpu(sandbox):
    run = sandbox.run_python("while True:\n    pass", limits=RunLimits(wall_s=20.0, cpu_s=1.0))
    assert run.cpu_limited and run.signal == signal.SIGXCPU
    assert "CPU-time limit" in run.describe()


def test_output_is_capped(sandbox):
    run = sandbox.run_python("print('y' * 50_000)", limits=RunLimits(max_output_bytes=1000))
    assert run.output_truncated and len(run.stdout) == 1000
    assert "more than 1000 bytes" in run.describe()


def test_result_channel_is_capped(sandbox):
    run = sandbox.run_python(
        "import os\nos.write(int(os.environ['SDPO_RESULT_FD']), b'z' * 5000)", limits=RunLimits(max_result_bytes=100)
    )
    assert run.result is None
    assert any("result channel" in note for note in run.notes)


def test_without_bubblewrap_the_default_minimum_refuses_code_and_says_what_to_do(monkeypatch, tmp_path):
    """The default minimum is bwrap (issue 17, item 4): `unshare` leaves the host's world-readable files, unix
    sockets, /tmp and /dev/shm in reach. On a machine without bubblewrap nothing runs, and the message says to
    install it and which settings accept less."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("prlimit", "setpriv", "unshare"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("SDPO_SANDBOX_MIN_ISOLATION", raising=False)
    monkeypatch.setenv("SDPO_SANDBOX_PYTHON", "/usr/bin/python3")  # one the leased uid may run (the unshare level)
    options = SandboxSettings()
    assert options.min_isolation == SandboxSettings.model_fields["min_isolation"].default == "bwrap"
    choose_isolation.cache_clear()
    try:
        with pytest.raises(SandboxRefused) as refused:
            SubprocessSandbox(options)
    finally:
        choose_isolation.cache_clear()  # the probes above saw a PATH without bwrap
    message = str(refused.value)
    assert "below SDPO_SANDBOX_MIN_ISOLATION=bwrap" in message
    assert "bubblewrap is not installed: install it (the `bubblewrap` package)" in message
    assert "SDPO_SANDBOX_MIN_ISOLATION=unshare" in message and "SDPO_SANDBOX_MIN_ISOLATION=rlimits" in message


def test_unshare_runs_only_when_accepted_and_isolates_the_network(caplog):
    """Where bubblewrap is missing and the operator accepts less (SDPO_SANDBOX_MIN_ISOLATION=unshare), util-linux
    unshare still gives no network and contains processes, with a warning.

    The system interpreter is used because the project's may sit under a directory the sandbox uid cannot enter.
    """
    if not os.path.exists("/usr/bin/python3"):
        pytest.fail("the test machine has no /usr/bin/python3")
    with pytest.raises(SandboxRefused, match="SDPO_SANDBOX_ISOLATION=unshare chose it"):
        SubprocessSandbox(SandboxSettings(isolation="unshare", python="/usr/bin/python3"))
    if os.geteuid() != 0:  # as the worker's own user unshare is below even that minimum
        with pytest.raises(SandboxRefused, match="as the worker's own user"):
            SubprocessSandbox(SandboxSettings(isolation="unshare", min_isolation="unshare", python="/usr/bin/python3"))
        return
    with caplog.at_level(logging.WARNING, logger="sdpo_core.verification.isolation"):
        fallback = SubprocessSandbox(SandboxSettings(isolation="unshare", min_isolation="unshare",
                                                    python="/usr/bin/python3"))
    assert fallback.isolation == "unshare"
    assert any("as SDPO_SANDBOX_MIN_ISOLATION=unshare allows" in record.getMessage() for record in caplog.records)
    run = fallback.run_python(
        "import socket\ns = socket.socket()\ns.settimeout(2)\nprint(s.connect_ex(('127.0.0.1', 9)))\n"
        "print(sorted(name for _, name in socket.if_nameindex()))"
    )
    assert run.exit_code == 0, run.stderr
    code, interfaces = run.stdout.strip().split("\n")
    assert int(code) != 0
    assert interfaces == "['lo']"


def test_rlimits_fallback_warns_and_still_cleans_up(caplog):
    """Without namespaces the network is open (a logged warning), but limits, the uid drop and cleanup remain.
    It runs only when the operator accepts it (SDPO_SANDBOX_MIN_ISOLATION=rlimits); otherwise it is refused."""
    choose_isolation.cache_clear()
    with pytest.raises(SandboxRefused, match="SDPO_SANDBOX_MIN_ISOLATION=rlimits"):
        SubprocessSandbox(SandboxSettings(isolation="rlimits", python="/usr/bin/python3"))
    with caplog.at_level(logging.WARNING, logger="sdpo_core.verification.isolation"):
        fallback = SubprocessSandbox(SandboxSettings(isolation="rlimits", min_isolation="rlimits",
                                                    python="/usr/bin/python3"))
    assert fallback.isolation == "rlimits"
    assert any("WITH network access" in record.getMessage() for record in caplog.records)
    run = fallback.run_python(
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
        "import resource\nprint(os.getuid() != 0, resource.getrlimit(resource.RLIMIT_NPROC)[0])",
        limits=RunLimits(max_processes=12),
    )
    assert run.exit_code == 0, run.stderr
    if os.geteuid() == 0:  # as root the run drops to a leased uid, where RLIMIT_NPROC holds
        assert run.stdout.split() == ["True", "12"]
    assert wait_until_no_sandbox_processes() == []


def test_stale_run_directories_of_killed_workers_are_swept(tmp_path):
    stale, fresh = tmp_path / "sdpo-run-stale", tmp_path / "sdpo-run-fresh"
    stale.mkdir()
    fresh.mkdir()
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    SubprocessSandbox(SandboxSettings(tmp_dir=str(tmp_path)))
    assert not stale.exists() and fresh.exists()


def test_an_interpreter_under_tmp_is_visible_inside_the_sandbox(tmp_path):
    """A checkout (and its venv) under /tmp must survive the sandbox's private /tmp (CI may clone there)."""
    import subprocess
    import sys

    from sdpo_core.verification.settings import SandboxSettings
    from sdpo_core.verification.subprocess_sandbox import SubprocessSandbox

    assert str(tmp_path).startswith("/tmp/")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    sandbox = SubprocessSandbox(SandboxSettings(python=str(venv / "bin" / "python")))
    assert sandbox.isolation == "bwrap"
    result = sandbox.run_python("import sys; print(sys.prefix)")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(venv)
