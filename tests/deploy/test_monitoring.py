"""The dashboard, the alert rules and the JSON log format against real processes: a relay and a `faust worker`
(JSON logs on) on Tansu and SQLite deliver notifications to a local Feishu, dead-letter a malformed message and an
oversized row; then both /metrics pages are scraped and both processes' output is read."""

from __future__ import annotations

import json
import pathlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
import pytest_asyncio
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

import config
from conftest import drop_database, make_database
from deploy_files import PROMETHEUS_BUILTIN, referenced_metrics
from smartflow_streams.core import clock
from smartflow_streams.db.models import notification_records, outbox_table, user_notification_channels
from smartflow_streams.db.schema import upgrade_schema
from smartflow_streams.cli.embedded import free_port
from smartflow_streams.core.logs import JSON_KEYS
from smartflow_streams.outbox.repository import OutboxRepository
from tests.kit.support import (
    FakeFeishu, spawn_relay, spawn_worker, terminate, wait_for, wait_worker_ready, worker_env, write_upstream_trigger,
)

pytestmark = pytest.mark.slow
N_TABLE = outbox_table("notification_outbox_messages")
USERS = [301, 302, 303]
DEAD_USER = 303  # its webhook answers 401: the notification record ends dead


@dataclass
class Scrapes:
    relay: str
    worker: str
    relay_log: pathlib.Path
    worker_log: pathlib.Path
    exit_codes: tuple[int, int]


_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
             "summary": ("_sum", "_count", "")}


def _names(text: str) -> tuple[set[str], set[str]]:
    """(sample names a family declares, sample names with at least one sample) of one /metrics page."""
    declared: set[str] = set()
    observed: set[str] = set()
    for family in text_string_to_metric_families(text):
        declared.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
        observed.update(s.name for s in family.samples)
    return declared | observed, observed


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scrapes]:
    tmp = tmp_path_factory.mktemp("monitoring")
    db = await make_database("sqlite", tmp, None)
    await upgrade_schema(db.engine)
    tag = uuid.uuid4().hex[:8]
    relay_port = free_port()
    env = worker_env(db.url, kafka_bootstrap, tag, free_port(), SMARTFLOW_LOG_FORMAT="json",
                     SMARTFLOW_RELAY__METRICS_PORT=str(relay_port))
    config.set_settings(config.load_settings(database_url=db.url,
                                             services={"notification": {"topic": f"t.{tag}.notification"}}))
    try:
        async with FakeFeishu(per_user={DEAD_USER: [(401, {"msg": "unauthorized"}, 0.0)]}) as feishu:
            now = clock.db_now()
            async with db.engine.begin() as conn:
                for uid in USERS:
                    await conn.execute(sa.insert(user_notification_channels).values(
                        user_id=uid, channel="feishu_webhook", enabled=True, webhook_url=feishu.url(uid),
                        auth_type="bearer", bearer_token=f"bearer-secret-{uid}", webhook_kind="flow",
                        created_at=now, updated_at=now))
            relay = spawn_relay(env, tmp / "relay.log")
            worker = spawn_worker(env, tmp / "worker.log")
            try:
                await wait_worker_ready(tmp / "worker.log", 90)
                for i, uid in enumerate(USERS):
                    async with db.engine.begin() as conn:
                        await write_upstream_trigger(conn, f"t.{tag}.active-scheduler", uid, 700 + i, clock.now())
                repo = OutboxRepository.for_service("notification")
                async with db.sessions() as s, s.begin():  # a notification request the handler cannot read: dead
                    await repo.enqueue(s, "notification.feishu.requested", {"not": "a notification"},
                                       message_key="9", event_version="1")
                    # bigger than any Kafka request: the relay dead-letters it at once
                    await repo.enqueue(s, "notification.feishu.requested", {"blob": "x" * 1_200_000},
                                       message_key="9", event_version="1")

                async def settled() -> bool:
                    async with db.engine.connect() as conn:
                        records = dict((await conn.execute(sa.select(
                            notification_records.c.status, sa.func.count()).group_by(
                            notification_records.c.status))).all())
                        outbox = dict((await conn.execute(sa.select(N_TABLE.c.status, sa.func.count()).group_by(
                            N_TABLE.c.status))).all())
                    return records == {"sent": 2, "dead": 1} and outbox.get("dead", 0) == 2 \
                        and outbox.get("consumed", 0) == 3
                await wait_for(settled, 120, interval=0.5, what="2 sent, 1 dead record; 2 dead, 3 consumed rows")
                assert "tok-user-" not in json.dumps(feishu.posts)  # sanity: the URL token is not in the bodies
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"http://127.0.0.1:{relay_port}/metrics") as r:
                        relay_text = await r.text()
                    worker_text = ""

                    async def lag_caught_up() -> bool:  # offsets are committed every commit_interval (2.8 s)
                        nonlocal worker_text
                        async with http.get(f"http://127.0.0.1:{env['SMARTFLOW_WORKER__WEB_PORT']}/metrics") as r:
                            worker_text = await r.text()
                        lags = _lag_samples(worker_text)
                        return bool(lags) and all(s.value == 0 for s in lags)
                    try:
                        await wait_for(lag_caught_up, 20, interval=1.0, what="consumer lag 0")
                    except AssertionError:
                        pass  # the test on the lag reports the values
            finally:
                codes = (terminate(worker), terminate(relay))
        yield Scrapes(relay_text, worker_text, tmp / "relay.log", tmp / "worker.log", codes)
    finally:
        await drop_database(db, None)
        config.set_settings(None)


