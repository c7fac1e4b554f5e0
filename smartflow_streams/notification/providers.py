"""Feishu webhook delivery: one HTTP POST per attempt, classified into an :class:`Outcome`.

Two webhook kinds share one provider (:class:`ChannelConfig.kind`):

* ``flow`` — the upstream target (spec 9.6): a user's own *Feishu Flow* trigger webhook
  ``https://{feishu.cn|www.feishu.cn}/flow/api/trigger-webhook/...``; JSON event body, optional
  ``Authorization: Bearer``, no signing.
* ``bot`` — a Feishu/Lark *custom bot* (field notes section 3):
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
  errors become ``temporary_fail`` ``network_error`` as upstream (spec 9.4 step 3).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from email.utils import parsedate_to_datetime
from enum import Enum
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

from config import NotificationSettings
from smartflow_streams.errors import ContractError
from smartflow_streams.masking import mask_webhook_url, scrub_text
from smartflow_streams.notification.limiter import RateLimiter, RateLimitWait

logger = logging.getLogger(__name__)

KIND_FLOW = "flow"
KIND_BOT = "bot"
BOT_MSG_TYPES = ("text", "post", "interactive")

EVENT_NAME = "smartflow.schedule_adjustment_ready"
EVENT_VERSION = "1"
MESSAGE_TITLE = "SmartFlow 日程调整建议"
ACTION_TEXT = "查看并确认调整"
DEFAULT_MESSAGE_TEXT = "我为你生成了一份日程调整建议，请回到系统确认是否应用。"
DEFAULT_FRONTEND_BASE_URL = "https://smartflow.example.com"
CONTENT_TYPE = "application/json; charset=utf-8"
RESPONSE_READ_LIMIT = 64 * 1024
ERROR_MESSAGE_MAX_CHARS = 500

FLOW_HOSTS = frozenset({"feishu.cn", "www.feishu.cn"})
BOT_HOSTS = frozenset({"open.feishu.cn", "open.larksuite.com"})
FLOW_PATH_PREFIX = "/flow/api/trigger-webhook/"
_BOT_PATH_RE = re.compile(r"/open-apis/bot/v2/hook/[A-Za-z0-9._~-]+")
_FLOW_PATH_RE = re.compile(re.escape(FLOW_PATH_PREFIX) + r"[A-Za-z0-9._~-]+")
_KIND_HOSTS = {KIND_FLOW: FLOW_HOSTS, KIND_BOT: BOT_HOSTS}

# Feishu custom-bot business codes (field notes C.4) that are not rate limits.
_BOT_PERMANENT_CODES = {
    9499: "payload_invalid",
    19001: "bot_token_invalid",
    19002: "payload_invalid",
    19021: "bot_sign_failed",
    19022: "bot_ip_denied",
    19024: "bot_keyword_missing",
}
_BOT_RATE_LIMIT_CODES = frozenset({11232, 99991400})
_RATE_LIMIT_MESSAGES = ("too many request", "frequency limit")


class Outcome(str, Enum):
    SUCCESS = "success"
    TEMPORARY = "temporary_fail"
    PERMANENT = "permanent_fail"
    SKIPPED = "skipped"

    @property
    def retriable(self) -> bool:
        return self is Outcome.TEMPORARY


class InvalidWebhookURL(ContractError):
    """The webhook URL breaks the rules of its kind or the host allow-list. The message never contains the URL."""

    code = "invalid_url"


class PayloadError(ContractError):
    """The channel asks for a body this provider cannot build (e.g. an unknown bot ``msg_type``)."""

    code = "payload_invalid"


@dataclass(frozen=True)
class ChannelConfig:
    """A user's webhook channel. Credentials are excluded from ``repr``."""

    webhook_url: str = field(repr=False)
    enabled: bool = True
    auth_type: str = "none"
    bearer_token: str = field(default="", repr=False)
    kind: str = KIND_FLOW
    sign_secret: str = field(default="", repr=False)
    msg_type: str = "text"

    @property
    def webhook_url_mask(self) -> str:
        return mask_webhook_url(self.webhook_url)


@dataclass(frozen=True)
class SendRequest:
    notification_id: int
    user_id: int
    trigger_id: str
    preview_id: str
    trigger_type: str
    target_type: str
    target_id: int
    target_url: str
    message_text: str
    fallback_used: bool
    trace_id: str
    attempt_count: int


@dataclass
class SendResult:
    outcome: Outcome
    error_code: str = ""
    error_message: str = ""
    provider_message_id: str = ""
    request_json: dict[str, Any] = field(default_factory=dict)
    response_json: dict[str, Any] = field(default_factory=dict)
    latency_seconds: float = 0.0
    retry_after_seconds: float | None = None
    rate_limit_wait_seconds: float = 0.0


