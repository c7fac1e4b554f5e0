"""End to end with real processes: Tansu, MariaDB/SQLite, the relay, `faust worker` processes and a local Feishu.

Triggers are inserted the way the Go services write them (raw SQL rows, Go-shaped JSON), so this also proves the
Python side consumes upstream rows unchanged.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import aiohttp
import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer

import config
from smartflow_streams.core import clock
from smartflow_streams.db.models import (
    active_schedule_triggers, notification_records, outbox_table, user_notification_channels,
)
from smartflow_streams.cli.embedded import free_port
from tests.kit.support import (
    FakeFeishu, TopicReader, kill9, spawn_relay, spawn_worker, terminate, wait_for, wait_worker_ready, worker_env,
    write_upstream_trigger,
)

pytestmark = pytest.mark.slow
AS_TABLE = outbox_table("active_scheduler_outbox_messages")
N_TABLE = outbox_table("notification_outbox_messages")


async def add_channels(db, feishu: FakeFeishu, users: list[int]) -> None:
    now = clock.db_now()
    async with db.engine.begin() as conn:
        for uid in users:
            await conn.execute(sa.insert(user_notification_channels).values(
                user_id=uid, channel="feishu_webhook", enabled=True, webhook_url=feishu.url(uid), auth_type="bearer",
                bearer_token=f"bearer-secret-{uid}", webhook_kind="flow", created_at=now, updated_at=now))


async def insert_upstream_trigger(db, topic: str, user_id: int, target_id: int, requested_at: datetime) -> str:
    """Exactly what Go's TriggerService + EnqueueActiveScheduleTriggeredInTx write (one transaction here)."""
    async with db.engine.begin() as conn:
        return await write_upstream_trigger(conn, topic, user_id, target_id, requested_at)


async def record_statuses(db) -> dict[str, int]:
    async with db.engine.connect() as conn:
        return dict((await conn.execute(sa.select(notification_records.c.status, sa.func.count())
                                        .group_by(notification_records.c.status))).all())


async def outbox_statuses(db, table) -> dict[str, int]:
    async with db.engine.connect() as conn:
        return dict((await conn.execute(sa.select(table.c.status, sa.func.count()).group_by(table.c.status))).all())


async def test_triggers_flow_to_one_post_each_with_retries_duplicates_and_replays(db, kafka_bootstrap, tmp_path):
    tag = uuid.uuid4().hex[:8]
    env = worker_env(db.url, kafka_bootstrap, tag, free_port())
    config.set_settings(config.load_settings(database_url=db.url))
    users = list(range(100, 130))
    per_user = {
        101: [(500, {"msg": "down"}, 0.0)],                           # 5xx -> failed -> retried -> sent
        102: [(429, {"code": 99991400}, 0.0)],                         # throttled -> retried -> sent
        103: [(200, {"code": 0}, 3.0)],                                 # slower than the 2 s timeout -> retried
        104: [(200, {"code": 9499, "msg": "Bad Request"}, 0.0)],       # business error -> dead, never resent
        105: [(401, {"msg": "unauthorized"}, 0.0)],                    # auth -> dead
    }
    async with FakeFeishu(per_user=per_user) as feishu:
        await add_channels(db, feishu, users)
        relay = spawn_relay(env, tmp_path / "relay.log")
        worker = spawn_worker(env, tmp_path / "worker.log")
        try:
            await wait_worker_ready(tmp_path / "worker.log")
            now = clock.now()
            for i, uid in enumerate(users):
                await insert_upstream_trigger(db, f"t.{tag}.active-scheduler", uid, 1000 + i, now)
            for uid in users[:5]:  # a second trigger in the same window: its notification is deduplicated
                await insert_upstream_trigger(db, f"t.{tag}.active-scheduler", uid, 5000 + uid, now)

            async def settled() -> bool:
                s = await record_statuses(db)
                return s.get("sent", 0) == 28 and s.get("dead", 0) == 2
            await wait_for(settled, 90, interval=0.5, what="28 sent + 2 dead notification records")
            await wait_for(lambda: _all_consumed(db, AS_TABLE, 35), 30, what="trigger rows consumed")
            await wait_for(lambda: _all_consumed(db, N_TABLE, 35), 30, what="notification rows consumed")
            counts = feishu.posts_by_user()
            assert sorted(counts) == users
            assert {u: c for u, c in counts.items() if c != 1} == {101: 2, 102: 2, 103: 2}
            assert all(h.get("Authorization", "").startswith("Bearer bearer-secret-") for h in feishu.headers)

            # replay: publish every envelope of both topics again, as a consumer-offset reset would
            async with TopicReader(kafka_bootstrap, [f"t.{tag}.active-scheduler", f"t.{tag}.notification"]) as r:
                await r.wait_count(70, 30)
                producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
                await producer.start()
                try:
                    for rec in list(r.records):
                        await producer.send_and_wait(rec.topic, rec.value, key=rec.key)
                finally:
                    await producer.stop()
            await asyncio.sleep(6)
            assert feishu.posts_by_user() == counts  # no re-send
            async with db.engine.connect() as conn:
                triggers = dict((await conn.execute(sa.select(active_schedule_triggers.c.status, sa.func.count())
                                                    .group_by(active_schedule_triggers.c.status))).all())
                previews = (await conn.execute(sa.text("SELECT COUNT(*) FROM active_schedule_previews"))).scalar()
            assert triggers == {"preview_generated": 35} and previews == 35
            # the consumption counters (Faust table, written once per batch and partition) count each row once
            async with aiohttp.ClientSession() as http:
                port = env["SMARTFLOW_WORKER__WEB_PORT"]
                async with http.get(f"http://127.0.0.1:{port}/outbox/") as response:
                    consumption = (await response.json())["consumption"]
            assert consumption["active-scheduler"].get("consumed") == 35, consumption
            assert consumption["notification"].get("consumed") == 35, consumption
            log = (tmp_path / "worker.log").read_text(errors="replace")
            assert "tok-user-" not in log and "bearer-secret" not in log
        finally:
            codes = (terminate(worker), terminate(relay))
        assert codes == (0, 0)


