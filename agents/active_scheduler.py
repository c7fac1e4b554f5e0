"""``active_schedule.triggered`` handler (owner: active-scheduler): the trigger workflow inside the consume
transaction (docs/upstream.md#trigger-workflow). On failure the transaction rolls back and, afterwards, the trigger is
marked ``failed`` (``worker_failed``) in its own transaction, best effort, as upstream; the outbox row goes to retry.
A batch runs :func:`run_trigger_workflow_many` in one transaction (5 statements for the workflow + 2 for the outbox
rows, whatever the batch size); any failure in it sends the batch one by one, where the failing event is recorded.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from smartflow_streams.catalog import ACTIVE_SCHEDULER
from smartflow_streams.contracts.events import ACTIVE_SCHEDULE_TRIGGERED, ActiveScheduleTriggeredPayload
from smartflow_streams.core.errors import is_retriable
from smartflow_streams.startup.handlers import HandlerContext, handlers
from smartflow_streams.scheduler.workflow import mark_trigger_failed, run_trigger_workflow_many


async def _on_triggered_many(ctx: HandlerContext, session: AsyncSession,
                             payloads: list[ActiveScheduleTriggeredPayload]) -> list[Any]:
    return await run_trigger_workflow_many(
        session, payloads, builder=ctx.runtime.preview_builder, settings=ctx.runtime.settings)


async def _on_error(ctx: HandlerContext, payload: ActiveScheduleTriggeredPayload, exc: Exception) -> None:
    code = "worker_failed" if is_retriable(exc) else "payload_invalid"
    await mark_trigger_failed(ctx.sessions, payload.trigger_id, code, f"{type(exc).__name__}: {exc}")


@handlers.transactional(ACTIVE_SCHEDULE_TRIGGERED, service=ACTIVE_SCHEDULER, model=ActiveScheduleTriggeredPayload,
                        batch=_on_triggered_many, on_error=_on_error)
async def on_triggered(ctx: HandlerContext, session: AsyncSession, payload: ActiveScheduleTriggeredPayload) -> Any:
    return (await _on_triggered_many(ctx, session, [payload]))[0]
