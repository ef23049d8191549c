"""Server-Sent Events of a job: a per-tenant cap on open streams, and the stream itself, which waits on the
process's event hub (workers.store.EventHub) instead of holding a Redis connection."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse
from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event
from starlette.types import Receive, Scope, Send

from sdpo_core.statuses import FINISHED
from service.errors import ApiError
from workers.store import EventHub, JobStore


class StreamSlots:
    """Open event streams per tenant in this process, at most `limit` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def take(self, tenant: str) -> Callable[[], None]:
        """A slot for one stream (429 when the tenant has none left); call the result to give it back."""
        if self.open.get(tenant, 0) >= self.limit:
            raise ApiError(429, f"the tenant has {self.limit} event streams open, the most allowed; close one, or "
                                "read GET /v1/jobs/{id}/events pages instead", code="too_many_streams",
                           headers={"Retry-After": "5"})
        self.open[tenant] = self.open.get(tenant, 0) + 1
        released = False

        def give_back() -> None:
            nonlocal released
            if not released:
                released = True
                self.open[tenant] -= 1
                if not self.open[tenant]:
                    del self.open[tenant]

        return give_back


class SlotStream(StreamingResponse):
    """A streaming response that gives its slot back however it ends (finished, client gone, server stopping)."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None], **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


async def job_events(request: Request, store: JobStore, hub: EventHub, job_id: str, cursor: str,
                     ping_s: float) -> AsyncIterator[bytes]:
    """Events after `cursor`, then new ones as they come, until the job's final status event."""
    async with hub.subscribe(job_id, cursor) as wakeup:
        while not await request.is_disconnected():
            wakeup.clear()
            rows = await store.events(job_id, after=cursor, limit=100)
            for entry_id, fields in rows:
                data = fields.get("data") or "{}"
                kind = fields.get("type", "status")
                yield format_sse_event(data_str=data, event=kind, id=entry_id)
                cursor = entry_id
                if kind == "status" and json.loads(data).get("status") in FINISHED:
                    return
            if rows:
                continue
            record = await store.get(job_id)
            if record is None or record.finished and not await store.events(job_id, after=cursor, limit=1):
                return
            if not await wakeup.wait(ping_s):
                yield KEEPALIVE_COMMENT
