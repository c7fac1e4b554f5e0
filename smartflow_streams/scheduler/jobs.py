"""Due jobs (docs/upstream.md#due-jobs): the task-side upsert helper and the scanner that turns due jobs into triggers.

Scanner invariants:

* One batch per call: ``status='pending' AND trigger_at <= now`` (not soft-deleted), ordered by ``trigger_at, id``,
  at most ``scheduler.job_scan_limit`` jobs (default 50).
* **Each job in its own transaction**, under its row lock: ``SELECT ... FOR UPDATE SKIP LOCKED`` on
  MySQL/MariaDB (a job another scanner holds is skipped, never waited for), SQLite's ``BEGIN IMMEDIATE``
  serialises writers. The job is re-read under the lock and must still be ``pending`` and due, so two scanners
  never both trigger one job. The trigger row, its outbox row and the job update commit together.
* The task is re-read through a :class:`TaskReader` (never trust the job). Rules, first match wins, every update
  sets ``last_scanned_at``:

  ======================================== ============ ==========================
  condition                                job status   ``last_error_code``
  ======================================== ============ ==========================
  reader raised                            failed       task_read_failed
  task missing                             skipped      task_not_found
  task completed                           canceled     task_completed
  threshold removed                        canceled     task_not_schedulable
  threshold now in the future              pending      threshold_moved_future (``trigger_at`` moved)
  priority not 1 or 2                      skipped      task_not_important
  scheduled within [now, now + 24 h]       skipped      task_already_scheduled
  schedule reader raised                   failed       schedule_read_failed
  trigger creation raised                  failed       trigger_publish_failed (separate transaction)
  otherwise: trigger created / dedupe hit  triggered    (cleared), ``last_trigger_id`` set
  ======================================== ============ ==========================

* ``failed`` jobs are never rescanned; only :func:`upsert_job` (a task update) re-arms them
  (docs/upstream.md#job-upsert-re-arms-jobs).
* A reader runs inside the job's transaction while the job row is locked: keep it fast (no network calls of
  more than a few hundred milliseconds).

There is no task service in this project: :class:`JobOnlyTaskReader` (the default) trusts the job itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from config import Settings, get_settings
from smartflow_streams.core import clock
from smartflow_streams.contracts.dedupe import job_dedupe_key, job_id as make_job_id
from smartflow_streams.contracts.events import TargetType, TriggerSource, TriggerType
from smartflow_streams.db.models import active_schedule_jobs as jobs_t
from smartflow_streams.core.errors import ContractError
from smartflow_streams.scheduler.triggers import TriggerRequest, create_trigger
from smartflow_streams.contracts.gotime import db_naive, format_go_time, to_zone

log = logging.getLogger(__name__)

IMPORTANT_PRIORITIES: frozenset[int] = frozenset({1, 2})
ALREADY_SCHEDULED_WINDOW = timedelta(hours=24)
ERROR_MAX_CHARS = 2000


class JobStatus(StrEnum):
    PENDING = "pending"
    TRIGGERED = "triggered"
    CANCELED = "canceled"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass
class TaskInfo:
    task_id: int
    user_id: int
    completed: bool
    urgency_threshold_at: datetime | None
    priority: int


@runtime_checkable
class TaskReader(Protocol):
    """Reads the task behind a job. Both methods run inside the job's locked transaction (``session``)."""

    async def get_task(self, session: AsyncSession, user_id: int, task_id: int) -> TaskInfo | None:
        """The task, or ``None`` when it does not exist. Raise on read errors."""
        ...

    async def scheduled_within(self, session: AsyncSession, user_id: int, task_id: int,
                               start: datetime, end: datetime) -> bool:
        """Whether the task already has a schedule slot in ``[start, end]`` (naive, configured zone)."""
        ...