# --------------------------------------------------------------------------------------------- URL validation


def validate_webhook_url(url: str, kind: str, settings: NotificationSettings) -> None:
    """Raise :class:`InvalidWebhookURL` unless ``url`` is acceptable for ``kind``.

    Strict (default): ``https``, port 443, host in the kind's hosts **and** in ``settings.allowed_hosts``, and
    the kind's path with exactly one token segment (flow: ``/flow/api/trigger-webhook/<token>``; bot:
    ``/open-apis/bot/v2/hook/<token>``; token characters ``A-Za-z0-9._~-``).
    With ``settings.allow_plain_http``: ``http`` or ``https``, any port, any path, host in
    ``settings.allowed_hosts`` (e.g. ``127.0.0.1`` for tests), and port in ``settings.allowed_ports`` when that is
    set (the demo pins its receiver's port, so a user cannot aim a webhook at the worker's own admin routes). Always
    rejected: user info, whitespace or control
    characters, backslashes, ``.``/``..`` path segments.
    """
    if kind not in _KIND_HOSTS:
        raise InvalidWebhookURL(f"unknown webhook kind {kind!r}; expected 'flow' or 'bot'")
    text = (url or "").strip()
    if not text:
        raise InvalidWebhookURL("webhook URL is empty")
    if "\\" in text or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise InvalidWebhookURL("webhook URL contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(text)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        raise InvalidWebhookURL("webhook URL cannot be parsed") from None
    if "@" in parts.netloc:
        raise InvalidWebhookURL("webhook URL must not contain user info")
    if any(unquote(segment) in (".", "..") for segment in parts.path.split("/")):
        raise InvalidWebhookURL("webhook URL path must not contain '.' or '..' segments")
    allowed = {h.strip().lower() for h in settings.allowed_hosts if h.strip()}
    if settings.allow_plain_http:
        _check_permissive(parts.scheme, host, allowed)
        effective_port = port or {"http": 80, "https": 443}.get(parts.scheme)
        if settings.allowed_ports and effective_port not in settings.allowed_ports:
            raise InvalidWebhookURL("webhook URL port is not in notification.allowed_ports")
        return
    _check_strict(parts.scheme, host, port, parts.path, kind, allowed)


def _check_permissive(scheme: str, host: str, allowed: set[str]) -> None:
    if scheme not in ("http", "https"):
        raise InvalidWebhookURL("webhook URL scheme must be http or https")
    if host not in allowed:
        raise InvalidWebhookURL(f"webhook host {host!r} is not in notification.allowed_hosts")


def _check_strict(scheme: str, host: str, port: int | None, path: str, kind: str, allowed: set[str]) -> None:
    if scheme != "https":
        raise InvalidWebhookURL("webhook URL scheme must be https")
    permitted = _KIND_HOSTS[kind] & allowed
    if host not in permitted:
        raise InvalidWebhookURL(f"webhook host {host!r} is not allowed for {kind} webhooks: {sorted(permitted)}")
    if port not in (None, 443):
        raise InvalidWebhookURL("webhook URL port must be 443")
    if kind == KIND_FLOW and not _FLOW_PATH_RE.fullmatch(path):
        raise InvalidWebhookURL(f"flow webhook path must be {FLOW_PATH_PREFIX}<token> (one token segment)")
    if kind == KIND_BOT and not _BOT_PATH_RE.fullmatch(path):
        raise InvalidWebhookURL("bot webhook path must be /open-apis/bot/v2/hook/<token>")


# ---------------------------------------------------------------------------------------------- body building


def build_action_url(target_url: str, frontend_base_url: str) -> str:
    """Absolute http(s) target URLs are kept; others become ``<base without trailing />/<target without leading />``."""
    target = (target_url or "").strip()
    if target.lower().startswith(("http://", "https://")):
        return target
    base = (frontend_base_url or "").strip().rstrip("/") or DEFAULT_FRONTEND_BASE_URL
    return f"{base}/{target.lstrip('/')}"


def format_sent_at(unix_seconds: float, zone: tzinfo = timezone.utc) -> str:
    """RFC 3339 with whole seconds, ``Z`` for a zero offset (as Go's ``time.RFC3339``)."""
    text = datetime.fromtimestamp(int(unix_seconds), zone).isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _message_text(req: SendRequest) -> str:
    return (req.message_text or "").strip() or DEFAULT_MESSAGE_TEXT


def build_flow_body(req: SendRequest, *, frontend_base_url: str, sent_at: str) -> dict[str, Any]:
    """The upstream Feishu Flow event (spec 9.6); ``trace_id`` omitted when empty."""
    body: dict[str, Any] = {
        "event": EVENT_NAME,
        "version": EVENT_VERSION,
        "notification_id": req.notification_id,
        "user_id": req.user_id,
        "preview_id": req.preview_id,
        "trigger_id": req.trigger_id,
        "trigger_type": req.trigger_type,
        "target_type": req.target_type,
        "target_id": req.target_id,
        "message": {
            "title": MESSAGE_TITLE,
            "summary": _message_text(req),
            "action_text": ACTION_TEXT,
            "action_url": build_action_url(req.target_url, frontend_base_url),
        },
    }
    if req.trace_id:
        body["trace_id"] = req.trace_id
    body["sent_at"] = sent_at
    return body


def build_bot_body(req: SendRequest, msg_type: str, *, frontend_base_url: str) -> dict[str, Any]:
    """A custom-bot message of ``msg_type`` text | post | interactive (unsigned)."""
    text = _message_text(req)
    action_url = build_action_url(req.target_url, frontend_base_url)
    if msg_type == "text":
        return {"msg_type": "text", "content": {"text": text}}
    if msg_type == "post":
        lines = [[{"tag": "text", "text": text}], [{"tag": "a", "text": ACTION_TEXT, "href": action_url}]]
        return {"msg_type": "post", "content": {"post": {"zh_cn": {"title": MESSAGE_TITLE, "content": lines}}}}
    if msg_type == "interactive":
        return {"msg_type": "interactive", "card": _bot_card(text, action_url)}
    raise PayloadError(f"unsupported bot msg_type {msg_type!r}; expected one of {', '.join(BOT_MSG_TYPES)}")


def _bot_card(text: str, action_url: str) -> dict[str, Any]:
    button = {
        "tag": "button",
        "text": {"tag": "plain_text", "content": ACTION_TEXT},
        "type": "primary",
        "url": action_url,
    }
    return {
        "config": {"wide_screen_mode": True},
        "header": {"template": "blue", "title": {"tag": "plain_text", "content": MESSAGE_TITLE}},
        "elements": [{"tag": "markdown", "content": text}, {"tag": "action", "actions": [button]}],
    }


def sign_bot_request(secret: str, timestamp: int) -> str:
    """Feishu custom-bot signature: ``base64(HMAC_SHA256(key=f"{timestamp}\\n{secret}", msg=b""))``."""
    key = f"{timestamp}\n{secret}".encode("utf-8")
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode("ascii")


def encode_body(body: Mapping[str, Any]) -> bytes:
    """Compact JSON, non-ASCII kept as UTF-8 (this byte count is what ``max_body_bytes`` limits)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


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
    """Upstream table (spec 9.6) for a Feishu Flow webhook response that was fully read."""
    if 200 <= status < 300:
        data = _json_object(body) or {}
        code = _int_code(data.get("code"))
        if code:
            msg = data.get("msg")
            return Outcome.PERMANENT, "payload_invalid", msg if isinstance(msg, str) and msg else f"code={code}"
        return Outcome.SUCCESS, "", ""
    return _classify_status(status, body, rate_limit_code="provider_rate_limited")


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
    """A non-zero custom-bot business code (field notes C.4)."""
    message = f"code={code} msg={msg}"
    lowered = msg.lower()
    if code in _BOT_RATE_LIMIT_CODES or any(marker in lowered for marker in _RATE_LIMIT_MESSAGES):
        return Outcome.TEMPORARY, "bot_rate_limited", message
    return Outcome.PERMANENT, _BOT_PERMANENT_CODES.get(code, "payload_invalid"), message


def classify_bot_response(status: int, body: bytes) -> Verdict:
    """Custom-bot response: HTTP 429/5xx first, then the JSON ``code`` (or legacy ``StatusCode``), then status."""
    if status == 429 or status >= 500:
        return _classify_status(status, body, rate_limit_code="bot_rate_limited")
    data = _json_object(body)
    code, msg = _bot_code(data) if data is not None else (None, "")
    if code:
        return classify_bot_code(code, msg)
    if 200 <= status < 300:
        if code == 0:
            return Outcome.SUCCESS, "", ""
        return Outcome.TEMPORARY, "network_error", f"unexpected bot response (no JSON code): {_snippet(body)}"
    return _classify_status(status, body, rate_limit_code="bot_rate_limited")


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
        clock: Callable[[], float] = time.time,
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
        except Exception as exc:  # noqa: BLE001 - any other failure is a temporary network error (spec 9.4)
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
        if self._clock is time.time:
            return time.time_ns()
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
