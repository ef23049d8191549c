"""Shared fixtures: a real sandbox and a real verifier pool (subprocesses, no mocks)."""

from __future__ import annotations

import pytest

from workers.pool import VerifierPool
from workers.sandbox import SubprocessSandbox


@pytest.fixture(scope="session")
def sandbox() -> SubprocessSandbox:
    return SubprocessSandbox()


@pytest.fixture(scope="session")
def pool():
    with VerifierPool(max_workers=2) as verifier_pool:
        yield verifier_pool