def test_every_metric_of_the_dashboard_and_the_rules_is_exported(stack: Scrapes):
    relay_declared, relay_observed = _names(stack.relay)
    worker_declared, worker_observed = _names(stack.worker)
    exported = relay_declared | worker_declared
    used = referenced_metrics() - PROMETHEUS_BUILTIN
    assert len(used) >= 10
    assert sorted(used - exported) == []
    # the scenario produced real samples of each kind of view, not only declarations
    observed = relay_observed | worker_observed
    for name in ("smartflow_relay_published_total", "smartflow_relay_dead_total", "smartflow_relay_table_leader",
                 "smartflow_outbox_rows", "smartflow_outbox_oldest_pending_seconds", "smartflow_consumer_lag",
                 "smartflow_outbox_consumed_total", "smartflow_notifications_total",
                 "smartflow_notification_provider_seconds_bucket", "smartflow_notification_records",
                 "smartflow_relay_commit_to_publish_seconds_bucket"):
        assert name in observed, f"{name} has no sample"
    assert {"smartflow_relay_published_total", "smartflow_relay_dead_total"} <= relay_observed
    assert {"smartflow_consumer_lag", "smartflow_notifications_total"} <= worker_observed
    assert stack.exit_codes == (0, 0)


def _lag_samples(text: str) -> list:
    return [s for f in text_string_to_metric_families(text) if f.name == "smartflow_consumer_lag" for s in f.samples]


def test_consumer_lag_is_per_group_topic_and_partition(stack: Scrapes):
    samples = _lag_samples(stack.worker)
    assert samples and all(set(s.labels) == {"group", "topic", "partition"} for s in samples)
    assert {s.labels["topic"].rsplit(".", 1)[-1] for s in samples} == {"active-scheduler", "notification"}
    assert all(s.value == 0 for s in samples), samples  # everything was consumed and committed
    dead = [s for f in text_string_to_metric_families(stack.worker) if f.name == "smartflow_notifications"
            for s in f.samples if s.name.endswith("_total")]
    assert {s.labels["status"]: s.value for s in dead} == {"sent": 2.0, "dead": 1.0}


def _json_lines(path: pathlib.Path) -> tuple[list[dict], list[str]]:
    objects, others = [], []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            objects.append(json.loads(line))  # a broken JSON line fails here
        elif line.strip():
            others.append(line)
    return objects, others


def test_json_logs_one_object_a_line_with_context_and_masking(stack: Scrapes):
    for path in (stack.relay_log, stack.worker_log):
        text = path.read_text(errors="replace")
        assert "tok-user-" not in text and "bearer-secret" not in text, path.name
    relay_lines, relay_other = _json_lines(stack.relay_log)
    assert relay_lines and relay_other == []  # the relay writes nothing but JSON lines
    worker_lines, _ = _json_lines(stack.worker_log)
    assert len(worker_lines) >= 10
    for obj in relay_lines + worker_lines:
        assert list(obj)[:len(JSON_KEYS)] == list(JSON_KEYS), obj
        assert obj["level"] in ("debug", "info", "warning", "error", "critical") and obj["time"].endswith("Z")
    assert any(o["logger"].startswith("faust") for o in worker_lines)  # Faust's own records go through it too
    dead = [o for o in worker_lines if "-> dead" in o["message"]]
    assert dead and dead[0]["service"] == "notification" and isinstance(dead[0]["outbox_id"], int)
    consumed = [o for o in worker_lines if o["message"].startswith("notification.feishu.requested consumed")]
    assert len(consumed) == 3, consumed
    assert all(o["event_type"] == "notification.feishu.requested" and isinstance(o["outbox_id"], int)
               and o["trace_id"].startswith("trace_api_trigger_") for o in consumed)
    too_big = [o for o in relay_lines if "-> dead" in o["message"]]
    assert too_big and too_big[0]["service"] == "notification" and isinstance(too_big[0]["outbox_id"], int)
    assert too_big[0]["level"] == "warning" and "max_request_size" in too_big[0]["message"]
