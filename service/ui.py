"""The web page at /ui: static HTML, CSS and vanilla JavaScript (service/web/), served as they are.

The page holds no secret and has no session: it asks for an API key, keeps it in the tab's sessionStorage, and calls
the same /v1 API as every other client with `Authorization: Bearer <key>`. Live progress reads the job's SSE stream
through fetch(), which can send that header (EventSource cannot), so the key never travels in a URL.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

WEB_DIR = Path(__file__).parent / "web"
# Scripts and styles only from our own files; pictures may be blob: URLs; nothing may frame the page. The page shows
# model output and user problems with textContent only, and this policy backs that up.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate, so an upgrade's page is picked up at once
}


class _WebFiles(StaticFiles):
    """StaticFiles with the page's security headers."""

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(HEADERS)
        return response

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def mount(app: FastAPI) -> None:
    """Serve the page at /ui/ (a request for /ui is redirected there)."""
    app.mount("/ui", _WebFiles(directory=WEB_DIR, html=True), name="ui")
