"""The judge of a `python` verifier run: one call of the user's `verify(completion)` in a child process.

Reads {"nonce", "function", "args", "timeout_s"} on stdin; the user's verifier is verifier.py. The verifier runs
in a child, so that even a verifier that executes the model's text cannot reach the nonce or the result channel;
what it returns crosses as plain data and is judged outside the sandbox.

Inside the sandbox plain.py and child.py come before this file: standard library only.
"""

import json
import sys
import time

if __name__ != "__main__":  # imported as a module; inside the sandbox the helpers' source comes before this file
    from sdpo_core.verifiers.harness.child import Child, make_undumpable, send_result, take_result_channel


def call_once(payload, child):
    loaded = child.loaded()
    if "load_error" in loaded:
        return {"status": "load_error", "error": loaded["load_error"]}
    if "ok" not in loaded:
        return {"status": loaded.get("failure", "protocol"), "exit_code": loaded.get("exit_code")}
    reply = child.call(payload["function"], payload["args"], {})
    if "value" in reply:
        return {"status": "returned", "value": reply["value"]}
    if "error" in reply:
        return {"status": "raised", "error": reply["error"]}
    if "not_plain" in reply:
        return {"status": "not_plain", "message": reply["not_plain"]}
    return {"status": reply.get("failure", "protocol"), "message": reply.get("message", ""),
            "exit_code": reply.get("exit_code")}


def main():
    result_fd = take_result_channel()
    make_undumpable()
    payload = json.loads(sys.stdin.read())
    child = Child("verifier.py", time.monotonic() + float(payload["timeout_s"]))
    try:
        outcome = call_once(payload, child)
    finally:
        child.close()
    send_result(result_fd, {"nonce": payload["nonce"], **outcome})


if __name__ == "__main__":
    main()
