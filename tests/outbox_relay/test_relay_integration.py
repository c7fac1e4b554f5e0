"""Relay against a real Tansu broker and real MariaDB/SQLite, with relays as real processes."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections import defaultdict
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

import config
from smartflow_streams.cli.embedded import free_port, start_tansu, stop_process
from smartflow_streams.outbox.repository import OutboxRepository
from tests.kit.support import TcpProxy, TopicReader, base_env, kill9, spawn_relay, terminate, wait_for

pytestmark = pytest.mark.slow
EVENT = "notification.feishu.requested"


def use_topic(db) -> tuple[str, OutboxRepository]:
    topic = f"t.{uuid.uuid4().hex[:8]}.notification"
    config.set_settings(config.load_settings(database_url=db.url, services={"notification": {"topic": topic}}))
    return topic, OutboxRepository.for_service("notification")


def relay_env(db, bootstrap: str, topic: str, **extra: str) -> dict[str, str]:
    return base_env(db.url, bootstrap, SMARTFLOW_RELAY__SERVICES='["notification"]',
                    SMARTFLOW_SERVICES__NOTIFICATION__TOPIC=topic, **extra)


async def insert(db, repo: OutboxRepository, n: int, keys: int = 20, start: int = 0) -> None:
    for chunk in range(start, start + n, 1000):
        async with db.sessions() as s, s.begin():
            for i in range(chunk, min(chunk + 1000, start + n)):
                await repo.enqueue(s, EVENT, {"seq": i}, message_key=str(i % keys), event_version="1")


async def status_counts(db, repo: OutboxRepository) -> dict[str, int]:
    t = repo.table
    async with db.engine.connect() as conn:
        return dict((await conn.execute(sa.select(t.c.status, sa.func.count()).group_by(t.c.status))).all())


def assert_key_order(records) -> None:
    """Per message key, outbox ids arrive in increasing order (first occurrence of each id)."""
    seen: set[int] = set()
    last: dict[bytes, int] = defaultdict(int)
    for r in records:
        oid = json.loads(r.value)["outbox_id"]
        if oid in seen:
            continue
        seen.add(oid)
        assert oid > last[r.key], f"key {r.key!r}: {oid} after {last[r.key]}"
        last[r.key] = oid


async def test_every_row_published_exactly_once_with_envelope_and_headers(db, kafka_bootstrap, tmp_path) -> None:
    topic, repo = use_topic(db)
    await insert(db, repo, 2000)
    async with TopicReader(kafka_bootstrap, [topic]) as reader:
        proc = spawn_relay(relay_env(db, kafka_bootstrap, topic), tmp_path / "relay.log")
        try:
            await reader.wait_count(2000, 60)
            await wait_for(lambda: _all(db, repo, "published", 2000), 30, what="all rows published")
            await asyncio.sleep(0.5)
        finally:
            assert terminate(proc) == 0, (tmp_path / "relay.log").read_text()[-3000:]
    ids = reader.outbox_ids()
    assert len(ids) == 2000 and len(set(ids)) == 2000  # exactly once
    assert_key_order(reader.records)
    first = reader.records[0]
    envelope = json.loads(first.value)
    assert envelope["event_type"] == EVENT and envelope["service_name"] == "notification"
    assert envelope["event_id"] == str(envelope["outbox_id"]) and envelope["payload"].keys() == {"seq"}
    headers = dict(first.headers)
    assert headers["event_type"] == EVENT.encode() and headers["service_name"] == b"notification"
    assert headers["event_version"] == b"1" and headers["event_id"] == str(envelope["outbox_id"]).encode()


async def _all(db, repo, status: str, n: int) -> bool:
    return (await status_counts(db, repo)).get(status, 0) == n


@pytest.mark.parametrize("exclusive", ["true", "false"])
async def test_three_concurrent_relays_never_publish_a_row_twice(db, kafka_bootstrap, tmp_path, exclusive) -> None:
    topic, repo = use_topic(db)
    total = 6000
    async with TopicReader(kafka_bootstrap, [topic]) as reader:
        procs = [spawn_relay(relay_env(db, kafka_bootstrap, topic, SMARTFLOW_RELAY__EXCLUSIVE=exclusive,
                                       SMARTFLOW_RELAY__BATCH_SIZE="200"), tmp_path / f"relay{i}.log")
                 for i in range(3)]
        try:
            await asyncio.sleep(1.0)
            await insert(db, repo, total)  # rows arrive while the relays run
            await reader.wait_count(total, 90)
            await wait_for(lambda: _all(db, repo, "published", total), 30, what="all published")
            await asyncio.sleep(0.5)
        finally:
            codes = [terminate(p) for p in procs]
    assert codes == [0, 0, 0]
    ids = reader.outbox_ids()
    assert len(ids) == total == len(set(ids)), f"{len(ids) - len(set(ids))} duplicates"
    if exclusive == "true":
        assert_key_order(reader.records)


async def test_kill9_mid_batch_then_restart_loses_nothing(db, kafka_bootstrap, tmp_path) -> None:
    topic, repo = use_topic(db)
    total = 20000
    await insert(db, repo, total)
    env = relay_env(db, kafka_bootstrap, topic, SMARTFLOW_RELAY__LEASE_SECONDS="2",
                    SMARTFLOW_RELAY__TABLE_LEASE_SECONDS="2", SMARTFLOW_RELAY__BATCH_SIZE="500")
    async with TopicReader(kafka_bootstrap, [topic]) as reader:
        for round_ in range(3):  # kill it repeatedly while it works
            proc = spawn_relay(env, tmp_path / f"relay{round_}.log")
            await wait_for(lambda: _published_at_least(db, repo, (round_ + 1) * 2000), 60, interval=0.02,
                           what="progress before the kill")
            kill9(proc)
        proc = spawn_relay(env, tmp_path / "relay-final.log")
        try:
            await wait_for(lambda: _all(db, repo, "published", total), 90, what="all rows published after restart")
            await reader.wait_count(total, 30)
        finally:
            assert terminate(proc) == 0
    ids = reader.outbox_ids()
    assert len(set(ids)) == total  # at least once: every row reached Kafka
    assert len(ids) - total <= 3 * 500, len(ids) - total  # at most one batch published but unmarked per kill


async def _published_at_least(db, repo, n: int) -> bool:
    return (await status_counts(db, repo)).get("published", 0) >= n


async def test_poison_and_legacy_rows(db, kafka_bootstrap, tmp_path) -> None:
    topic, repo = use_topic(db)
    await insert(db, repo, 3)
    t = repo.table
    async with db.engine.begin() as conn:
        for payload in ("{not json", '{"event_type":"","payload":{}}', '{"event_type":"x","payload":null}'):
            await conn.execute(sa.insert(t).values(biz_type=EVENT, service_name="notification", topic=topic,
                                                   message_key="1", payload=payload, status="pending",
                                                   next_retry_at=sa.literal_column("'2000-01-01 00:00:00'")))
        # valid but bigger than Kafka's max_request_size (1 MiB): dead at once, its batch-mates still delivered
        await conn.execute(sa.insert(t).values(biz_type=EVENT, service_name="notification", topic=topic,
                                               message_key="1", payload=json.dumps(
                                                   {"event_type": EVENT, "payload": {"blob": "x" * 1_100_000}}),
                                               status="pending", next_retry_at=sa.literal_column(
                                                   "'2000-01-01 00:00:00'")))
        # a legacy row: no service_name, written before service-level routing
        await conn.execute(sa.insert(t).values(biz_type=EVENT, service_name="", topic="smartflow.agent.outbox",
                                               message_key="9", payload=json.dumps(
                                                   {"event_type": EVENT, "payload": {"legacy": True}}),
                                               status="pending", next_retry_at=sa.literal_column(
                                                   "'2000-01-01 00:00:00'")))
    async with TopicReader(kafka_bootstrap, [topic]) as reader:
        proc = spawn_relay(relay_env(db, kafka_bootstrap, topic), tmp_path / "relay.log")
        try:
            await wait_for(lambda: _all(db, repo, "dead", 4), 30, what="poison rows dead")
            await reader.wait_count(4, 30)
        finally:
            terminate(proc)
    async with db.engine.connect() as conn:
        dead = (await conn.execute(sa.select(t.c.last_error, t.c.retry_count).where(t.c.status == "dead")
                                   .order_by(t.c.id))).all()
    assert len(dead) == 4 and all(e.startswith("failed to parse outbox event shell") for e, _ in dead[:3])
    assert "exceeds max_request_size" in dead[3][0] and dead[3][1] == 0, dead[3]  # not retried: it cannot succeed
    assert (await status_counts(db, repo)).get("published") == 4  # 3 rows + the legacy row, none held back
    legacy = [json.loads(r.value) for r in reader.records if r.key == b"9"]
    assert legacy and legacy[0]["service_name"] == "notification" and legacy[0]["event_version"] == "v1"


async def test_broker_stop_and_restart_under_load(db, tmp_path) -> None:
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker_log = open(tmp_path / "tansu.log", "ab")
    broker = start_tansu(port, broker_log)
    topic, repo = use_topic(db)
    env = relay_env(db, bootstrap, topic, SMARTFLOW_RELAY__PUBLISH_TIMEOUT_SECONDS="2",
                    SMARTFLOW_RELAY__TOPIC_CHECK_TIMEOUT_SECONDS="2")
    proc = spawn_relay(env, tmp_path / "relay.log")
    try:
        await insert(db, repo, 200, start=0)
        await wait_for(lambda: _all(db, repo, "published", 200), 30, what="first rows published")
        stop_process(broker)  # memory storage: the broker comes back empty
        await insert(db, repo, 200, start=200)  # rows keep arriving during the outage
        await asyncio.sleep(4)
        during = await status_counts(db, repo)
        assert during.get("published", 0) == 200 and during.get("pending", 0) == 200
        async with db.engine.connect() as conn:
            t = repo.table
            retried = (await conn.execute(sa.select(sa.func.count()).where(t.c.retry_count > 0))).scalar()
            errors = (await conn.execute(sa.select(t.c.last_error).where(t.c.retry_count > 0).limit(1))).scalar()
        assert retried > 0 and "Kafka" in errors  # backoff visible
        broker = start_tansu(port, broker_log)
        async with TopicReader(bootstrap, [topic]) as reader:
            await insert(db, repo, 200, start=400)
            await wait_for(lambda: _all(db, repo, "published", 600), 120, what="all rows published after restart")
            await reader.wait_count(400, 30)  # everything published after the restart is on the new broker
        assert proc.poll() is None  # the relay never died
    finally:
        code = terminate(proc)
        stop_process(broker)
        broker_log.close()
    assert code == 0


@pytest.mark.parametrize("db_kind", ["mariadb"])
async def test_relay_with_a_frozen_database_stops_within_its_grace_and_says_where_it_waited(
        db, kafka_bootstrap, tmp_path) -> None:
    """A database path that stalls without an error (no RST, no answer) holds the relay's next statement forever;
    SIGTERM must still end the process within ``relay.shutdown_grace_seconds``, exit 0, log where it waited, and
    lose nothing (the row written during the stall stays pending for the next relay)."""
    topic, repo = use_topic(db)
    parts = urlsplit(db.url)
    async with TcpProxy(parts.port) as proxy:
        url = db.url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
        env = relay_env(db, kafka_bootstrap, topic, SMARTFLOW_DATABASE_URL=url,
                        SMARTFLOW_RELAY__SHUTDOWN_GRACE_SECONDS="1.5")
        log_path = tmp_path / "relay.log"
        proc = spawn_relay(env, log_path)
        try:
            await insert(db, repo, 3)
            await wait_for(lambda: _all(db, repo, "published", 3), 30, what="first rows published")
            proxy.freeze()
            await insert(db, repo, 1, start=3)  # written past the proxy: the relay's probe now waits forever
            await asyncio.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            code = await asyncio.to_thread(proc.wait, 15)
            took = time.monotonic() - started
        finally:
            proxy.thaw()
            terminate(proc)
    out = log_path.read_text()
    assert code == 0, out
    assert took < 1.5 + 5, (took, out)  # grace + clean-up (dropping the frozen connections)
    warning = [line for line in out.splitlines() if "still stopping" in line]
    assert len(warning) == 1 and ".py:" in warning[0], out
    assert (await status_counts(db, repo)) == {"published": 3, "pending": 1}
