"""The one way to open Redis, and the errors the rest of the code may catch without importing redis.

A pooled connection is taken for one command (or one script, or one pipeline) and given back at once; nothing in
the service holds one while it waits (the event hub reads every open stream on a connection of its own). The pool
is blocking: when all its connections are busy a request waits up to `pool_timeout_s` for one rather than failing.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as _ConnectionError
from redis.exceptions import OutOfMemoryError
from redis.exceptions import TimeoutError as _TimeoutError

# Redis is unreachable for now (a restart, a failover, an AOF replay): worth retrying.
STORE_UNAVAILABLE: tuple[type[Exception], ...] = (_ConnectionError, _TimeoutError)
# Redis reached its maxmemory and refuses writes (policy noeviction): the service answers 503, nothing is dropped.
StoreFull = OutOfMemoryError


def connect(url: str, *, max_connections: int = 64, pool_timeout_s: float = 10.0) -> Redis:
    """A client whose pool holds at most `max_connections`; a request waits for a free one."""
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=pool_timeout_s,
                                           decode_responses=True)  # the store keeps text only
    return Redis.from_pool(pool)  # closing the client closes its pool


def connect_single(url: str) -> Redis:
    """A client with one connection of its own, for a reader that blocks (XREAD BLOCK) outside the shared pool."""
    return connect(url, max_connections=1, pool_timeout_s=30.0)
