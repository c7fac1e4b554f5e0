"""User Feishu channel configuration (docs/upstream.md#channel-api): view, upsert, delete, test.

Invariants: the webhook URL is validated on save (and again at send); views never carry the URL (only its mask)
nor the bearer token or signing secret (only ``has_bearer_token``/``has_sign_secret``). Errors carry upstream's
codes: 40014 unauthorized user, 40004 missing parameter, 40005 wrong parameter.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from config import Settings
from smartflow_streams.core import clock
from smartflow_streams.db.models import user_notification_channels as channels
from smartflow_streams.core.errors import ContractError
from smartflow_streams.core.masking import mask_webhook_url
from smartflow_streams.notification.limiter import RateLimiter
from smartflow_streams.notification.feishu import (
    CONFIG_CHANNEL, KINDS, MSG_TYPES, InvalidWebhookURL, Outcome, SendRequest, WebhookProvider, channel_config,
    validate_webhook_url,
)


class ChannelError(ContractError):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


def view(row: Any | None) -> dict[str, Any]:
    if row is None:
        return {"channel": CONFIG_CHANNEL, "enabled": False, "configured": False, "webhook_url_mask": "",
                "auth_type": "none", "has_bearer_token": False, "webhook_kind": "flow", "has_sign_secret": False,
                "last_test_status": "", "last_test_error": "", "last_test_at": None}
    return {
        "channel": CONFIG_CHANNEL, "enabled": bool(row["enabled"]), "configured": bool(row["webhook_url"]),
        "webhook_url_mask": mask_webhook_url(row["webhook_url"]), "auth_type": row["auth_type"] or "none",
        "has_bearer_token": bool(row["bearer_token"]), "webhook_kind": row["webhook_kind"] or "flow",
        "msg_type": row["msg_type"] or "text", "has_sign_secret": bool(row["sign_secret"]),
        "last_test_status": row["last_test_status"] or "", "last_test_error": row["last_test_error"] or "",
        "last_test_at": row["last_test_at"].isoformat() if row["last_test_at"] else None,
    }


async def _row(conn: Any, user_id: int) -> Any | None:
    return (await conn.execute(sa.select(channels).where(
        channels.c.user_id == user_id, channels.c.channel == CONFIG_CHANNEL))).mappings().first()


def _check_user(user_id: int) -> None:
    if user_id <= 0:
        raise ChannelError(40014, "unauthorized: no user")


async def get_channel(engine: AsyncEngine, user_id: int) -> dict[str, Any]:
    _check_user(user_id)
    async with engine.connect() as conn:
        return view(await _row(conn, user_id))


async def put_channel(engine: AsyncEngine, settings: Settings, user_id: int, body: dict[str, Any]) -> dict[str, Any]:
    """Upsert; keeps ``last_test_*``. ``enabled`` defaults to true; auth types other than bearer become none."""
    _check_user(user_id)
    url = str(body.get("webhook_url") or "").strip()
    if not url:
        raise ChannelError(40004, "missing parameter: webhook_url")
    auth_type = "bearer" if body.get("auth_type") == "bearer" else "none"
    token = str(body.get("bearer_token") or "").strip()
    if auth_type == "bearer" and not token:
        raise ChannelError(40004, "missing parameter: bearer_token")
    kind = str(body.get("webhook_kind") or "flow")
    msg_type = str(body.get("msg_type") or "text")
    if kind not in KINDS or msg_type not in MSG_TYPES:
        raise ChannelError(40005, f"wrong parameter: webhook_kind must be one of {KINDS}, msg_type one of {MSG_TYPES}")
    try:
        validate_webhook_url(url, kind, settings.notification)
    except InvalidWebhookURL as exc:
        raise ChannelError(40005, f"wrong parameter: webhook_url ({exc})") from None
    enabled = body.get("enabled")
    values = dict(enabled=True if enabled is None else bool(enabled), webhook_url=url, auth_type=auth_type,
                  bearer_token=token if auth_type == "bearer" else "", webhook_kind=kind, msg_type=msg_type,
                  sign_secret=str(body.get("sign_secret") or "").strip() or None, updated_at=clock.db_now())
    async with engine.begin() as conn:
        existing = await _row(conn, user_id)
        if existing is None:
            await conn.execute(sa.insert(channels).values(user_id=user_id, channel=CONFIG_CHANNEL,
                                                          created_at=values["updated_at"], **values))
        else:
            await conn.execute(sa.update(channels).where(channels.c.id == existing["id"]).values(**values))
        return view(await _row(conn, user_id))


async def delete_channel(engine: AsyncEngine, user_id: int) -> dict[str, Any]:
    _check_user(user_id)
    async with engine.begin() as conn:
        await conn.execute(sa.delete(channels).where(channels.c.user_id == user_id,
                                                     channels.c.channel == CONFIG_CHANNEL))
    return {"deleted": True}


async def send_channel_test(engine: AsyncEngine, settings: Settings, user_id: int,
                            provider: WebhookProvider | None = None) -> dict[str, Any]:
    """Send upstream's test message and record ``last_test_*``; returns upstream's test-result shape."""
    _check_user(user_id)
    async with engine.connect() as conn:
        row = await _row(conn, user_id)
    request = SendRequest(
        notification_id=0, user_id=user_id, trigger_id="ast_test_webhook", preview_id="asp_test_webhook",
        trigger_type="manual_test", target_type="notification_channel", target_id=0,
        target_url="/assistant/00000000-0000-0000-0000-000000000000",
        message_text="这是一条 SmartFlow 飞书 Webhook 测试消息。", fallback_used=False,
        trace_id="trace_feishu_webhook_test", attempt_count=1,
    )
    own = provider is None
    provider = provider or WebhookProvider(settings.notification, limiter=RateLimiter(enabled=False),
                                           zone=settings.zone)
    try:
        result = await provider.send(channel_config(row) if row is not None else None, request)
    finally:
        if own:
            await provider.close()
    status = "success" if result.outcome is Outcome.SUCCESS else "failed"
    error = "" if status == "success" else (
        "飞书 webhook 未配置或未启用" if result.outcome is Outcome.SKIPPED else
        f"{result.error_code}: {result.error_message}".strip(": "))
    if row is not None:
        async with engine.begin() as conn:
            await conn.execute(sa.update(channels).where(channels.c.id == row["id"]).values(
                last_test_status=status, last_test_error=error or None, last_test_at=clock.db_now()))
    return {"channel": CONFIG_CHANNEL, "status": status, "outcome": result.outcome.value, "message": error,
            "trace_id": request.trace_id,
            "sent_at": clock.now(settings.zone).isoformat(timespec="seconds"),
            "skipped": result.outcome is Outcome.SKIPPED, "provider": "feishu"}