class JobOnlyTaskReader:
    """Default reader when no task service exists: **the job is the only source of truth**.

    ``get_task`` answers from the job row ``asj_task_<user>_<task>`` itself: the task exists (if the job does), is
    not completed, its threshold is the job's ``trigger_at`` and its priority is 1; ``scheduled_within`` is always
    ``False``. So every due pending job becomes a trigger; the task-side rules (completed, not important,
    already scheduled, moved threshold) only apply with a real reader, or when the task service cancels/re-arms
    jobs through :func:`cancel_pending_job` / :func:`upsert_job`.
    """

    async def get_task(self, session: AsyncSession, user_id: int, task_id: int) -> TaskInfo | None:
        select = sa.select(jobs_t.c.trigger_at).where(
            jobs_t.c.id == make_job_id(user_id, task_id), jobs_t.c.deleted_at.is_(None))
        trigger_at = (await session.execute(select)).scalar_one_or_none()
        if trigger_at is None:
            return None
        return TaskInfo(task_id=task_id, user_id=user_id, completed=False, urgency_threshold_at=trigger_at,
                        priority=1)

    async def scheduled_within(self, session: AsyncSession, user_id: int, task_id: int,
                               start: datetime, end: datetime) -> bool:
        return False


@dataclass
class JobScanStats:
    """Counts of one scan. ``scanned`` = jobs examined under their lock; ``errors`` = jobs left unchanged by an
    unexpected error (logged; they are due again on the next scan)."""

    scanned: int = 0
    triggered: int = 0
    skipped: int = 0
    canceled: int = 0
    failed: int = 0
    moved: int = 0
    errors: int = 0


# -- task-service side -------------------------------------------------------------------------------------------


def _zone(settings: Settings | None) -> Any:
    return (settings or get_settings()).zone


async def upsert_job(session: AsyncSession, user_id: int, task_id: int, urgency_threshold_at: datetime,
                     trace_id: str = "", *, settings: Settings | None = None) -> str:
    """Arm the task's due job (id ``asj_task_<user>_<task>``) in ``session``'s transaction; returns the job id.

    Upstream semantics: insert, or overwrite on conflict: ``status=pending``, ``trigger_at``, ``dedupe_key``
    (30-minute window of the threshold), ``trace_id`` (default ``trace_active_task_<u>_<t>``), errors cleared,
    soft delete undone. This **re-arms** a ``triggered``/``failed``/``canceled`` job
    (docs/upstream.md#job-upsert-re-arms-jobs): intended after a
    task update, but a task update that does not change the threshold also re-arms a job that already fired
    (the trigger dedupe key then collapses it within the same window). ``last_trigger_id`` and ``created_at``
    are kept (history), unlike upstream's all-column overwrite. A naive threshold is in the configured zone.
    """
    if urgency_threshold_at is None:
        raise ContractError("upsert_job needs urgency_threshold_at; use cancel_pending_job for tasks without one")
    if user_id <= 0 or task_id <= 0:
        raise ContractError("upsert_job needs user_id > 0 and task_id > 0")
    zone = _zone(settings)
    threshold = to_zone(urgency_threshold_at, zone)
    jid, now = make_job_id(user_id, task_id), clock.db_now()
    values = {
        "user_id": user_id, "task_id": task_id, "trigger_type": TriggerType.IMPORTANT_URGENT_TASK.value,
        "status": JobStatus.PENDING.value, "trigger_at": db_naive(threshold, zone),
        "dedupe_key": job_dedupe_key(user_id, task_id, threshold, zone=zone),
        "trace_id": trace_id.strip() or f"trace_active_task_{user_id}_{task_id}",
        "last_error_code": None, "last_error": None, "updated_at": now, "deleted_at": None,
    }
    await session.execute(_upsert_statement(session, {"id": jid, "created_at": now, **values}, values))
    return jid


