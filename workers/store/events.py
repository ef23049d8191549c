"""One reader per API process for every open event stream, so that open streams hold no pooled connection.

An SSE stream used to wait in `XREAD BLOCK` on a connection of the shared pool: a hundred open streams took every
connection, and authentication, /readyz and job reads then failed. Now each stream reads its events with a quick,
non-blocking XRANGE and waits on an asyncio.Event; the hub alone blocks in Redis, in one XREAD over all watched
streams, on a connection of its own, and wakes the subscribers of each stream that grew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from workers.keys import Keys
from workers.store.connection import STORE_UNAVAILABLE, connect_single

log = logging.getLogger(__name__)


class Wakeup:
    """A subscriber's side: clear, read what is there, then wait until the stream may have grown."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def clear(self) -> None:
        self._event.clear()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout_s: float) -> bool:
        """True when woken, False after `timeout_s` without news."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout_s)
        return self._event.is_set()


class EventHub:
    """Watches the event streams of subscribed jobs with one blocking XREAD at a time."""

    def __init__(self, redis_url: str, keys: Keys, *, block_ms: int = 1000) -> None:
        self.redis_url, self.keys, self.block_ms = redis_url, keys, block_ms
        self._subscribers: dict[str, set[Wakeup]] = {}  # stream key -> who waits on it
        self._cursors: dict[str, str] = {}  # stream key -> last id the hub has seen
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._redis = None

    @property
    def watched(self) -> int:
        return len(self._subscribers)

    async def start(self) -> None:
        self._redis = connect_single(self.redis_url)
        self._task = asyncio.create_task(self._run(), name="event-hub")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._redis is not None:
            await self._redis.aclose()

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str, cursor: str) -> AsyncIterator[Wakeup]:
        """Wake the caller whenever the job's stream gets entries after `cursor` (or after what the hub saw)."""
        key, wakeup = self.keys.events(job_id), Wakeup()
        if key not in self._subscribers:
            self._subscribers[key], self._cursors[key] = set(), cursor or "0"
            self._changed.set()
        self._subscribers[key].add(wakeup)
        try:
            yield wakeup
        finally:
            waiting = self._subscribers.get(key)
            if waiting is not None:
                waiting.discard(wakeup)
                if not waiting:
                    del self._subscribers[key], self._cursors[key]

    async def _run(self) -> None:
        while True:
            if not self._subscribers:
                self._changed.clear()
                await self._changed.wait()
                continue
            streams = dict(self._cursors)
            try:
                reply = await self._redis.xread(streams, count=100, block=self.block_ms)
            except STORE_UNAVAILABLE as exc:  # the streams wake on their keep-alive timer meanwhile
                log.warning("event hub: redis unavailable (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            except Exception:  # noqa: BLE001 - the hub must outlive any one bad read
                log.exception("event hub: read failed")
                await asyncio.sleep(1.0)
                continue
            for key, entries in reply or []:
                if key in self._cursors and entries:
                    self._cursors[key] = entries[-1][0]
                for wakeup in self._subscribers.get(key, ()):
                    wakeup.set()
