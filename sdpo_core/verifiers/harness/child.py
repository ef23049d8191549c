"""The judging side of a sandboxed run: starts the code under test in a child process and calls into it.

The judge (this process) holds the run's nonce and the result channel; the child gets neither: it is a fresh
interpreter (not a fork, so none of the judge's memory), started without the result channel, and the judge makes
itself undumpable so that the child, which runs as the same uid, cannot read the judge's memory or file
descriptors through /proc. Calls and answers cross as lines of JSON with plain data only (plain.py).

Prepended to the judge scripts inside the sandbox after plain.py: standard library only.
"""

import json
import os
import select
import subprocess
import sys
import time

if __name__ != "__main__":  # imported as a module; inside the sandbox plain.py's source comes before this file
    from sdpo_core.verifiers.harness.plain import encode_plain

MAX_REPLY_BYTES = 16_000_000
SERVER_FILE = "_server.py"


def make_undumpable():
    """PR_SET_DUMPABLE=0: /proc/<judge>/{mem,fd,environ} and ptrace are closed to the child."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort on exotic libcs; the child still has no nonce or channel
        pass


def take_result_channel():
    """The result channel's fd, removed from the environment before any child starts."""
    return int(os.environ.pop("SDPO_RESULT_FD"))


def send_result(fd, payload):
    data = json.dumps(payload, allow_nan=True).encode()
    while data:
        data = data[os.write(fd, data):]
    os.close(fd)


class Child:
    """The code under test in its own interpreter, serving calls of its functions."""

    def __init__(self, source_file, deadline):
        self.deadline = deadline
        req_r, self._req_w = os.pipe()
        self._resp_r, resp_w = os.pipe()
        self._buffer = b""
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-B", SERVER_FILE, str(req_r), str(resp_w), source_file],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(req_r, resp_w), env={"PATH": os.environ.get("PATH", "/usr/bin"), "LC_ALL": "C.UTF-8"},
        )
        os.close(req_r)
        os.close(resp_w)
        os.set_blocking(self._req_w, False)

    def loaded(self):
        """The child's report on loading the code: {"ok": true} or a failure (see `reply`)."""
        return self.reply()

    def call(self, function, args, kwargs):
        """Call `function(*args, **kwargs)` in the child; the reply (see `reply`)."""
        try:
            request = json.dumps({"fn": function, "args": encode_plain(list(args)), "kwargs": encode_plain(kwargs)})
        except TypeError as exc:  # NotPlainData is a TypeError
            return {"failure": "test_error", "message": f"the test passed arguments that cannot be sent: {exc}"}
        if not self._write(request.encode() + b"\n"):
            return self._gone()
        return self.reply()

    def reply(self):
        """The next line from the child as a dict, or {"failure": ...}: time_limit, exited or protocol."""
        while b"\n" not in self._buffer:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return {"failure": "time_limit"}
            ready, _, _ = select.select([self._resp_r], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self._resp_r, 1 << 20)
            if not chunk:
                return self._gone()
            self._buffer += chunk
            if len(self._buffer) > MAX_REPLY_BYTES:
                return {"failure": "protocol", "message": "the reply was too large"}
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            return {"failure": "protocol", "message": "the reply was not valid JSON"}
        if type(message) is not dict:
            return {"failure": "protocol", "message": "the reply was not a JSON object"}
        return message

    def _write(self, data):
        while data:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return False
            _, ready, _ = select.select([], [self._req_w], [], remaining)
            if ready:
                try:
                    data = data[os.write(self._req_w, data):]
                except (BrokenPipeError, BlockingIOError):
                    return False
        return True

    def _gone(self):
        if time.monotonic() >= self.deadline:
            return {"failure": "time_limit"}
        try:
            code = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return {"failure": "protocol", "message": "the process closed its channel"}
        return {"failure": "exited", "exit_code": code}

    def close(self):
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
