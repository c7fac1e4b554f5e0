"""``notification.feishu.requested`` handler (owner: notification): the record state machine and the webhook
call (:class:`smartflow_streams.notification.service.NotificationService`), which marks the outbox row itself.
"""

from __future__ import annotations

from smartflow_streams.catalog import NOTIFICATION
from smartflow_streams.contracts.events import NOTIFICATION_FEISHU_REQUESTED, FeishuNotificationRequestedPayload
from smartflow_streams.handlers import HandlerContext, handlers
from smartflow_streams.notification.service import HandleResult


@handlers.custom(NOTIFICATION_FEISHU_REQUESTED, service=NOTIFICATION, model=FeishuNotificationRequestedPayload)
async def on_requested(ctx: HandlerContext, payload: FeishuNotificationRequestedPayload) -> HandleResult:
    return await ctx.runtime.notifications.handle_requested(ctx.repo, ctx.envelope.outbox_id, payload)
