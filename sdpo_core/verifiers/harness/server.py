"""The side of a sandboxed run that holds the code under test: load it, then serve calls of its functions.

Runs in its own interpreter, started by the judge (child.py) with two pipe fds and the source file. It answers
each call with the return value as plain data, or with the error the code raised; a return value that is not
plain built-in data is refused here, before any comparison. Nothing it sends is trusted beyond that.

Inside the sandbox plain.py's source comes before this file: standard library only.
"""

import json
import os
import sys
import traceback
import types

if __name__ != "__main__":  # imported as a module; inside the sandbox plain.py's source comes before this file
    from sdpo_core.verifiers.harness.plain import NotPlainData, decode_plain, encode_plain

MAX_MESSAGE_CHARS = 2000


def describe_error(exc, source_file):
    """Type, message and the traceback frames inside the code under test (not this server's)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == source_file]
    trace = "".join(traceback.format_list(frames[-6:]))
    if isinstance(exc, SyntaxError) and exc.text:
        trace = f'  File "{exc.filename}", line {exc.lineno}\n    {exc.text.strip()}\n'
    try:
        message = str(exc)[:MAX_MESSAGE_CHARS]
    except Exception:  # noqa: BLE001 - a hostile __str__
        message = "<unprintable>"
    return {"type": type(exc).__name__, "message": message, "trace": trace}


def load(source_file):
    module = types.ModuleType("solution")
    module.__file__ = source_file
    sys.modules["solution"] = module
    with open(source_file) as handle:
        code = compile(handle.read(), source_file, "exec")
    exec(code, module.__dict__)
    return module


def serve(module, requests, replies, source_file):
    for line in requests:
        request = json.loads(line)
        function = getattr(module, request["fn"], None)
        if not callable(function):
            reply = {"error": {"type": "NameError", "message": f"your code does not define {request['fn']}()",
                               "trace": ""}}
        else:
            try:
                value = function(*decode_plain(request["args"]), **decode_plain(request["kwargs"]))
                reply = {"value": encode_plain(value)}
            except NotPlainData as exc:
                reply = {"not_plain": str(exc)}
            except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are answers too
                reply = {"error": describe_error(exc, source_file)}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main():
    request_fd, reply_fd, source_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    requests = os.fdopen(request_fd, "r")
    replies = os.fdopen(reply_fd, "w")
    try:
        module = load(source_file)
    except BaseException as exc:  # noqa: BLE001 - a SyntaxError or an exit() while loading is reported, not raised
        replies.write(json.dumps({"load_error": describe_error(exc, source_file)}) + "\n")
        replies.flush()
        return
    replies.write(json.dumps({"ok": True}) + "\n")
    replies.flush()
    serve(module, requests, replies, source_file)


if __name__ == "__main__":
    main()
