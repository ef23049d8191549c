"""Plain built-in data <-> JSON, for values that cross from the code under test to the code that judges it.

Only exact built-in types cross (a subclass of int with its own __eq__ does not), so an object that claims to equal
everything cannot reach a comparison; decoding builds fresh built-ins and nothing else, so nothing the code under
test sends can run code on the judging side. Scalars travel as JSON scalars; every container is a JSON array whose
first item names its type, e.g. ["tuple", 1, 2] or ["dict", [key, value], ...].

This file is also prepended to the scripts that run in the sandbox, so it uses the standard library only and no
`from __future__` import.
"""

import base64
import json

MAX_DEPTH = 64
MAX_ITEMS = 1_000_000
_SCALARS = (type(None), bool, int, float, str)


class NotPlainData(TypeError):
    """A value that is not made of built-in data (or is too deep or too big to send)."""


def encode_plain(value):
    """`value` as a JSON string; raises NotPlainData for anything but exact built-in data."""
    counter = [0]
    try:
        return json.dumps(_to_json(value, 0, counter), allow_nan=True, separators=(",", ":"))
    except ValueError as exc:  # e.g. an int with more digits than Python will print
        raise NotPlainData(str(exc)) from None


def decode_plain(text):
    """The value that `encode_plain` wrote; raises NotPlainData for anything else."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise NotPlainData(f"not valid JSON: {exc}") from None
    return _from_json(data, 0)


def _to_json(value, depth, counter):
    counter[0] += 1
    if counter[0] > MAX_ITEMS:
        raise NotPlainData(f"more than {MAX_ITEMS} items")
    if depth > MAX_DEPTH:
        raise NotPlainData(f"nested deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is list or kind is tuple or kind is set or kind is frozenset:
        return [kind.__name__, *(_to_json(item, depth + 1, counter) for item in value)]
    if kind is dict:
        return ["dict", *([_to_json(k, depth + 1, counter), _to_json(v, depth + 1, counter)] for k, v in value.items())]
    if kind is bytes:
        return ["bytes", base64.b64encode(value).decode("ascii")]
    if kind is complex:
        return ["complex", value.real, value.imag]
    raise NotPlainData(
        f"a value of type {kind.__module__}.{kind.__qualname__}; only built-in data "
        "(None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset) can be checked"
    )


_CONTAINERS = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


def _from_json(data, depth):
    if depth > MAX_DEPTH:
        raise NotPlainData(f"nested deeper than {MAX_DEPTH} levels")
    if type(data) in _SCALARS:
        return data
    if type(data) is not list or not data or type(data[0]) is not str:
        raise NotPlainData("malformed plain data")
    tag, items = data[0], data[1:]
    try:
        if tag in _CONTAINERS:
            return _CONTAINERS[tag](_from_json(item, depth + 1) for item in items)
        if tag == "dict":
            return {_from_json(k, depth + 1): _from_json(v, depth + 1) for k, v in items}
        if tag == "bytes":
            return base64.b64decode(items[0], validate=True)
        if tag == "complex":
            return complex(float(items[0]), float(items[1]))
    except (TypeError, ValueError, IndexError) as exc:
        raise NotPlainData(f"malformed {tag}: {exc}") from None
    raise NotPlainData(f"unknown type tag {tag!r}")