def _upsert_statement(session: AsyncSession, insert_values: dict[str, Any], update_values: dict[str, Any]) -> Any:
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(jobs_t).values(**insert_values)
        return stmt.on_conflict_do_update(index_elements=[jobs_t.c.id], set_=update_values)
    from sqlalchemy.dialects.mysql import insert as mysql_insert

    stmt = mysql_insert(jobs_t).values(**insert_values)
    return stmt.on_duplicate_key_update(**update_values)


async def cancel_pending_job(session: AsyncSession, user_id: int, task_id: int,
                             code: str = "task_not_schedulable") -> bool:
    """Task completed or threshold removed: cancel the task's ``pending`` job, if any. Returns whether one was."""
    now = clock.db_now()
    result = await session.execute(sa.update(jobs_t).where(
        jobs_t.c.id == make_job_id(user_id, task_id), jobs_t.c.status == JobStatus.PENDING.value,
    ).values(status=JobStatus.CANCELED.value, last_error_code=code, updated_at=now))
    return bool(result.rowcount)


# -- scanner -----------------------------------------------------------------------------------------------------


class _TriggerFailed(Exception):
    """create_trigger raised: roll the job's transaction back, then mark the job failed separately."""


async def _due_job_ids(sessions: Callable[[], AsyncSession], limit: int) -> list[str]:
    j = jobs_t
    now = clock.db_now()
    async with sessions() as session:
        select = (sa.select(j.c.id)
                  .where(j.c.status == JobStatus.PENDING.value, j.c.trigger_at <= now, j.c.deleted_at.is_(None))
                  .order_by(j.c.trigger_at, j.c.id).limit(limit))
        return list((await session.execute(select)).scalars())


async def _lock_job(session: AsyncSession, jid: str) -> Any | None:
    select = sa.select(jobs_t).where(jobs_t.c.id == jid, jobs_t.c.deleted_at.is_(None))
    if session.bind is not None and session.bind.dialect.name != "sqlite":
        select = select.with_for_update(skip_locked=True)
    return (await session.execute(select)).mappings().first()


async def _set_job(session: AsyncSession, jid: str, status: str, code: str | None = None, error: str | None = None,
                   **extra: Any) -> None:
    now = clock.db_now()
    await session.execute(sa.update(jobs_t).where(jobs_t.c.id == jid).values(
        status=status, last_error_code=code, last_error=None if error is None else error[:ERROR_MAX_CHARS],
        last_scanned_at=now, updated_at=now, **extra))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _apply_rules(session: AsyncSession, job: Any, reader: TaskReader, settings: Settings) -> str:
    """docs/upstream.md#due-jobs rules for one locked, due job; returns the JobScanStats field to count."""
    jid, user_id, task_id = job["id"], int(job["user_id"]), int(job["task_id"])
    try:
        task = await reader.get_task(session, user_id, task_id)
    except Exception as exc:  # noqa: BLE001 - any reader failure is recorded on the job
        await _set_job(session, jid, JobStatus.FAILED.value, "task_read_failed", _describe(exc))
        return "failed"
    if task is None:
        await _set_job(session, jid, JobStatus.SKIPPED.value, "task_not_found")
        return "skipped"
    if task.completed:
        await _set_job(session, jid, JobStatus.CANCELED.value, "task_completed")
        return "canceled"
    if task.urgency_threshold_at is None:
        await _set_job(session, jid, JobStatus.CANCELED.value, "task_not_schedulable")
        return "canceled"
    now = clock.db_now()
    threshold = db_naive(task.urgency_threshold_at, settings.zone)
    if threshold > now:
        await _set_job(session, jid, JobStatus.PENDING.value, "threshold_moved_future", trigger_at=threshold,
                       dedupe_key=job_dedupe_key(user_id, task_id, threshold, zone=settings.zone))
        return "moved"
    if task.priority not in IMPORTANT_PRIORITIES:
        await _set_job(session, jid, JobStatus.SKIPPED.value, "task_not_important")
        return "skipped"
    try:
        scheduled = await reader.scheduled_within(session, user_id, task_id, now, now + ALREADY_SCHEDULED_WINDOW)
    except Exception as exc:  # noqa: BLE001
        await _set_job(session, jid, JobStatus.FAILED.value, "schedule_read_failed", _describe(exc))
        return "failed"
    if scheduled:
        await _set_job(session, jid, JobStatus.SKIPPED.value, "task_already_scheduled")
        return "skipped"
    trigger_id = await _trigger_for_job(session, job, threshold, settings)
    await _set_job(session, jid, JobStatus.TRIGGERED.value, last_trigger_id=trigger_id)
    return "triggered"