async def _all_consumed(db, table, n: int) -> bool:
    return (await outbox_statuses(db, table)).get("consumed", 0) == n


async def test_worker_killed_mid_stream_loses_nothing(db, kafka_bootstrap, tmp_path):
    tag = uuid.uuid4().hex[:8]
    env_a = worker_env(db.url, kafka_bootstrap, tag, free_port())
    env_b = {**env_a, "SMARTFLOW_WORKER__WEB_PORT": str(free_port()),
             "SMARTFLOW_WORKER__DATADIR": f"/tmp/sf-faust-{tag}-b"}
    config.set_settings(config.load_settings(database_url=db.url))
    users = list(range(2000, 2150))
    async with FakeFeishu(per_user={u: [(200, {"code": 0}, 0.05)] for u in users}) as feishu:
        await add_channels(db, feishu, users)
        relay = spawn_relay(env_a, tmp_path / "relay.log")
        worker_a = spawn_worker(env_a, tmp_path / "worker-a.log")
        worker_b = spawn_worker(env_b, tmp_path / "worker-b.log")
        try:
            await wait_worker_ready(tmp_path / "worker-a.log")
            await wait_worker_ready(tmp_path / "worker-b.log")
            now = clock.now()
            for i, uid in enumerate(users):
                await insert_upstream_trigger(db, f"t.{tag}.active-scheduler", uid, i + 1, now)

            async def some_sent() -> bool:
                return len(feishu.posts) >= 20
            await wait_for(some_sent, 60, interval=0.05, what="first posts")
            kill9(worker_a)  # mid-stream: it held half of the partitions

            async def all_sent() -> bool:
                return (await record_statuses(db)).get("sent", 0) == len(users)
            await wait_for(all_sent, 120, interval=0.5, what="every notification sent after the kill")
            await wait_for(lambda: _all_consumed(db, AS_TABLE, len(users)), 60, what="trigger rows consumed")
            await wait_for(lambda: _all_consumed(db, N_TABLE, len(users)), 60, what="notification rows consumed")
            counts = feishu.posts_by_user()
            assert sorted(counts) == users  # nothing lost
            duplicates = sum(c - 1 for c in counts.values())
            # only POSTs in flight when the worker died are sent again (after the sending lease), once each; the
            # dead worker had at most worker.max_in_flight (16) of them per agent
            assert max(counts.values()) <= 2 and duplicates <= config.WorkerSettings().max_in_flight, counts
        finally:
            kill9(worker_a)
            codes = (terminate(worker_b), terminate(relay))
        assert codes == (0, 0)
