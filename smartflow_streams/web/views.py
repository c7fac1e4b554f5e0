"""Worker web views (Faust's aiohttp server): entry point :func:`define_views`, called once per built app.

Route map (auth in brackets):
- ``/health``, ``/ready``, ``/metrics`` [open] -- :mod:`smartflow_streams.web.ops`
- ``/outbox/`` [open, read-only] and ``/admin/...`` [admin bearer token] -- :mod:`smartflow_streams.web.admin`
- ``/api/v1/...`` [API bearer token -> user id] -- :mod:`smartflow_streams.web.api`
- ``/dashboard/`` [open page; its Requeue buttons send the admin token the operator typed] -- here

Invariants:
- The server binds where ``SMARTFLOW_WORKER__WEB_HOST`` says (default 127.0.0.1); open routes serve no secrets and
  no personal data beyond ids, counts and scrubbed error texts.
- The admin and API tokens are registered with both scrubbers before any route can serve or log anything.
- The dashboard page is one static file (``web/static/dashboard.html``, vanilla JS + inline CSS) read once; it is
  served with a Content-Security-Policy that allows only its own inline script (by hash) and same-origin fetches,
  so no data shown on it can run script.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import re

import faust
from aiohttp import web
from faust.web import View

from smartflow_streams.startup.runtime import WorkerRuntime
from smartflow_streams.web.admin import define_admin_views
from smartflow_streams.web.api import define_api_views
from smartflow_streams.web.auth import register_secrets
from smartflow_streams.web.ops import define_ops_views

_SCRIPT_RE = re.compile(r"<script>(.*?)</script>", re.S)
_page: tuple[str, str] | None = None


def dashboard_page() -> tuple[str, str]:
    """The dashboard HTML and its Content-Security-Policy (inline script allowed by SHA-256 hash only)."""
    global _page
    if _page is None:
        html = importlib.resources.files("smartflow_streams.web").joinpath("static/dashboard.html").read_text("utf-8")
        hashes = " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(m.group(1).encode("utf-8")).digest()).decode() + "'"
            for m in _SCRIPT_RE.finditer(html))
        csp = (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; connect-src 'self'; "
               "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        _page = (html, csp)
    return _page


def define_views(app: faust.App, runtime: WorkerRuntime) -> None:
    register_secrets(runtime.settings)
    define_ops_views(app, runtime)
    define_admin_views(app, runtime)
    define_api_views(app, runtime)

    @app.page("/dashboard/")
    async def dashboard(self: View, request: web.Request) -> web.Response:
        html, csp = dashboard_page()
        return web.Response(text=html, content_type="text/html", headers={
            "Content-Security-Policy": csp, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer"})
