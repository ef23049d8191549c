"""/healthz (the process answers), /readyz (Redis reachable; live workers reported), /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from service.deps import SettingsDep, StoreDep
from service.metrics import live_workers, render
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The API process is up."""
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(store: StoreDep, settings: SettingsDep):
    """Ready when Redis answers; the count of live workers is information, not a condition."""
    try:
        await store.ping()
        workers = await store.workers()
    except Exception as exc:  # noqa: BLE001 - not ready is an answer, not an error
        body = Readiness(status="not_ready", redis=False, workers=0, detail=f"redis unreachable: {exc}")
        return JSONResponse(body.model_dump(), status_code=503)
    # Workers may scale to zero (KEDA) and come back when jobs wait: the API must keep accepting them meanwhile.
    count = live_workers(workers, settings.worker_stale_s)
    detail = "" if count else (f"no worker seen in the last {settings.worker_stale_s:g} s: jobs wait in the queue "
                               "until one starts")
    return Readiness(status="ready", redis=True, workers=count, detail=detail)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(store: StoreDep, settings: SettingsDep) -> Response:
    """Prometheus metrics: jobs by status, attempts per second, step latency, queue depth, verifier outcomes."""
    body = await render(store, worker_stale_s=settings.worker_stale_s)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
