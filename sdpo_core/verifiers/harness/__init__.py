"""Scripts that run inside the sandbox, assembled from the files of this package.

Each script is the concatenation of standard-library-only files (the plain-data codec first), so that nothing
from sdpo_core has to be importable inside the sandbox and the interpreter starts fast.
"""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def _source(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()


@functools.cache
def judge_script(name: str) -> str:
    """The judge (holds the nonce and the result channel): 'functional.py' or 'call_once.py'."""
    return "\n\n".join(_source(part) for part in ("plain.py", "child.py", name))


@functools.cache
def server_script() -> str:
    """The child that loads the code under test and serves calls; written to the run directory as _server.py."""
    return "\n\n".join(_source(part) for part in ("plain.py", "server.py"))
