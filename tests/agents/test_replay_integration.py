"""`smartflow replay` through real processes: relay, `faust worker`, Tansu, MariaDB/SQLite and a local webhook.
Replayed events of both services are consumed again, and no notification is POSTed twice."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa

import config
from smartflow_streams.core import clock
from smartflow_streams.db.models import (
    notification_records, outbox_admin_audit, outbox_table, user_notification_channels,
)
from smartflow_streams.cli.embedded import free_port
from tests.kit.support import (
    ROOT, FakeFeishu, spawn_relay, spawn_worker, terminate, wait_for, wait_worker_ready, worker_env,
    write_upstream_trigger,
)

pytestmark = pytest.mark.slow
AS_TABLE = outbox_table("active_scheduler_outbox_messages")
N_TABLE = outbox_table("notification_outbox_messages")


def replay(env: dict[str, str], service: str, *extra: str) -> str:
    done = subprocess.run([sys.executable, "-m", "smartflow_streams.cli", "replay", service, "--from-id", "1",
                           *extra], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_replayed_events_are_consumed_again_without_a_second_post(db, kafka_bootstrap, tmp_path) -> None:
    tag = uuid.uuid4().hex[:8]
    env = worker_env(db.url, kafka_bootstrap, tag, free_port())
    config.set_settings(config.load_settings(database_url=db.url))
    users = list(range(300, 310))
    async with FakeFeishu() as feishu:
        async with db.engine.begin() as conn:
            at = clock.db_now()
            await conn.execute(sa.insert(user_notification_channels), [dict(
                user_id=uid, channel="feishu_webhook", enabled=True, webhook_url=feishu.url(uid), auth_type="none",
                webhook_kind="flow", created_at=at, updated_at=at) for uid in users])
        relay = spawn_relay(env, tmp_path / "relay.log")
        worker = spawn_worker(env, tmp_path / "worker.log")
        try:
            await wait_worker_ready(tmp_path / "worker.log")
            now = clock.now()
            for i, uid in enumerate(users):
                async with db.engine.begin() as conn:
                    await write_upstream_trigger(conn, f"t.{tag}.active-scheduler", uid, 100 + i, now)

            async def consumed(table: sa.Table, n: int) -> bool:
                return (await outbox_statuses(db, table)).get("consumed", 0) == n
            await wait_for(lambda: consumed(N_TABLE, len(users)), 90, interval=0.5, what="first notifications")
            await wait_for(lambda: consumed(AS_TABLE, len(users)), 30, what="trigger rows consumed")
            assert feishu.posts_by_user() == {u: 1 for u in users}

            assert "would be republished" in replay(env, "notification")  # dry run first: nothing moves
            assert (await outbox_statuses(db, N_TABLE)) == {"consumed": len(users)}
            assert f"replayed {len(users)} row(s)" in replay(env, "notification", "--execute")
            assert f"replayed {len(users)} row(s)" in replay(env, "active-scheduler", "--execute")
            # the copies go through the relay and the worker like any row ...
            await wait_for(lambda: consumed(N_TABLE, 2 * len(users)), 90, interval=0.5, what="replayed notifications")
            await wait_for(lambda: consumed(AS_TABLE, 2 * len(users)), 60, interval=0.5, what="replayed triggers")
            # ... and a retry-scanner pass (0.5 s here) could not find anything to send either
            await wait_for(lambda: _no_open_records(db), 10, what="no open notification records")
            assert feishu.posts_by_user() == {u: 1 for u in users}  # no second POST
            async with db.engine.connect() as conn:
                records = dict((await conn.execute(sa.select(notification_records.c.status, sa.func.count())
                                                   .group_by(notification_records.c.status))).all())
                previews = (await conn.execute(sa.text("SELECT COUNT(*) FROM active_schedule_previews"))).scalar()
                actions = sorted((await conn.execute(sa.select(outbox_admin_audit.c.action))).scalars().all())
            assert records == {"sent": len(users)} and previews == len(users)
            assert actions == ["replay", "replay", "replay-dry-run", "replay-dry-run", "replay-dry-run"]
        finally:
            codes = (terminate(worker), terminate(relay))
        assert codes == (0, 0)


async def _no_open_records(db) -> bool:
    async with db.engine.connect() as conn:
        return not (await conn.execute(sa.select(sa.func.count()).where(
            notification_records.c.status.not_in(["sent"])))).scalar()


async def outbox_statuses(db, table: sa.Table) -> dict[str, int]:
    async with db.engine.connect() as conn:
        return dict((await conn.execute(sa.select(table.c.status, sa.func.count()).group_by(table.c.status))).all())
