"""The Redis gateway: the one package of the service that imports redis (a test keeps it so).

    connection.py  opening Redis (a bounded, blocking pool), the errors callers may catch
    scripts.py     the Lua scripts: every atomic change, keys passed in KEYS, worker writes fenced by the lease
    jobs.py        JobStore: submission, reading, status changes, retention, health and metrics reads
    leases.py      WorkerQueue: the worker's queue entries, leases and fenced writes
    events.py      EventHub: one reader per API process for all open event streams

Key names come from workers.keys; the job record is workers.jobs.JobRecord; statuses are sdpo_core.statuses.
"""

from workers.store.connection import STORE_UNAVAILABLE, StoreFull, connect
from workers.store.events import EventHub
from workers.store.jobs import JobStore, MetricsSnapshot, NewJob, StatusChange, SubmitOutcome, TenantIndex
from workers.store.leases import Lease, StepRecord, WorkerQueue


def open_store(url: str, prefix: str, *, max_connections: int = 64, **options) -> JobStore:
    """A JobStore on a new bounded connection pool; `options` are JobStore's (events_maxlen, retention_s, ...)."""
    from workers.keys import Keys

    return JobStore(connect(url, max_connections=max_connections), Keys(prefix), **options)


def open_event_hub(url: str, prefix: str) -> EventHub:
    """The API process's one reader of the job event streams under `prefix`."""
    from workers.keys import Keys

    return EventHub(url, Keys(prefix))


__all__ = ["STORE_UNAVAILABLE", "EventHub", "JobStore", "Lease", "MetricsSnapshot", "NewJob", "StatusChange",
           "StepRecord", "StoreFull", "SubmitOutcome", "TenantIndex", "WorkerQueue", "connect", "open_event_hub",
           "open_store"]
