"""Active-scheduler domain (docs/upstream.md#active-scheduler): trigger creation, the triggered workflow, due-job
scanning, previews.

Plain async functions over SQLAlchemy Core; the Faust agent (``agents.active_scheduler``) and the scanner timer
call them. Invariants shared by the modules:

* Every write that produces an event happens in the same transaction as the event's outbox row: trigger +
  ``active_schedule.triggered`` (:func:`create_trigger`), preview + ``notification.feishu.requested``
  (:func:`run_trigger_workflow`), job update + trigger + event (:func:`scan_due_jobs`, one transaction per job).
* "now" is always :func:`smartflow_streams.core.clock.db_now` (naive, configured zone, millisecond precision).
* Invalid input raises :class:`~smartflow_streams.core.errors.ContractError` (poison, never retried).
"""

from smartflow_streams.scheduler.jobs import (
    JobOnlyTaskReader,
    JobScanStats,
    JobStatus,
    TaskInfo,
    TaskReader,
    cancel_pending_job,
    scan_due_jobs,
    upsert_job,
)
from smartflow_streams.scheduler.preview import DeterministicPreviewBuilder, PreviewBuilder, PreviewDecision
from smartflow_streams.scheduler.triggers import (
    TriggerRequest,
    TriggerResult,
    TriggerStatus,
    create_trigger,
)
from smartflow_streams.scheduler.workflow import (
    PreviewStatus,
    WorkflowResult,
    mark_trigger_failed,
    run_trigger_workflow,
)

__all__ = [
    "DeterministicPreviewBuilder",
    "JobOnlyTaskReader",
    "JobScanStats",
    "JobStatus",
    "PreviewBuilder",
    "PreviewDecision",
    "PreviewStatus",
    "TaskInfo",
    "TaskReader",
    "TriggerRequest",
    "TriggerResult",
    "TriggerStatus",
    "WorkflowResult",
    "cancel_pending_job",
    "create_trigger",
    "mark_trigger_failed",
    "run_trigger_workflow",
    "scan_due_jobs",
    "upsert_job",
]
