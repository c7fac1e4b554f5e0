"""Feishu answer classification: an HTTP status and body (Flow webhook or custom bot) -> ``(Outcome, code, message)``.

Invariants: 429 and 5xx are temporary; 401/403 are ``provider_auth_failed``; other 4xx and non-zero Flow codes are
``payload_invalid``; custom-bot business codes map through :data:`_BOT_PERMANENT_CODES` (rate-limit codes and
messages are temporary ``bot_rate_limited``); a 2xx bot answer without a JSON ``code`` is a temporary
``network_error``. Messages quote at most 200 characters of the body (the caller redacts them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from smartflow_streams.notification.feishu.messages import Outcome

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

