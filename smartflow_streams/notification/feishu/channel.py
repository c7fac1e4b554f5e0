"""A user's Feishu channel: :class:`ChannelConfig` and the one mapping from a ``user_notification_channels`` row.

Invariants: credentials (URL, bearer token, signing secret) never appear in ``repr``; a NULL column maps to its
default (``auth_type`` ``none``, ``webhook_kind`` ``flow``, ``msg_type`` ``text``, empty strings otherwise).
Records use the channel name :data:`RECORD_CHANNEL` (``feishu``), channel configs :data:`CONFIG_CHANNEL`
(``feishu_webhook``): two spellings upstream uses for one channel, kept as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smartflow_streams.core.masking import mask_webhook_url
from smartflow_streams.notification.feishu.body import BOT_MSG_TYPES
from smartflow_streams.notification.feishu.urls import KIND_BOT, KIND_FLOW

RECORD_CHANNEL = "feishu"  # records use "feishu" ...
CONFIG_CHANNEL = "feishu_webhook"  # ... channel configs use "feishu_webhook"
KINDS = (KIND_FLOW, KIND_BOT)
MSG_TYPES = BOT_MSG_TYPES


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


def channel_config(row: Mapping[str, Any]) -> ChannelConfig:
    """The channel config of a ``user_notification_channels`` row (the one place this mapping is written)."""
    return ChannelConfig(webhook_url=row["webhook_url"] or "", enabled=bool(row["enabled"]),
                         auth_type=row["auth_type"] or "none", bearer_token=row["bearer_token"] or "",
                         kind=row["webhook_kind"] or "flow", sign_secret=row["sign_secret"] or "",
                         msg_type=row["msg_type"] or "text")
