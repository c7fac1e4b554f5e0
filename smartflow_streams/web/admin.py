"""Outbox status and dead-letter admin views (JSON).

Routes:
- ``GET /outbox/``: open (read-only status, like ``/metrics``): :func:`smartflow_streams.web.queries.snapshot`,
  read at most once per 2 s (:class:`smartflow_streams.web.queries.SnapshotCache`).
- Admin (``Authorization: Bearer <SMARTFLOW_ADMIN_TOKEN>``; see :mod:`smartflow_streams.web.auth`):
  ``GET /admin/dead/{service}/?limit=&event_type=&reason=``, ``POST /admin/dead/{service}/requeue`` with
  ``{"ids": [...]}`` or ``{"all": true}``, ``POST /admin/purge/{service}`` with ``{"older_than_days": N}``,
  ``GET /admin/audit/?limit=``, ``GET /admin/dead-messages/?limit=``.

Invariants:
- Authorisation is checked before anything else (before the body is read or the service looked up): 403 when admin
  actions are disabled, 401 for a missing or wrong token.
- A service outside the catalog, or without an outbox table, is 404 ``{"error": ...}``; a bad body or query is 400.
- Every requeue and purge is audited by :mod:`smartflow_streams.outbox.admin` with actor
  ``admin:<X-Actor or "token">``; requeue moves only ``dead`` rows (at most 1000 ids per call).
- Served free text (``last_error``, ``reason``, audit ``detail``) is scrubbed; unexpected failures answer 500
  ``{"error": "internal error"}`` and log the exception through the masking filter, never the request body.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import faust
from aiohttp import web
from faust.web import View

from smartflow_streams.outbox import admin as outbox_admin
from smartflow_streams.startup.runtime import WorkerRuntime
from smartflow_streams.web.auth import admin_actor, bearer_token, check_admin
from smartflow_streams.web.queries import SnapshotCache, scrub_rows, service_has_table
from smartflow_streams.web.responses import error_response, json_response, query_int, read_json_object

log = logging.getLogger(__name__)

MAX_REQUEUE_IDS = 1000
REQUEUE_BODY = 'body must be a JSON object: {"ids": [<outbox id>, ...]} or {"all": true}'
PURGE_BODY = 'body must be a JSON object: {"older_than_days": <number >= 1>}'


def _ids(body: dict[str, Any]) -> list[int] | None | str:
    """Requested ids, ``None`` for all, or an error message."""
    if body.get("all") is True and "ids" not in body:
        return None
    ids = body.get("ids")
    if (not isinstance(ids, list) or not ids or len(ids) > MAX_REQUEUE_IDS
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**63 for i in ids)):
        return f"{REQUEUE_BODY}; ids: 1 to {MAX_REQUEUE_IDS} positive integers below 2**63"
    return ids


def _days(body: dict[str, Any]) -> float | None:
    days = body.get("older_than_days")
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not days >= 1 or days > 36500:
        return None
    return float(days)


def _audit_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in scrub_rows(rows, "detail", "actor"):
        try:
            row["detail"] = json.loads(row["detail"]) if row.get("detail") else None
        except ValueError:
            pass
    return rows


def define_admin_views(app: faust.App, runtime: WorkerRuntime) -> None:
    settings = runtime.settings

    failures = runtime.auth_failures

    def denied(request: web.Request) -> web.Response | None:
        client = request.remote or "-"
        denial = failures.throttled(client) or check_admin(settings, request.headers.get("Authorization"))
        if denial is None:
            return None
        if denial.status == 401 and bearer_token(request.headers.get("Authorization")) is not None:
            failures.failed(client)  # a wrong token, not a missing one
        response = error_response(denial.status, denial.message)
        if denial.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        if denial.retry_after is not None:
            response.headers["Retry-After"] = str(denial.retry_after)
        return response

    async def unknown(service: str) -> web.Response | None:
        if await service_has_table(runtime.engine, service):
            return None
        return error_response(404, f"unknown service {service[:64]!r} (not in the catalog, or no outbox table)")

    def failed(what: str) -> web.Response:
        log.warning("admin %s failed", what, exc_info=True)
        return error_response(500, "internal error")

    outbox_cache = SnapshotCache()

    @app.page("/outbox/")
    async def outbox_status(self: View, request: web.Request) -> web.Response:
        try:
            data = await outbox_cache.get(runtime.engine, runtime.consumption, settings.worker.services)
        except Exception:  # noqa: BLE001
            log.warning("outbox overview failed", exc_info=True)
            return error_response(503, "outbox overview unavailable (database?)")
        return json_response(data)

    @app.page("/admin/dead/{service}/")
    class DeadRows(View):
        async def get(self, request: web.Request, service: str) -> web.Response:
            if (refusal := denied(request)) is not None:
                return refusal
            try:
                limit = query_int(request, "limit", 100)
            except ValueError:
                return error_response(400, "limit must be an integer")
            try:
                if (missing := await unknown(service)) is not None:
                    return missing
                rows = await outbox_admin.list_dead(
                    runtime.engine, service, limit=limit, event_type=request.query.get("event_type") or None,
                    reason_contains=request.query.get("reason") or None)
            except Exception:  # noqa: BLE001
                return failed("dead listing")
            return json_response({"service": service, "count": len(rows), "rows": scrub_rows(rows, "last_error")})

    @app.page("/admin/dead/{service}/requeue")
    class Requeue(View):
        async def post(self, request: web.Request, service: str) -> web.Response:
            if (refusal := denied(request)) is not None:
                return refusal
            body = await read_json_object(request)
            ids = _ids(body) if body is not None else REQUEUE_BODY
            if isinstance(ids, str):
                return error_response(400, ids)
            actor = admin_actor(request.headers.get("X-Actor"))
            try:
                if (missing := await unknown(service)) is not None:
                    return missing
                moved = await outbox_admin.requeue(runtime.engine, service, ids, actor=actor)
            except Exception:  # noqa: BLE001
                return failed("requeue")
            log.info("admin requeue: service=%s ids=%s moved=%d actor=%s", service,
                     "all" if ids is None else len(ids), moved, actor)
            return json_response({"service": service, "requeued": moved, "actor": actor})

    @app.page("/admin/purge/{service}")
    class Purge(View):
        async def post(self, request: web.Request, service: str) -> web.Response:
            if (refusal := denied(request)) is not None:
                return refusal
            body = await read_json_object(request)
            days = _days(body) if body is not None else None
            if days is None:
                return error_response(400, PURGE_BODY)
            actor = admin_actor(request.headers.get("X-Actor"))
            try:
                if (missing := await unknown(service)) is not None:
                    return missing
                deleted = await outbox_admin.purge_consumed(runtime.engine, service, days, actor=actor)
            except Exception:  # noqa: BLE001
                return failed("purge")
            log.info("admin purge: service=%s older_than_days=%g deleted=%d actor=%s", service, days, deleted, actor)
            return json_response({"service": service, "deleted": deleted, "older_than_days": days, "actor": actor})

    @app.page("/admin/audit/")
    async def audit(self: View, request: web.Request) -> web.Response:
        if (refusal := denied(request)) is not None:
            return refusal
        try:
            limit = query_int(request, "limit", 50)
        except ValueError:
            return error_response(400, "limit must be an integer")
        try:
            rows = await outbox_admin.audit_log(runtime.engine, limit)
        except Exception:  # noqa: BLE001
            return failed("audit listing")
        return json_response({"count": len(rows), "entries": _audit_rows(rows)})

    @app.page("/admin/dead-messages/")
    async def dead_messages(self: View, request: web.Request) -> web.Response:
        if (refusal := denied(request)) is not None:
            return refusal
        try:
            limit = query_int(request, "limit", 100)
        except ValueError:
            return error_response(400, "limit must be an integer")
        try:
            rows = await outbox_admin.list_dead_messages(runtime.engine, limit)
        except Exception:  # noqa: BLE001
            return failed("dead-message listing")
        return json_response({"count": len(rows), "messages": scrub_rows(rows, "reason")})
