"""Everything Feishu-specific in one room. Public names are re-exported here, so callers import
``from smartflow_streams.notification.feishu import WebhookProvider, ChannelConfig, ...``.

* :mod:`.urls` — which webhook URLs each kind (``flow``, ``bot``) may use, checked on save and at send.
* :mod:`.body` — the Flow event and custom-bot bodies, the fallback text, ``sent_at``, HMAC signing, encoding.
* :mod:`.channel` — :class:`ChannelConfig` and the one ``user_notification_channels`` row -> config mapping.
* :mod:`.messages` — :class:`SendRequest`, :class:`SendResult`, :class:`Outcome`.
* :mod:`.provider` — :class:`WebhookProvider`: one POST per attempt, rate limited, redacted, and the answer
  classification (HTTP status + body -> ``(Outcome, code, message)``, ``Retry-After`` parsing).
"""

from smartflow_streams.notification.feishu.body import (
    ACTION_TEXT, BOT_MSG_TYPES, DEFAULT_FRONTEND_BASE_URL, DEFAULT_MESSAGE_TEXT, EVENT_NAME, EVENT_VERSION,
    MESSAGE_TITLE, PayloadError, build_action_url, build_bot_body, build_flow_body, encode_body, format_sent_at,
    sign_bot_request,
)
from smartflow_streams.notification.feishu.channel import (
    CONFIG_CHANNEL, KINDS, MSG_TYPES, RECORD_CHANNEL, ChannelConfig, channel_config,
)
from smartflow_streams.notification.feishu.messages import Outcome, SendRequest, SendResult
from smartflow_streams.notification.feishu.provider import (
    CONTENT_TYPE, ERROR_MESSAGE_MAX_CHARS, RESPONSE_READ_LIMIT, Verdict, WebhookProvider, classify_bot_code,
    classify_bot_response, classify_flow_response, parse_retry_after,
)
from smartflow_streams.notification.feishu.urls import (
    BOT_HOSTS, FLOW_HOSTS, FLOW_PATH_PREFIX, KIND_BOT, KIND_FLOW, InvalidWebhookURL, validate_webhook_url,
)

__all__ = [
    "ACTION_TEXT", "BOT_HOSTS", "BOT_MSG_TYPES", "CONFIG_CHANNEL", "CONTENT_TYPE", "DEFAULT_FRONTEND_BASE_URL",
    "DEFAULT_MESSAGE_TEXT", "ERROR_MESSAGE_MAX_CHARS", "EVENT_NAME", "EVENT_VERSION", "FLOW_HOSTS",
    "FLOW_PATH_PREFIX", "KINDS", "KIND_BOT", "KIND_FLOW", "MESSAGE_TITLE", "MSG_TYPES", "RECORD_CHANNEL",
    "RESPONSE_READ_LIMIT", "ChannelConfig", "InvalidWebhookURL", "Outcome", "PayloadError", "SendRequest",
    "SendResult", "Verdict", "WebhookProvider", "build_action_url", "build_bot_body", "build_flow_body",
    "channel_config", "classify_bot_code", "classify_bot_response", "classify_flow_response", "encode_body",
    "format_sent_at", "parse_retry_after", "sign_bot_request", "validate_webhook_url",
]
