"""Upstream-compatible HTTP APIs (docs/upstream.md#trigger-api, docs/upstream.md#channel-api) on the worker's web
server.

Routes (``Authorization: Bearer <token>``, token -> user id from ``Settings.api_tokens``):
- ``POST /api/v1/active-schedule/trigger``: fields ``trigger_type``, ``target_type`` (required), ``target_id``,
  ``feedback_id``, ``idempotency_key``, ``mock_now`` (RFC 3339; sets ``is_mock_time``), ``payload`` (object).
  Source ``api_trigger``, trace ``trace_api_trigger_<user>_<unixnano>``; the trigger row and its outbox row are
  written in ONE transaction (:func:`smartflow_streams.scheduler.triggers.create_trigger`). Data:
  ``{trigger_id, status, preview_id, dedupe_hit, trace_id}``.
- ``GET|PUT|DELETE /api/v1/notification/channels/feishu``, ``POST /api/v1/notification/channels/feishu/test``
  (:mod:`smartflow_streams.notification.channels`).

Invariants:
- Envelope ``{"status": "10000", "info": "success", "data": ...}``; errors ``{"status": "<code>", "info": ...}``:
  40014 (HTTP 401) no/unknown token, 40004 (400) missing parameter, 40005 (400) wrong parameter (including any
  body that is not a JSON object and every ContractError), 50000 (500) unexpected failure. Never a bare 500 page.
- Bodies and logs never carry webhook URLs, bearer tokens or signing secrets: channel views hold masks only; when an
  unexpected failure is logged after a PUT, the logged traceback is redacted of that request's URL and tokens
  (:func:`smartflow_streams.core.masking.redact`; user-chosen strings never enter the process-wide registry).
- Bad input is 40005 whatever its shape (a body nested 100,000 deep included); a body over the server's
  ``client_max_size`` (1 MiB) is HTTP 413 with code 41300; a channel test sooner than
  ``notification.channel_test_interval_seconds`` (10 s) after the user's previous one is HTTP 429 with
  ``Retry-After`` and code 42900.
- Requests time out after 8 s (upstream gateway), answering 50000.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from aiohttp import web
from faust.web import View

from config import Settings
from smartflow_streams.core.errors import ContractError
from smartflow_streams.core.masking import mask_webhook_url, redact, scrub_text
from smartflow_streams.notification.channels import (
    ChannelError, ChannelTestThrottled, TestThrottle, delete_channel, get_channel, put_channel, send_channel_test,
)
from smartflow_streams.scheduler.triggers import TriggerRequest, create_trigger
from smartflow_streams.contracts.gotime import parse_go_time
from smartflow_streams.web.auth import api_user, bearer_token
from smartflow_streams.startup.runtime import WorkerRuntime
from smartflow_streams.web.responses import (
    INTERNAL, MISSING_PARAM, UNAUTHORIZED, WRONG_PARAM, json_response, read_json_object, upstream_error,
    upstream_ok,
)

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 8.0
NOT_AN_OBJECT = "wrong parameter: request body must be a JSON object"


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _text(body: dict[str, Any], name: str, *, required: bool = False) -> str:
    value = body.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ApiError(MISSING_PARAM, f"missing parameter: {name}")
        return ""
    if not isinstance(value, str):
        raise ApiError(WRONG_PARAM, f"wrong parameter: {name} must be a string")
    return value


def parse_trigger(body: dict[str, Any], user_id: int, settings: Settings) -> TriggerRequest:
    """The :class:`TriggerRequest` of an API body; raises :class:`ApiError` (40004/40005)."""
    trigger_type = _text(body, "trigger_type", required=True)
    target_type = _text(body, "target_type", required=True)
    target_id = body.get("target_id", 0)
    if target_id is None:
        target_id = 0
    if isinstance(target_id, bool) or not isinstance(target_id, int):
        raise ApiError(WRONG_PARAM, "wrong parameter: target_id must be an integer")
    mock_raw = body.get("mock_now")
    mock_now = None
    if mock_raw not in (None, ""):
        if not isinstance(mock_raw, str):
            raise ApiError(WRONG_PARAM, "wrong parameter: mock_now must be an RFC 3339 time string")
        try:
            mock_now = parse_go_time(mock_raw, zone=settings.zone)
        except (ContractError, ValueError):
            raise ApiError(WRONG_PARAM, "wrong parameter: mock_now must be an RFC 3339 time") from None
    payload = body.get("payload")
    if payload is not None and not isinstance(payload, dict):
        raise ApiError(WRONG_PARAM, "wrong parameter: payload must be a JSON object")
    return TriggerRequest(
        user_id=user_id, trigger_type=trigger_type, source="api_trigger", target_type=target_type,
        target_id=target_id, feedback_id=_text(body, "feedback_id"), idempotency_key=_text(body, "idempotency_key"),
        mock_now=mock_now, payload=payload, trace_id=f"trace_api_trigger_{user_id}_{time.time_ns()}",
    )


def define_api_views(app: faust.App, runtime: WorkerRuntime) -> None:
    settings: Settings = runtime.settings

    throttle = TestThrottle(settings.notification.channel_test_interval_seconds)

    async def answer(request: web.Request, action: Callable[[int], Awaitable[Any]], what: str,
                     redact_failure: Callable[[str], str] | None = None) -> web.Response:
        client = request.remote or "-"
        throttled = runtime.auth_failures.throttled(client)
        if throttled is not None:
            response = json_response({"status": "42900", "info": throttled.message}, 429)
            response.headers["Retry-After"] = str(throttled.retry_after)
            return response
        user = api_user(settings, request.headers.get("Authorization"))
        if user is None:
            if bearer_token(request.headers.get("Authorization")) is not None:
                runtime.auth_failures.failed(client)  # a wrong token, not a missing one
            return upstream_error(UNAUTHORIZED, "unauthorized: missing or unknown bearer token")
        try:
            data = await asyncio.wait_for(action(user), REQUEST_TIMEOUT)
        except ApiError as exc:
            return upstream_error(exc.code, str(exc))
        except web.HTTPRequestEntityTooLarge:
            return json_response({"status": "41300", "info": "request body too large (limit 1 MiB)"}, 413)
        except ChannelTestThrottled as exc:
            response = json_response({"status": str(exc.status_code), "info": str(exc)}, 429)
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_seconds)))
            return response
        except ChannelError as exc:
            return upstream_error(exc.status_code, scrub_text(str(exc)))
        except ContractError as exc:
            return upstream_error(WRONG_PARAM, scrub_text(str(exc)))
        except asyncio.TimeoutError:
            log.warning("api %s timed out after %g s (user %d)", what, REQUEST_TIMEOUT, user)
            return upstream_error(INTERNAL, "timeout")
        except Exception:  # noqa: BLE001
            details = traceback.format_exc()
            if redact_failure is not None:
                details = redact_failure(details)
            log.warning("api %s failed (user %d): %s", what, user, details)
            return upstream_error(INTERNAL, "internal error")
        return upstream_ok(data)

    async def object_body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
        body = await read_json_object(request)
        if body is None:
            if optional and not (await request.read()).strip():
                return {}
            raise ApiError(WRONG_PARAM, NOT_AN_OBJECT)
        return body

    @app.page("/api/v1/active-schedule/trigger")
    class Trigger(View):
        async def post(self, request: web.Request) -> web.Response:
            async def create(user: int) -> dict[str, Any]:
                req = parse_trigger(await object_body(request), user, settings)
                async with runtime.sessions() as session, session.begin():
                    result = await create_trigger(session, req, settings)
                return {"trigger_id": result.trigger_id, "status": result.status, "preview_id": result.preview_id,
                        "dedupe_hit": result.dedupe_hit, "trace_id": result.trace_id}

            return await answer(request, create, "trigger")

    @app.page("/api/v1/notification/channels/feishu")
    class FeishuChannel(View):
        async def get(self, request: web.Request) -> web.Response:
            return await answer(request, lambda user: get_channel(runtime.engine, user), "channel get")

        async def put(self, request: web.Request) -> web.Response:
            body: dict[str, Any] = {}

            async def save(user: int) -> dict[str, Any]:
                body.update(await object_body(request))
                return await put_channel(runtime.engine, settings, user, body)

            def redact_body(text: str) -> str:
                url = body.get("webhook_url")
                url = url.strip() if isinstance(url, str) else ""
                token = url.rstrip("/").rpartition("/")[2]
                secrets = [body.get(name) for name in ("bearer_token", "sign_secret")]
                return redact(text.replace(url, mask_webhook_url(url)) if url else text,
                              [token, *(str(s).strip() for s in secrets if s)])

            return await answer(request, save, "channel put", redact_body)

        async def delete(self, request: web.Request) -> web.Response:
            return await answer(request, lambda user: delete_channel(runtime.engine, user), "channel delete")

    @app.page("/api/v1/notification/channels/feishu/test")
    class FeishuChannelTest(View):
        async def post(self, request: web.Request) -> web.Response:
            async def test(user: int) -> dict[str, Any]:
                await object_body(request, optional=True)
                result = await send_channel_test(runtime.engine, settings, user,
                                                 provider=runtime.notifications.provider, throttle=throttle)
                result["message"] = scrub_text(str(result.get("message") or ""))
                return result

            return await answer(request, test, "channel test")
