"""``notification.feishu.requested`` handler (owner: notification): the record state machine and the webhook
call (:class:`smartflow_streams.notification.service.NotificationService`), which marks the outbox rows itself.
A batch goes through :meth:`NotificationService.handle_requested_many` (2 short transactions for the whole batch,
the POSTs concurrently between them).
"""

from __future__ import annotations

from typing import Any

from smartflow_streams.catalog import NOTIFICATION
from smartflow_streams.contracts.events import NOTIFICATION_FEISHU_REQUESTED, FeishuNotificationRequestedPayload
from smartflow_streams.startup.handlers import HandlerContext, handlers
from smartflow_streams.notification.service import HandleResult


async def _on_requested_many(ctx: HandlerContext,
                             items: list[tuple[int, FeishuNotificationRequestedPayload]]) -> list[Any]:
    return await ctx.runtime.notifications.handle_requested_many(ctx.repo, items, ctx.activate)


@handlers.custom(NOTIFICATION_FEISHU_REQUESTED, service=NOTIFICATION, model=FeishuNotificationRequestedPayload,
                 batch=_on_requested_many)
async def on_requested(ctx: HandlerContext, payload: FeishuNotificationRequestedPayload) -> HandleResult:
    assert ctx.envelope is not None
    return await ctx.runtime.notifications.handle_requested(ctx.repo, ctx.envelope.outbox_id, payload)
