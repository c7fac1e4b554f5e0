"""Feishu request bodies: the Flow event, the custom-bot ``text``/``post``/``interactive`` messages, their signing.

Invariants: the message text falls back to :data:`DEFAULT_MESSAGE_TEXT` (the one copy of upstream's fallback
sentence) when empty; relative target URLs are joined to ``frontend_base_url``; ``sent_at`` is Go's
``time.RFC3339`` (whole seconds); the body is encoded compactly with ``ensure_ascii=False`` (that byte count is
what ``max_body_bytes`` limits); a signature is ``base64(HMAC_SHA256(key=f"{timestamp}\\n{secret}", msg=b""))``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime, timezone, tzinfo
from typing import Any

from smartflow_streams.contracts.gotime import format_rfc3339_seconds
from smartflow_streams.core.errors import ContractError
from smartflow_streams.notification.feishu.messages import SendRequest

BOT_MSG_TYPES = ("text", "post", "interactive")

EVENT_NAME = "smartflow.schedule_adjustment_ready"
EVENT_VERSION = "1"
MESSAGE_TITLE = "SmartFlow 日程调整建议"
ACTION_TEXT = "查看并确认调整"
DEFAULT_MESSAGE_TEXT = "我为你生成了一份日程调整建议，请回到系统确认是否应用。"
DEFAULT_FRONTEND_BASE_URL = "https://smartflow.example.com"


class PayloadError(ContractError):
    """The channel asks for a body this provider cannot build (e.g. an unknown bot ``msg_type``)."""

    code = "payload_invalid"



def build_action_url(target_url: str, frontend_base_url: str) -> str:
    """Absolute http(s) target URLs are kept; others become ``<base without trailing />/<target without leading />``."""
    target = (target_url or "").strip()
    if target.lower().startswith(("http://", "https://")):
        return target
    base = (frontend_base_url or "").strip().rstrip("/") or DEFAULT_FRONTEND_BASE_URL
    return f"{base}/{target.lstrip('/')}"


def format_sent_at(unix_seconds: float, zone: tzinfo = timezone.utc) -> str:
    """RFC 3339 with whole seconds, ``Z`` for a zero offset (Go's ``time.RFC3339``, :func:`format_rfc3339_seconds`)."""
    return format_rfc3339_seconds(datetime.fromtimestamp(int(unix_seconds), zone))


def _message_text(req: SendRequest) -> str:
    return (req.message_text or "").strip() or DEFAULT_MESSAGE_TEXT


def build_flow_body(req: SendRequest, *, frontend_base_url: str, sent_at: str) -> dict[str, Any]:
    """The upstream Feishu Flow event (docs/upstream.md#feishu-flow-webhook); ``trace_id`` omitted when empty."""
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

