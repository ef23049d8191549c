"""The API's routers: resources under /v1, health and metrics at the root."""

from fastapi import APIRouter

from service.api.routes import batches, health, jobs

v1 = APIRouter(prefix="/v1")
v1.include_router(jobs.router)
v1.include_router(batches.router)

root = APIRouter()
root.include_router(health.router)