async def _trigger_for_job(session: AsyncSession, job: Any, threshold: datetime, settings: Settings) -> str:
    jid = job["id"]
    request = TriggerRequest(
        user_id=int(job["user_id"]), trigger_type=TriggerType.IMPORTANT_URGENT_TASK.value,
        source=TriggerSource.WORKER_DUE_JOB.value, target_type=TargetType.TASK_POOL.value,
        target_id=int(job["task_id"]), dedupe_key=job["dedupe_key"] or "",
        payload={"job_id": jid, "urgency_threshold_at": format_go_time(to_zone(threshold, settings.zone))},
        trace_id=job["trace_id"] or f"trace_active_job_{jid}", job_id=jid,
    )
    try:
        return (await create_trigger(session, request, settings)).trigger_id
    except Exception as exc:
        raise _TriggerFailed(_describe(exc)) from exc


async def _scan_one(sessions: Callable[[], AsyncSession], jid: str, reader: TaskReader, settings: Settings) -> str:
    """Process one job in its own transaction; returns the stat to count ("" = not examined)."""
    try:
        async with sessions() as session, session.begin():
            job = await _lock_job(session, jid)
            if job is None or job["status"] != JobStatus.PENDING or job["trigger_at"] > clock.db_now():
                return ""  # taken by another scanner, changed, or no longer due
            return await _apply_rules(session, job, reader, settings)
    except _TriggerFailed as exc:
        log.warning("due job %s: trigger creation failed: %s", jid, exc)
        await _mark_job_failed(sessions, jid, "trigger_publish_failed", str(exc))
        return "failed"


async def _mark_job_failed(sessions: Callable[[], AsyncSession], jid: str, code: str, error: str) -> None:
    async with sessions() as session, session.begin():
        now = clock.db_now()
        await session.execute(sa.update(jobs_t).where(
            jobs_t.c.id == jid, jobs_t.c.status == JobStatus.PENDING.value,
        ).values(status=JobStatus.FAILED.value, last_error_code=code, last_error=error[:ERROR_MAX_CHARS],
                 last_scanned_at=now, updated_at=now))


async def scan_due_jobs(sessions: Callable[[], AsyncSession], reader: TaskReader, settings: Settings) -> JobScanStats:
    """One scanner pass (module docstring). Safe to run concurrently in several processes.

    A failing selection of due jobs raises (the caller's timer logs it); an unexpected error on one job is logged,
    counted in ``errors`` and leaves that job unchanged (its transaction rolled back).
    """
    stats = JobScanStats()
    for jid in await _due_job_ids(sessions, settings.scheduler.job_scan_limit):
        try:
            stat = await _scan_one(sessions, jid, reader, settings)
        except Exception:  # noqa: BLE001 - one bad job must not stop the batch
            log.warning("due job %s: scan failed", jid, exc_info=True)
            stats.errors += 1
            continue
        if stat:
            stats.scanned += 1
            setattr(stats, stat, getattr(stats, stat) + 1)
    return stats


__all__ = [
    "ALREADY_SCHEDULED_WINDOW",
    "IMPORTANT_PRIORITIES",
    "JobOnlyTaskReader",
    "JobScanStats",
    "JobStatus",
    "TaskInfo",
    "TaskReader",
    "cancel_pending_job",
    "scan_due_jobs",
    "upsert_job",
]
