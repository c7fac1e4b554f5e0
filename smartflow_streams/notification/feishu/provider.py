"""Feishu webhook delivery: one HTTP POST per attempt, classified into an :class:`Outcome`.

Size (~420 lines, over the house ~400) on purpose: one attempt read top to bottom — send, redact, classify the
answer. URL rules, bodies/signing and the channel mapping live beside it in this package.

Two webhook kinds share one provider (:class:`ChannelConfig.kind`):

* ``flow`` — the upstream target (docs/upstream.md#feishu-flow-webhook): a user's own *Feishu Flow* trigger webhook
  ``https://{feishu.cn|www.feishu.cn}/flow/api/trigger-webhook/...``; JSON event body, optional
  ``Authorization: Bearer``, no signing.
* ``bot`` — a Feishu/Lark *custom bot* (docs/upstream.md#feishu-custom-bot):
  ``https://{open.feishu.cn|open.larksuite.com}/open-apis/bot/v2/hook/<token>``; ``msg_type`` ``text`` | ``post`` |
  ``interactive``; optional HMAC-SHA256 signing, re-computed with a fresh timestamp on **every** attempt (Feishu
  rejects timestamps more than 1 hour off with 19021).

Invariants and limits:

* The webhook URL (its path token is the credential), the bearer token and the signing secret never appear in a
  :class:`SendResult`, an exception message or a log line: every error text of a send is redacted of that
  channel's credentials (they are not added to the process-wide registry, which users could otherwise grow),
  ``request_json`` is the body without ``sign``, and the one debug line per send carries only the masked URL.
* URLs are validated again at send time (:func:`validate_webhook_url`); a violation is ``permanent_fail``
  ``invalid_url`` and nothing is sent. Redirects are not followed (a 3xx is ``payload_invalid``), so a response
  can never steer the request to a host outside ``allowed_hosts``.
* The body is serialized compactly with ``ensure_ascii=False``; over ``settings.max_body_bytes`` (default
  20,000) UTF-8 bytes it is ``permanent_fail`` ``payload_too_large`` and nothing is sent.
* HTTP timeout ``settings.http_timeout_seconds`` (default 5 s) covers connect, request and response read; the
  response body is read up to 64 KiB (65,536 bytes) and recorded as ``{status_code, body?, read_error?}``.
* Rate limiting (:class:`~smartflow_streams.notification.limiter.RateLimiter`, per webhook URL, default 5/s and
  100/min): always applied to ``bot`` webhooks (Feishu's documented per-bot quota), applied to ``flow`` webhooks
  only when ``settings.rate_limit_enabled``. The wait happens before the request and is reported in
  ``SendResult.rate_limit_wait_seconds``; the signature timestamp is taken after the wait. A wait longer than
  ``settings.rate_limit_max_wait_seconds`` (1 s) is not slept: the attempt is ``temporary_fail``
  ``rate_limited_local`` with the wait as ``retry_after_seconds``, and nothing is sent.
* ``send`` never raises for delivery problems (only :class:`asyncio.CancelledError` propagates); unexpected
  errors become ``temporary_fail`` ``network_error`` as upstream (docs/upstream.md#notification-sending step 3).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timezone, tzinfo
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from config import NotificationSettings
from smartflow_streams.core import clock as core_clock
from smartflow_streams.core.masking import mask_webhook_url, scrub_text
from smartflow_streams.notification.feishu.body import (
    PayloadError, build_bot_body, build_flow_body, encode_body, format_sent_at, sign_bot_request,
)
from smartflow_streams.notification.feishu.channel import ChannelConfig
from smartflow_streams.notification.feishu.messages import Outcome, SendRequest, SendResult
from smartflow_streams.notification.feishu.urls import KIND_FLOW, InvalidWebhookURL, validate_webhook_url
from smartflow_streams.notification.limiter import RateLimiter, RateLimitWait

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/json; charset=utf-8"
RESPONSE_READ_LIMIT = 64 * 1024
ERROR_MESSAGE_MAX_CHARS = 500

# Feishu custom-bot business codes (docs/upstream.md#feishu-answer-classification) that are not rate limits.
_BOT_PERMANENT_CODES = {
    9499: "payload_invalid",
    19001: "bot_token_invalid",
    19002: "payload_invalid",
    19021: "bot_sign_failed",
    19022: "bot_ip_denied",
    19024: "bot_keyword_missing",
}
_RATE_LIMIT_CODES = frozenset({11232, 99991400})
_RATE_LIMIT_MESSAGES = ("too many request", "frequency limit")
RATE_LIMITED = "provider_rate_limited"
"""Error code of every rate-limit answer, both kinds: HTTP 429, or a business ``code`` 11232 / 99991400, or a
``msg`` containing "frequency limit" / "too many request" (any case). Temporary: retried with the normal backoff
(``Retry-After`` honoured when longer). Upstream made the Flow answers ``payload_invalid`` (dead at once)."""


def _rate_limited(code: int, msg: str) -> bool:
    lowered = msg.lower()
    return code in _RATE_LIMIT_CODES or any(marker in lowered for marker in _RATE_LIMIT_MESSAGES)


# ------------------------------------------------------------------------------------------- classification

Verdict = tuple[Outcome, str, str]


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _int_code(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _snippet(body: bytes, limit: int = 200) -> str:
    return body[: limit * 4].decode("utf-8", errors="replace")[:limit]


def classify_flow_response(status: int, body: bytes) -> Verdict:
    """Upstream table (docs/upstream.md#feishu-answer-classification) for a Feishu Flow webhook response that was
    fully read."""
    if 200 <= status < 300:
        data = _json_object(body) or {}
        code = _int_code(data.get("code"))
        if code:
            msg = data.get("msg") if isinstance(data.get("msg"), str) else ""
            if _rate_limited(code, msg):  # deliberate difference: upstream answers payload_invalid (dead)
                return Outcome.TEMPORARY, RATE_LIMITED, f"code={code} msg={msg}"
            return Outcome.PERMANENT, "payload_invalid", msg or f"code={code}"
        return Outcome.SUCCESS, "", ""
    return _classify_status(status, body, rate_limit_code=RATE_LIMITED)


def _classify_status(status: int, body: bytes, *, rate_limit_code: str) -> Verdict:
    snippet = _snippet(body)
    message = f"feishu webhook HTTP {status}: {snippet}" if snippet else f"feishu webhook HTTP {status}"
    if status == 429:
        return Outcome.TEMPORARY, rate_limit_code, message
    if status >= 500:
        return Outcome.TEMPORARY, "provider_5xx", message
    if status in (401, 403):
        return Outcome.PERMANENT, "provider_auth_failed", message
    return Outcome.PERMANENT, "payload_invalid", message


def _bot_code(data: Mapping[str, Any]) -> tuple[int | None, str]:
    code = _int_code(data.get("code"))
    if code is None:
        code = _int_code(data.get("StatusCode"))
    msg = data.get("msg")
    if not isinstance(msg, str) or not msg:
        msg = data.get("StatusMessage")
    return code, msg if isinstance(msg, str) else ""


def classify_bot_code(code: int, msg: str) -> Verdict:
    """A non-zero custom-bot business code (docs/upstream.md#feishu-answer-classification)."""
    message = f"code={code} msg={msg}"
    if _rate_limited(code, msg):
        return Outcome.TEMPORARY, RATE_LIMITED, message
    return Outcome.PERMANENT, _BOT_PERMANENT_CODES.get(code, "payload_invalid"), message


def classify_bot_response(status: int, body: bytes) -> Verdict:
    """Custom-bot response: HTTP 429/5xx first, then the JSON ``code`` (or legacy ``StatusCode``), then status."""
    if status == 429 or status >= 500:
        return _classify_status(status, body, rate_limit_code=RATE_LIMITED)
    data = _json_object(body)
    code, msg = _bot_code(data) if data is not None else (None, "")
    if code:
        return classify_bot_code(code, msg)
    if 200 <= status < 300:
        if code == 0:
            return Outcome.SUCCESS, "", ""
        return Outcome.TEMPORARY, "network_error", f"unexpected bot response (no JSON code): {_snippet(body)}"
    return _classify_status(status, body, rate_limit_code=RATE_LIMITED)


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait from ``x-ogw-ratelimit-reset`` (seconds) or ``Retry-After`` (seconds or HTTP date)."""
    for name in ("x-ogw-ratelimit-reset", "Retry-After"):
        value = (headers.get(name) or "").strip()
        if not value:
            continue
        try:
            seconds = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(seconds):
                return max(0.0, seconds)
            continue
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError, IndexError):
            continue
    return None


# ------------------------------------------------------------------------------------------------- redaction


class _Redactor:
    """Replaces one channel's credentials in free text (on top of the process-wide registry of configured
    secrets): the per-send redaction; nothing of the channel is registered globally."""

    _MIN_LEN = 4

    def __init__(self, channel: ChannelConfig, url: str) -> None:
        token = urlsplit(url).path.rstrip("/").rpartition("/")[2]
        pairs = [(url, mask_webhook_url(url)), (token, "****")]
        pairs += [(channel.bearer_token, "****"), (channel.sign_secret, "****")]
        usable = [(s, r) for s, r in pairs if s and len(s) >= self._MIN_LEN]
        self._pairs = sorted(usable, key=lambda pair: -len(pair[0]))

    def __call__(self, text: str, limit: int = ERROR_MESSAGE_MAX_CHARS) -> str:
        for secret, replacement in self._pairs:
            text = text.replace(secret, replacement)
        text = scrub_text(text)
        return text if len(text) <= limit else text[: limit - 3] + "..."


async def _read_limited(stream: aiohttp.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


@dataclass
class _Exchange:
    """What came back from one POST (or why nothing did)."""

    status: int | None = None
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    transport_verdict: Verdict | None = None
    read_error: str = ""
    latency: float = 0.0


# -------------------------------------------------------------------------------------------------- provider


class WebhookProvider:
    """Sends one notification attempt to a Feishu Flow webhook or custom bot and classifies the result.

    Rate limiting: ``bot`` webhooks always go through ``limiter`` (Feishu's 5/s + 100/min per bot); ``flow``
    webhooks only when ``settings.rate_limit_enabled``. The default limiter is built from
    ``settings.rate_per_second``/``rate_per_minute``; pass ``limiter=RateLimiter(enabled=False)`` to disable it.
    ``clock`` (unix seconds) stamps ``sent_at``, bot signature timestamps and provider message ids; ``zone`` is
    the time zone of ``sent_at`` (UTC by default; pass ``Settings.zone`` for the configured one). A session
    passed in is borrowed (never closed here); otherwise one is created lazily and closed by :meth:`close`.
    """

    def __init__(
        self,
        settings: NotificationSettings,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = core_clock.unix,
        *,
        limiter: RateLimiter | None = None,
        zone: tzinfo = timezone.utc,
    ) -> None:
        self._settings = settings
        self._session = session
        self._owns_session = session is None
        self._clock = clock
        self._zone = zone
        if limiter is None:  # not `or`: an empty RateLimiter is falsy (__len__ == 0)
            limiter = RateLimiter(settings.rate_per_second, settings.rate_per_minute)
        self.limiter = limiter

    async def __aenter__(self) -> WebhookProvider:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this provider created it (idempotent)."""
        if not self._owns_session or self._session is None:
            return
        session, self._session = self._session, None
        if not session.closed:
            await session.close()

    async def send(self, channel: ChannelConfig | None, req: SendRequest) -> SendResult:
        """Deliver one attempt; never raises for delivery failures (see the module docstring)."""
        url = (channel.webhook_url if channel is not None else "").strip()
        if channel is None or not channel.enabled or not url:
            result = SendResult(Outcome.SKIPPED, "recipient_missing", "feishu webhook is not configured or disabled")
            return self._logged(channel, req, url, result)
        redact = _Redactor(channel, url)
        result = await self._attempt(channel, req, url, redact)
        return self._logged(channel, req, url, result)

    async def _attempt(self, channel: ChannelConfig, req: SendRequest, url: str, redact: _Redactor) -> SendResult:
        try:
            validate_webhook_url(url, channel.kind, self._settings)
            body = self._body(channel, req)
        except InvalidWebhookURL as exc:
            return SendResult(Outcome.PERMANENT, "invalid_url", redact(str(exc)))
        except PayloadError as exc:
            return SendResult(Outcome.PERMANENT, "payload_invalid", redact(str(exc)))
        size = len(encode_body(body))
        if size > self._settings.max_body_bytes:
            message = f"request body is {size} bytes (UTF-8), limit {self._settings.max_body_bytes}"
            return SendResult(Outcome.PERMANENT, "payload_too_large", message, request_json=_audit_body(body))
        try:
            waited = await self._wait_for_slot(channel, url)
        except RateLimitWait as over:
            return SendResult(Outcome.TEMPORARY, "rate_limited_local",
                              f"webhook rate limit: next slot in {over.wait_seconds:.1f}s, not waiting longer than "
                              f"{self._settings.rate_limit_max_wait_seconds:g}s", request_json=_audit_body(body),
                              retry_after_seconds=over.wait_seconds, rate_limit_wait_seconds=0.0)
        if waited > 0:
            body = self._body(channel, req)  # fresh sent_at / signature timestamp after the wait
        exchange = await self._post(url, self._headers(channel), encode_body(body), redact)
        result = self._result(channel, req, exchange, redact)
        result.request_json = _audit_body(body)
        result.rate_limit_wait_seconds = waited
        return result

    def _body(self, channel: ChannelConfig, req: SendRequest) -> dict[str, Any]:
        base = self._settings.frontend_base_url
        if channel.kind == KIND_FLOW:
            return build_flow_body(req, frontend_base_url=base, sent_at=format_sent_at(self._clock(), self._zone))
        body = build_bot_body(req, channel.msg_type, frontend_base_url=base)
        if channel.sign_secret:
            timestamp = int(self._clock())
            body["timestamp"] = str(timestamp)
            body["sign"] = sign_bot_request(channel.sign_secret, timestamp)
        return body

    def _headers(self, channel: ChannelConfig) -> dict[str, str]:
        headers = {"Content-Type": CONTENT_TYPE}
        if channel.kind == KIND_FLOW and channel.auth_type.strip().lower() == "bearer" and channel.bearer_token:
            headers["Authorization"] = f"Bearer {channel.bearer_token}"
        return headers

    async def _wait_for_slot(self, channel: ChannelConfig, url: str) -> float:
        if channel.kind == KIND_FLOW and not self._settings.rate_limit_enabled:
            return 0.0
        return await self.limiter.acquire(url, max_wait=self._settings.rate_limit_max_wait_seconds)

    async def _session_for_send(self) -> aiohttp.ClientSession:
        if self._session is None or (self._owns_session and self._session.closed):
            self._session = aiohttp.ClientSession(trust_env=False)
            self._owns_session = True
        return self._session

    async def _post(self, url: str, headers: dict[str, str], payload: bytes, redact: _Redactor) -> _Exchange:
        exchange = _Exchange()
        timeout = aiohttp.ClientTimeout(total=self._settings.http_timeout_seconds)
        started = time.perf_counter()
        try:
            session = await self._session_for_send()
            async with session.post(
                url, data=payload, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                exchange.status = response.status
                exchange.headers = response.headers
                try:
                    exchange.body = await _read_limited(response.content, RESPONSE_READ_LIMIT)
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                    exchange.read_error = redact(_describe(exc))
        except aiohttp.InvalidURL as exc:
            exchange.transport_verdict = (Outcome.PERMANENT, "invalid_url", redact(_describe(exc)))
        except asyncio.TimeoutError as exc:
            message = f"no response within {self._settings.http_timeout_seconds:g}s: {_describe(exc)}"
            exchange.transport_verdict = (Outcome.TEMPORARY, "provider_timeout", redact(message))
        except Exception as exc:  # noqa: BLE001 - else temporary network_error (docs/upstream.md#notification-sending)
            exchange.transport_verdict = (Outcome.TEMPORARY, "network_error", redact(_describe(exc)))
        exchange.latency = time.perf_counter() - started
        return exchange

    def _result(self, channel: ChannelConfig, req: SendRequest, exchange: _Exchange, redact: _Redactor) -> SendResult:
        if exchange.transport_verdict is not None or exchange.status is None:
            outcome, code, message = exchange.transport_verdict or (Outcome.TEMPORARY, "network_error", "no response")
            return SendResult(outcome, code, message, latency_seconds=exchange.latency)
        response_json: dict[str, Any] = {"status_code": exchange.status}
        if exchange.body:
            response_json["body"] = redact(exchange.body.decode("utf-8", errors="replace"), limit=RESPONSE_READ_LIMIT)
        if exchange.read_error:
            response_json["read_error"] = exchange.read_error
            verdict: Verdict = (Outcome.TEMPORARY, "network_error", f"read response body: {exchange.read_error}")
        elif channel.kind == KIND_FLOW:
            verdict = classify_flow_response(exchange.status, exchange.body)
        else:
            verdict = classify_bot_response(exchange.status, exchange.body)
        outcome, code, message = verdict
        result = SendResult(outcome, code, redact(message), response_json=response_json)
        result.latency_seconds = exchange.latency
        if outcome is Outcome.SUCCESS:
            prefix = "feishu_webhook" if channel.kind == KIND_FLOW else "feishu_bot"
            result.provider_message_id = f"{prefix}_{req.notification_id}_{self._unix_nanos()}"
        elif outcome is Outcome.TEMPORARY:
            result.retry_after_seconds = parse_retry_after(exchange.headers, self._clock())
        return result

    def _unix_nanos(self) -> int:
        if self._clock is core_clock.unix:
            return core_clock.unix_nanos()
        return int(self._clock() * 1_000_000_000)

    def _logged(self, channel: ChannelConfig | None, req: SendRequest, url: str, result: SendResult) -> SendResult:
        logger.debug(
            "feishu webhook send kind=%s notification_id=%s attempt=%s url=%s outcome=%s code=%s "
            "latency=%.3fs wait=%.3fs",
            channel.kind if channel is not None else "-",
            req.notification_id,
            req.attempt_count,
            mask_webhook_url(url),
            result.outcome.value,
            result.error_code or "-",
            result.latency_seconds,
            result.rate_limit_wait_seconds,
        )
        return result


def _audit_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body as stored for audit: everything but the signature."""
    return {key: value for key, value in body.items() if key != "sign"}


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
