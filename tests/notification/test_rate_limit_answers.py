"""Feishu rate-limit answers are temporary on both webhook kinds, against a real local HTTP server.

``HTTP 200 {"code": 11232}`` / ``99991400`` / a ``msg`` saying "frequency limited" -> ``temporary_fail``
``provider_rate_limited``; the record is retried with the normal backoff and sent on the next attempt. (Upstream
made the Flow answers ``payload_invalid``: dead at the first attempt.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from aiohttp import web

from config import NotificationSettings
from smartflow_streams.core import clock
from smartflow_streams.contracts.events import FeishuNotificationRequestedPayload
from smartflow_streams.db.models import notification_records, user_notification_channels
from smartflow_streams.cli.embedded import free_port
from smartflow_streams.notification.limiter import RateLimiter
from smartflow_streams.notification.feishu import ChannelConfig, Outcome, SendRequest, WebhookProvider
from smartflow_streams.notification.records import retry_delay
from smartflow_streams.notification.service import NotificationService
from smartflow_streams.outbox.repository import OutboxRepository

RATE_LIMIT_BODIES = [
    {"code": 11232, "msg": "frequency limited psm[lark.oapi.app_platform_runtime]appID[1500]"},
    {"code": 99991400, "msg": "request trigger frequency limit"},
    {"code": 1, "msg": "Frequency Limited, please retry later"},
]
LOCAL = dict(allow_plain_http=True, allowed_hosts=["127.0.0.1"], rate_limit_enabled=False,
             base_delay_seconds=0.3, max_delay_seconds=2, http_timeout_seconds=3)


class Feishu:
    """Real aiohttp server on 127.0.0.1 serving both webhook paths; answers queued bodies (HTTP 200), then code 0."""

    def __init__(self) -> None:
        self.replies: list[dict[str, Any]] = []
        self.posts: list[str] = []
        self.port = 0

    async def _handle(self, request: web.Request) -> web.Response:
        self.posts.append(request.path)
        return web.json_response(self.replies.pop(0) if self.replies else {"code": 0, "msg": "success"})

    async def __aenter__(self) -> Feishu:
        app = web.Application()
        app.router.add_post("/flow/api/trigger-webhook/{token}", self._handle)
        app.router.add_post("/open-apis/bot/v2/hook/{token}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    def url(self, kind: str) -> str:
        path = "/flow/api/trigger-webhook/tok-rl" if kind == "flow" else "/open-apis/bot/v2/hook/tok-rl"
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def feishu() -> AsyncIterator[Feishu]:
    async with Feishu() as server:
        yield server


def request() -> SendRequest:
    return SendRequest(notification_id=1, user_id=7, trigger_id="ast_1", preview_id="asp_1",
                       trigger_type="important_urgent_task", target_type="task_pool", target_id=3,
                       target_url="/assistant/x", message_text="任务 #3 需要安排", fallback_used=False,
                       trace_id="t", attempt_count=1)


@pytest.mark.parametrize("kind", ["flow", "bot"])
@pytest.mark.parametrize("body", RATE_LIMIT_BODIES, ids=["11232", "99991400", "msg"])
async def test_rate_limit_answer_is_temporary_on_both_kinds(feishu: Feishu, kind: str, body: dict) -> None:
    feishu.replies.append(body)
    async with WebhookProvider(NotificationSettings(**LOCAL), limiter=RateLimiter(enabled=False)) as provider:
        result = await provider.send(ChannelConfig(webhook_url=feishu.url(kind), kind=kind), request())
    assert (result.outcome, result.error_code) == (Outcome.TEMPORARY, "provider_rate_limited")
    assert str(body["code"]) in result.error_message and len(feishu.posts) == 1


async def test_other_business_codes_stay_permanent_on_flow(feishu: Feishu) -> None:
    feishu.replies.append({"code": 9499, "msg": "Bad Request"})
    async with WebhookProvider(NotificationSettings(**LOCAL), limiter=RateLimiter(enabled=False)) as provider:
        result = await provider.send(ChannelConfig(webhook_url=feishu.url("flow"), kind="flow"), request())
    assert (result.outcome, result.error_code) == (Outcome.PERMANENT, "payload_invalid")


@pytest.mark.parametrize("kind", ["flow", "bot"])
async def test_rate_limited_record_is_retried_with_normal_backoff_then_sent(db, feishu: Feishu, kind: str) -> None:
    settings = db.settings.model_copy(update={"notification": db.settings.notification.model_copy(update=LOCAL)})
    now = clock.db_now()
    async with db.engine.begin() as conn:
        await conn.execute(sa.insert(user_notification_channels).values(
            user_id=7, channel="feishu_webhook", enabled=True, webhook_url=feishu.url(kind), auth_type="none",
            bearer_token="", webhook_kind=kind, msg_type="text", created_at=now, updated_at=now))
    repo = OutboxRepository.for_event("notification.feishu.requested")
    payload = FeishuNotificationRequestedPayload(
        user_id=7, trigger_id="ast_rl", preview_id="asp_rl", trigger_type="important_urgent_task",
        target_type="task_pool", target_id=3, dedupe_key="7:important_urgent_task:2026-04-30T10:00:00+08:00",
        target_url="/assistant/x", summary_text="任务 #3 需要安排", fallback_text="", trace_id="t",
        requested_at=datetime(2026, 4, 30, 10, 0, tzinfo=ZoneInfo("Asia/Shanghai")))
    async with db.engine.begin() as conn:
        outbox_id = await repo.enqueue(conn, "notification.feishu.requested", payload, message_key="7",
                                       event_version="1", event_id="asp_rl")
    feishu.replies.append(RATE_LIMIT_BODIES[0])
    async with WebhookProvider(settings.notification, limiter=RateLimiter(enabled=False)) as provider:
        service = NotificationService(settings, db.sessions, provider)
        first = await service.handle_requested(repo, outbox_id, payload)
        async with db.engine.connect() as conn:
            rec = (await conn.execute(sa.select(notification_records))).mappings().one()
        assert (first.status, rec["status"], rec["last_error_code"]) == ("failed", "failed", "provider_rate_limited")
        assert rec["attempt_count"] == 1
        assert rec["next_retry_at"] - rec["updated_at"] == retry_delay(1, settings.notification)  # normal backoff
        assert retry_delay(1, settings.notification) == timedelta(seconds=0.3)
        await asyncio.sleep(0.5)
        await service.retry_due()
    async with db.engine.connect() as conn:
        rec = (await conn.execute(sa.select(notification_records))).mappings().one()
    assert (rec["status"], rec["attempt_count"], rec["last_error_code"]) == ("sent", 2, None)
    assert len(feishu.posts) == 2
