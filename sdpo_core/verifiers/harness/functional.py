"""The judge of a `code_functional` run: HumanEval-style assert tests against a function that runs in a child.

Reads {"nonce", "test", "entry_point", "timeout_s"} on stdin; the code under test is solution.py. The test code
runs here and calls `candidate`, a proxy that sends the arguments to the child and gets back plain data, so every
comparison is between fresh built-ins in a process the code under test never ran in: returning an object that
equals everything, exiting early or patching `AssertionError` cannot pass a test. The outcome goes, with the nonce,
to the result channel; the test code and the expected values never reach the child.

Inside the sandbox plain.py and child.py come before this file: standard library only.
"""

import builtins
import json
import sys
import time

if __name__ != "__main__":  # imported as a module; inside the sandbox the helpers' source comes before this file
    from sdpo_core.verifiers.harness.child import Child, make_undumpable, send_result, take_result_channel
    from sdpo_core.verifiers.harness.plain import NotPlainData, decode_plain

REPR_CHARS = 400
_NOT_REBUILT = (SystemExit, KeyboardInterrupt, GeneratorExit, StopIteration, StopAsyncIteration)


class Stop(BaseException):
    """Ends the test run early; a BaseException so that test code cannot swallow it."""

    def __init__(self, outcome):
        super().__init__(outcome.get("status"))
        self.outcome = outcome


def short_repr(value):
    text = repr(value)
    return text if len(text) <= REPR_CHARS else text[:REPR_CHARS] + "..."


def format_call(name, args, kwargs):
    parts = [short_repr(a) for a in args] + [f"{k}={short_repr(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"[:REPR_CHARS]


def rebuilt_exception(error):
    """The child's exception as a built-in one here, so tests that expect e.g. ValueError still work."""
    kind = getattr(builtins, str(error.get("type", "")), None)
    if isinstance(kind, type) and issubclass(kind, Exception) and not issubclass(kind, _NOT_REBUILT):
        try:
            return kind(error.get("message", ""))
        except Exception:  # noqa: BLE001 - exceptions with unusual constructors
            pass
    return RuntimeError(error.get("message", ""))


def failure_outcome(reply):
    return {"status": reply.get("failure", "protocol"), "message": reply.get("message", ""),
            "exit_code": reply.get("exit_code")}


def make_candidate(child, entry_point, last):
    """The proxy the tests call in place of the function under test."""

    def candidate(*args, **kwargs):
        last.clear()
        last["call"] = format_call(entry_point, args, kwargs)
        reply = child.call(entry_point, args, kwargs)
        if "value" in reply:
            try:
                value = decode_plain(reply["value"])
            except NotPlainData as exc:
                raise Stop({"status": "protocol", "message": str(exc), **last}) from None
            last["returned"] = short_repr(value)
            return value
        if "error" in reply:
            last["error"] = reply["error"]
            if reply["error"].get("type") in ("SystemExit", "KeyboardInterrupt"):
                raise Stop({"status": "exited", **last})
            raise rebuilt_exception(reply["error"])
        if "not_plain" in reply:
            raise Stop({"status": "not_plain", "message": reply["not_plain"], **last})
        raise Stop({**failure_outcome(reply), **last})

    return candidate


def run_tests(payload, child):
    loaded = child.loaded()
    if "load_error" in loaded:
        return {"status": "load_error", "error": loaded["load_error"]}
    if "ok" not in loaded:
        return failure_outcome(loaded)
    last = {}
    entry_point = payload["entry_point"]
    candidate = make_candidate(child, entry_point, last)
    namespace = {"__name__": "__check__", entry_point: candidate}
    try:
        exec(compile(payload["test"], "<test>", "exec"), namespace)
        check = namespace.get("check")
        if callable(check):
            check(candidate)
    except Stop as stop:
        return stop.outcome
    except AssertionError:
        return {"status": "runtime_error" if "error" in last else "wrong_answer", **last}
    except Exception as exc:  # noqa: BLE001 - the test code failed on what the function returned
        if "error" in last:
            return {"status": "runtime_error", **last}
        status = "wrong_answer" if "call" in last else "test_error"
        return {"status": status, "message": f"{type(exc).__name__}: {exc}"[:REPR_CHARS], **last}
    return {"status": "passed"}


def main():
    result_fd = take_result_channel()
    make_undumpable()
    payload = json.loads(sys.stdin.read())
    child = Child("solution.py", time.monotonic() + float(payload["timeout_s"]))
    try:
        outcome = run_tests(payload, child)
    finally:
        child.close()
    send_result(result_fd, {"nonce": payload["nonce"], **outcome})


if __name__ == "__main__":
    main()
