"""Due jobs (docs/upstream.md#due-jobs) on MariaDB and SQLite: upsert, every scanner rule, concurrent scanners."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from smartflow_streams.core import clock
from smartflow_streams.contracts.envelope import OutboxEventShell
from smartflow_streams.contracts.events import ActiveScheduleTriggeredPayload
from smartflow_streams.db.models import active_schedule_jobs as jobs_t
from smartflow_streams.db.models import active_schedule_triggers as triggers_t
from smartflow_streams.outbox.repository import OutboxRepository
from smartflow_streams.scheduler.jobs import (
    JobOnlyTaskReader, TaskInfo, cancel_pending_job, scan_due_jobs, upsert_job,
)
from smartflow_streams.scheduler.triggers import TriggerRequest, create_trigger
from smartflow_streams.contracts.gotime import format_go_time

SH = ZoneInfo("Asia/Shanghai")


class FakeReader:
    """Task reader double: a fixed task (or exception) and a fixed schedule answer (or exception)."""

    def __init__(self, task=None, *, task_error=None, scheduled=False, schedule_error=None) -> None:
        self.task, self.task_error = task, task_error
        self.scheduled, self.schedule_error = scheduled, schedule_error
        self.windows: list[tuple[datetime, datetime]] = []

    async def get_task(self, session, user_id, task_id):
        if self.task_error:
            raise self.task_error
        return self.task

    async def scheduled_within(self, session, user_id, task_id, start, end):
        self.windows.append((start, end))
        if self.schedule_error:
            raise self.schedule_error
        return self.scheduled


def due_at() -> datetime:
    return clock.db_now() - timedelta(minutes=5)


async def arm(db, user_id: int = 42, task_id: int = 7, at: datetime | None = None, trace_id: str = "") -> str:
    async with db.sessions() as s, s.begin():
        return await upsert_job(s, user_id, task_id, at or due_at(), trace_id, settings=db.settings)


async def job(db, jid: str) -> dict:
    async with db.sessions() as s:
        return dict((await s.execute(sa.select(jobs_t).where(jobs_t.c.id == jid))).mappings().one())


async def triggers(db) -> list[dict]:
    async with db.sessions() as s:
        return [dict(r) for r in (await s.execute(sa.select(triggers_t))).mappings()]


async def outbox_count(db) -> int:
    table = OutboxRepository.for_event("active_schedule.triggered").table
    async with db.sessions() as s:
        return int((await s.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


def task(**overrides) -> TaskInfo:
    fields = dict(task_id=7, user_id=42, completed=False, urgency_threshold_at=due_at(), priority=1)
    fields.update(overrides)
    return TaskInfo(**fields)


async def test_upsert_creates_then_rearms_a_triggered_job(db) -> None:
    threshold = datetime(2026, 4, 30, 10, 12, 13, tzinfo=SH)
    jid = await arm(db, at=threshold)
    row = await job(db, jid)
    assert jid == "asj_task_42_7" and row["status"] == "pending"
    assert row["trigger_at"] == datetime(2026, 4, 30, 10, 12, 13)
    assert row["dedupe_key"] == "42:important_urgent_task:task_pool:7:2026-04-30T10:00:00+08:00"
    assert row["trace_id"] == "trace_active_task_42_7" and row["trigger_type"] == "important_urgent_task"
    async with db.sessions() as s, s.begin():
        await s.execute(sa.update(jobs_t).values(status="failed", last_error_code="task_read_failed",
                                                 last_trigger_id="ast_old"))
    await arm(db, at=threshold + timedelta(hours=1), trace_id="trace_custom")
    row = await job(db, jid)
    assert (row["status"], row["last_error_code"], row["trace_id"]) == ("pending", None, "trace_custom")
    assert row["dedupe_key"].endswith("2026-04-30T11:00:00+08:00") and row["last_trigger_id"] == "ast_old"
    async with db.sessions() as s:
        assert (await s.execute(sa.select(sa.func.count()).select_from(jobs_t))).scalar_one() == 1


async def test_cancel_pending_job(db) -> None:
    jid = await arm(db)
    async with db.sessions() as s, s.begin():
        assert await cancel_pending_job(s, 42, 7) is True
        assert await cancel_pending_job(s, 42, 8) is False
    row = await job(db, jid)
    assert (row["status"], row["last_error_code"]) == ("canceled", "task_not_schedulable")


async def test_due_job_becomes_a_trigger_with_job_only_reader(db) -> None:
    threshold = due_at()
    jid = await arm(db, at=threshold)
    stats = await scan_due_jobs(db.sessions, JobOnlyTaskReader(), db.settings)
    assert (stats.scanned, stats.triggered) == (1, 1)
    [trig] = await triggers(db)
    row = await job(db, jid)
    assert (row["status"], row["last_trigger_id"], row["last_error_code"]) == ("triggered", trig["id"], None)
    assert row["last_scanned_at"] is not None
    assert (trig["source"], trig["target_type"], trig["target_id"], trig["job_id"]) == (
        "worker_due_job", "task_pool", 7, jid)
    assert trig["dedupe_key"] == row["dedupe_key"] and trig["trace_id"] == "trace_active_task_42_7"
    table = OutboxRepository.for_event("active_schedule.triggered").table
    async with db.sessions() as s:
        [payload] = (await s.execute(sa.select(table.c.payload))).scalars().all()
    event = ActiveScheduleTriggeredPayload.parse(OutboxEventShell.parse(payload).payload)
    assert event.decoded() == {"job_id": jid, "urgency_threshold_at": format_go_time(threshold.replace(tzinfo=SH))}
    assert event.requested_at.tzinfo is not None and event.source == "worker_due_job"
    again = await scan_due_jobs(db.sessions, JobOnlyTaskReader(), db.settings)
    assert again.scanned == 0 and len(await triggers(db)) == 1


async def test_job_trace_falls_back_to_job_trace(db) -> None:
    jid = await arm(db)
    async with db.sessions() as s, s.begin():
        await s.execute(sa.update(jobs_t).values(trace_id=None))
    await scan_due_jobs(db.sessions, JobOnlyTaskReader(), db.settings)
    [trig] = await triggers(db)
    assert trig["trace_id"] == f"trace_active_job_{jid}"


@pytest.mark.parametrize(("reader", "status", "code", "stat"), [
    (FakeReader(task_error=RuntimeError("task db down")), "failed", "task_read_failed", "failed"),
    (FakeReader(None), "skipped", "task_not_found", "skipped"),
    (FakeReader(task(completed=True)), "canceled", "task_completed", "canceled"),
    (FakeReader(task(urgency_threshold_at=None)), "canceled", "task_not_schedulable", "canceled"),
    (FakeReader(task(priority=3)), "skipped", "task_not_important", "skipped"),
    (FakeReader(task(priority=0)), "skipped", "task_not_important", "skipped"),
    (FakeReader(task(), scheduled=True), "skipped", "task_already_scheduled", "skipped"),
    (FakeReader(task(), schedule_error=RuntimeError("calendar down")), "failed", "schedule_read_failed", "failed"),
], ids=["read_failed", "not_found", "completed", "no_threshold", "priority3", "priority0", "scheduled",
        "schedule_failed"])
async def test_scanner_rules_without_trigger(db, reader, status, code, stat) -> None:
    jid = await arm(db)
    stats = await scan_due_jobs(db.sessions, reader, db.settings)
    assert stats.scanned == 1 and getattr(stats, stat) == 1 and stats.triggered == 0
    row = await job(db, jid)
    assert (row["status"], row["last_error_code"]) == (status, code) and row["last_scanned_at"] is not None
    assert await triggers(db) == [] and await outbox_count(db) == 0
    if status == "failed":
        assert "down" in row["last_error"]
        assert (await scan_due_jobs(db.sessions, FakeReader(task()), db.settings)).scanned == 0  # never rescanned


async def test_priority_two_and_schedule_window(db) -> None:
    await arm(db)
    reader = FakeReader(task(priority=2))
    stats = await scan_due_jobs(db.sessions, reader, db.settings)
    assert stats.triggered == 1
    [(start, end)] = reader.windows
    assert end - start == timedelta(hours=24) and abs(start - clock.db_now()) < timedelta(seconds=5)


async def test_threshold_moved_to_the_future_keeps_the_job_pending(db) -> None:
    jid = await arm(db)
    future = clock.db_now() + timedelta(hours=2)
    stats = await scan_due_jobs(db.sessions, FakeReader(task(urgency_threshold_at=future)), db.settings)
    assert (stats.scanned, stats.moved) == (1, 1)
    row = await job(db, jid)
    assert (row["status"], row["last_error_code"], row["trigger_at"]) == ("pending", "threshold_moved_future",
                                                                          future)
    assert row["dedupe_key"].startswith("42:important_urgent_task:task_pool:7:") and await triggers(db) == []
    assert (await scan_due_jobs(db.sessions, JobOnlyTaskReader(), db.settings)).scanned == 0  # not due any more


async def test_dedupe_hit_still_marks_the_job_triggered(db) -> None:
    jid = await arm(db)
    row = await job(db, jid)
    async with db.sessions() as s, s.begin():
        existing = await create_trigger(s, TriggerRequest(
            user_id=42, trigger_type="important_urgent_task", source="api_trigger", target_type="task_pool",
            target_id=7, dedupe_key=row["dedupe_key"]), db.settings)
    stats = await scan_due_jobs(db.sessions, JobOnlyTaskReader(), db.settings)
    assert stats.triggered == 1
    assert (await job(db, jid))["last_trigger_id"] == existing.trigger_id
    assert len(await triggers(db)) == 1 and await outbox_count(db) == 1


async def test_trigger_creation_failure_marks_the_job_failed(db) -> None:
    now = clock.db_now()
    async with db.sessions() as s, s.begin():  # a job no trigger can be made from (user_id 0)
        await s.execute(sa.insert(jobs_t).values(id="asj_task_0_7", user_id=0, task_id=7, status="pending",
                                                 trigger_at=now - timedelta(minutes=1), dedupe_key="k",
                                                 created_at=now, updated_at=now))
    stats = await scan_due_jobs(db.sessions, FakeReader(task(user_id=0)), db.settings)
    assert (stats.scanned, stats.failed) == (1, 1)
    row = await job(db, "asj_task_0_7")
    assert (row["status"], row["last_error_code"]) == ("failed", "trigger_publish_failed")
    assert "user_id must be greater than 0" in row["last_error"] and row["last_scanned_at"] is not None
    assert await triggers(db) == [] and await outbox_count(db) == 0


async def test_jobs_not_due_or_not_pending_are_untouched(db) -> None:
    future = await arm(db, task_id=1, at=clock.db_now() + timedelta(minutes=30))
    done = await arm(db, task_id=2)
    deleted = await arm(db, task_id=3)
    async with db.sessions() as s, s.begin():
        await s.execute(sa.update(jobs_t).where(jobs_t.c.id == done).values(status="triggered"))
        await s.execute(sa.update(jobs_t).where(jobs_t.c.id == deleted).values(deleted_at=clock.db_now()))
    before = {jid: await job(db, jid) for jid in (future, done, deleted)}
    stats = await scan_due_jobs(db.sessions, JobOnlyTaskReader(), db.settings)
    assert stats.scanned == 0 and await triggers(db) == []
    assert {jid: await job(db, jid) for jid in before} == before


async def test_batch_limit_and_order(db) -> None:
    base = clock.db_now() - timedelta(hours=1)
    for task_id in range(1, 6):
        await arm(db, task_id=task_id, at=base + timedelta(minutes=10 - task_id))  # task 5 is the oldest
    settings = db.settings.model_copy(update={"scheduler": db.settings.scheduler.model_copy(
        update={"job_scan_limit": 2})})
    stats = await scan_due_jobs(db.sessions, JobOnlyTaskReader(), settings)
    assert stats.triggered == 2
    assert sorted(t["target_id"] for t in await triggers(db)) == [4, 5]


async def test_one_bad_job_does_not_stop_the_batch(db) -> None:
    bad, good = await arm(db, task_id=1), await arm(db, task_id=2)

    class Broken(FakeReader):
        async def get_task(self, session, user_id, task_id):
            return task(task_id=task_id, priority=[] if task_id == 1 else 1)  # unhashable: a bug in the reader

    stats = await scan_due_jobs(db.sessions, Broken(), db.settings)
    assert (stats.errors, stats.triggered, stats.scanned) == (1, 1, 1)
    row = await job(db, bad)
    assert (row["status"], row["last_scanned_at"]) == ("pending", None)  # rolled back, due again next scan
    assert (await job(db, good))["status"] == "triggered"


async def test_two_concurrent_scanners_trigger_each_job_exactly_once(db) -> None:
    for task_id in range(1, 31):
        await arm(db, task_id=task_id)

    class Slow(JobOnlyTaskReader):
        async def get_task(self, session, user_id, task_id):
            await asyncio.sleep(0.01)  # widen the window in which the other scanner competes
            return await super().get_task(session, user_id, task_id)

    a, b = await asyncio.gather(scan_due_jobs(db.sessions, Slow(), db.settings),
                                scan_due_jobs(db.sessions, Slow(), db.settings))
    assert a.triggered + b.triggered == 30 and a.errors == b.errors == 0
    rows = await triggers(db)
    assert len(rows) == 30 and len({r["target_id"] for r in rows}) == 30 and await outbox_count(db) == 30
    async with db.sessions() as s:
        statuses = (await s.execute(sa.select(jobs_t.c.status, jobs_t.c.last_trigger_id))).all()
    assert {st for st, _ in statuses} == {"triggered"}
    assert {tid for _, tid in statuses} == {r["id"] for r in rows}
