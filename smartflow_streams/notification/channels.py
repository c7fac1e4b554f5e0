"""User Feishu channel configuration (docs/upstream.md#channel-api): view, upsert, delete, test.

Invariants: the webhook URL is validated on save (and again at send); views never carry the URL (only its mask)
nor the bearer token or signing secret (only ``has_bearer_token``/``has_sign_secret``). Errors carry upstream's
codes: 40014 unauthorized user, 40004 missing parameter, 40005 wrong parameter.

Field limits (a PUT over them is 40005; real Feishu values are far shorter: a bot URL is ~90 characters, a Flow
trigger URL ~80, a bot signing secret ~24): ``webhook_url`` at most :data:`WEBHOOK_URL_MAX_CHARS` (512),
``bearer_token`` :data:`BEARER_TOKEN_MAX_CHARS` (512), ``sign_secret`` :data:`SIGN_SECRET_MAX_CHARS` (128).
Types are strict: the text fields must be JSON strings (or null/absent), ``enabled`` a JSON boolean (or
null/absent: true) -- ``["x"]`` is not stored as ``"['x']"`` and ``"false"`` is not true.

The test send goes through the worker's shared provider (its HTTP session and rate limiter, so a test counts
against the bot's quota like any send) and is limited per user: one per
``notification.channel_test_interval_seconds`` (10 s); a sooner one raises :class:`ChannelTestThrottled`
(HTTP 429 with ``Retry-After``). The throttle keeps at most 10,000 users (oldest dropped).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from config import Settings
from smartflow_streams.core import clock
from smartflow_streams.db.models import user_notification_channels as channels
from smartflow_streams.core.errors import ContractError
from smartflow_streams.core.masking import mask_webhook_url
from smartflow_streams.notification.feishu import (
    CONFIG_CHANNEL, KINDS, MSG_TYPES, InvalidWebhookURL, Outcome, SendRequest, WebhookProvider, channel_config,
    validate_webhook_url,
)


WEBHOOK_URL_MAX_CHARS = 512
BEARER_TOKEN_MAX_CHARS = 512
SIGN_SECRET_MAX_CHARS = 128
_LIMITS = {"webhook_url": WEBHOOK_URL_MAX_CHARS, "bearer_token": BEARER_TOKEN_MAX_CHARS,
           "sign_secret": SIGN_SECRET_MAX_CHARS, "auth_type": 32, "webhook_kind": 16, "msg_type": 16}
TEST_THROTTLE_MAX_USERS = 10_000


class ChannelError(ContractError):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


class ChannelTestThrottled(ChannelError):
    """A channel test sooner than ``channel_test_interval_seconds`` after the user's previous one."""

    def __init__(self, retry_after_seconds: float) -> None:
        super().__init__(42900, f"too many channel tests: retry after {math.ceil(retry_after_seconds)} s")
        self.retry_after_seconds = retry_after_seconds


class TestThrottle:
    """One channel test per user per ``interval`` seconds (monotonic clock), at most
    :data:`TEST_THROTTLE_MAX_USERS` users remembered (least recent dropped first)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: OrderedDict[int, float] = OrderedDict()

    def check(self, user_id: int) -> None:
        """Record a test of ``user_id`` now, or raise :class:`ChannelTestThrottled`."""
        now = self._clock()
        last = self._last.get(user_id)
        if last is not None and now - last < self.interval:
            raise ChannelTestThrottled(self.interval - (now - last))
        self._last[user_id] = now
        self._last.move_to_end(user_id)
        while len(self._last) > TEST_THROTTLE_MAX_USERS:
            self._last.popitem(last=False)


def _field(body: dict[str, Any], name: str) -> str:
    """A strict text field: a JSON string (stripped) or absent/null (``""``), within its length limit."""
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ChannelError(40005, f"wrong parameter: {name} must be a string")
    value = value.strip()
    if len(value) > _LIMITS[name]:
        raise ChannelError(40005, f"wrong parameter: {name} is longer than {_LIMITS[name]} characters")
    return value


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
    url = _field(body, "webhook_url")
    if not url:
        raise ChannelError(40004, "missing parameter: webhook_url")
    auth_type = "bearer" if _field(body, "auth_type") == "bearer" else "none"
    token = _field(body, "bearer_token")
    if auth_type == "bearer" and not token:
        raise ChannelError(40004, "missing parameter: bearer_token")
    kind = _field(body, "webhook_kind") or "flow"
    msg_type = _field(body, "msg_type") or "text"
    sign_secret = _field(body, "sign_secret")
    if kind not in KINDS or msg_type not in MSG_TYPES:
        raise ChannelError(40005, f"wrong parameter: webhook_kind must be one of {KINDS}, msg_type one of {MSG_TYPES}")
    try:
        validate_webhook_url(url, kind, settings.notification)
        _refuse_own_ports(url, settings)
    except InvalidWebhookURL as exc:
        raise ChannelError(40005, f"wrong parameter: webhook_url ({exc})") from None
    enabled = body.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise ChannelError(40005, "wrong parameter: enabled must be true or false")
    values = dict(enabled=True if enabled is None else enabled, webhook_url=url, auth_type=auth_type,
                  bearer_token=token if auth_type == "bearer" else "", webhook_kind=kind, msg_type=msg_type,
                  sign_secret=sign_secret or None, updated_at=clock.db_now())
    async with engine.begin() as conn:
        existing = await _row(conn, user_id)
        if existing is None:
            await conn.execute(sa.insert(channels).values(user_id=user_id, channel=CONFIG_CHANNEL,
                                                          created_at=values["updated_at"], **values))
        else:
            await conn.execute(sa.update(channels).where(channels.c.id == existing["id"]).values(**values))
        return view(await _row(conn, user_id))


def _refuse_own_ports(url: str, settings: Settings) -> None:
    """With ``allow_plain_http`` (tests, demo) a loopback webhook could aim at this worker's own routes (admin,
    APIs) or the relay's: refuse the worker's web port and the relay's metrics port on any loopback host."""
    if not settings.notification.allow_plain_http:
        return
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host in ("127.0.0.1", "localhost", "::1", "0.0.0.0") or host.startswith("127."):
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        if port in (settings.worker.web_port, settings.relay.metrics_port):
            raise InvalidWebhookURL("webhook URL must not point at this service's own ports")


async def delete_channel(engine: AsyncEngine, user_id: int) -> dict[str, Any]:
    _check_user(user_id)
    async with engine.begin() as conn:
        await conn.execute(sa.delete(channels).where(channels.c.user_id == user_id,
                                                     channels.c.channel == CONFIG_CHANNEL))
    return {"deleted": True}


async def send_channel_test(engine: AsyncEngine, settings: Settings, user_id: int,
                            provider: WebhookProvider | None = None,
                            throttle: TestThrottle | None = None) -> dict[str, Any]:
    """Send upstream's test message and record ``last_test_*``; returns upstream's test-result shape. The worker
    passes its shared ``provider`` (session and rate limiter) and ``throttle``; without a provider a private one
    with the configured rate limiter is used and closed."""
    _check_user(user_id)
    if throttle is not None:
        throttle.check(user_id)
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
    provider = provider or WebhookProvider(settings.notification, zone=settings.zone)
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
