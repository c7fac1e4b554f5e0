"""Tracing across the real path: an upstream-shaped trigger row -> the real relay (in this process) -> Tansu -> the
real dispatcher and handlers (fed by a Kafka consumer in this process) -> the notification outbox row -> the relay
again -> Tansu -> the notification handler -> a real webhook on 127.0.0.1. Spans go to the SDK's in-memory
exporter; one trace must hold the whole chain, parent by parent. With tracing off nothing of it exists."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import config
from outbox_relay.relay import Relay
from smartflow_streams.core import clock, tracing
from smartflow_streams.db.models import notification_records, outbox_table, user_notification_channels
import agents  # noqa: F401 - registers the contract handlers
from agents.dispatch import Dispatcher
from smartflow_streams.startup.runtime import WorkerRuntime
from tests.kit.support import FakeFeishu, TopicReader, wait_for, write_upstream_trigger

pytestmark = pytest.mark.slow
AS_TABLE = outbox_table("active_scheduler_outbox_messages")
N_TABLE = outbox_table("notification_outbox_messages")


@dataclass
class _Event:
    """What the dispatcher reads of a Faust event: ``value`` and ``message`` (topic, partition, offset, key,
    headers); weak-referenceable like Faust's."""

    value: bytes
    message: Any


async def _consume(settings: config.Settings, runtime: WorkerRuntime, stop: asyncio.Event) -> None:
    topics = {settings.services[s].topic: s for s in ("active-scheduler", "notification")}
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False, metadata_max_age_ms=500)
    dispatcher = Dispatcher(runtime, consumption=runtime.consumption)
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=200)
            for tp, records in batch.items():
                await dispatcher.handle_batch(topics[tp.topic], [_Event(r.value, r) for r in records])
    finally:
        await consumer.stop()


async def _run_path(db, kafka_bootstrap: str, *, traced: bool, batched: bool) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    exporter = InMemorySpanExporter()
    async with FakeFeishu() as feishu:
        settings = config.load_settings(
            database_url=db.url, kafka_bootstrap=kafka_bootstrap, app_id=f"sf-{tag}",
            services={"active-scheduler": {"topic": f"t.{tag}.as"}, "notification": {"topic": f"t.{tag}.n"}},
            relay={"services": ["active-scheduler", "notification"], "metrics_port": 0},
            worker={"batched_handlers": batched},
            notification={"allow_plain_http": True, "allowed_hosts": ["127.0.0.1"], "rate_limit_enabled": False},
            tracing={"enabled": traced, "exporter": "none"})
        config.set_settings(settings)
        assert tracing.configure(settings, "test", processors=[SimpleSpanProcessor(exporter)]) is traced
        statements: list[str] = []

        def seen(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
            statements.append(sql)
        sa.event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
        now = clock.db_now()
        user = 4242
        async with db.engine.begin() as conn:
            await conn.execute(sa.insert(user_notification_channels).values(
                user_id=user, channel="feishu_webhook", enabled=True, webhook_url=feishu.url(user), auth_type="none",
                webhook_kind="flow", created_at=now, updated_at=now))
        relay = Relay(settings, db.engine)
        runtime = WorkerRuntime(settings)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(relay.run()), asyncio.create_task(_consume(settings, runtime, stop))]
        try:
            async with TopicReader(kafka_bootstrap, [f"t.{tag}.as", f"t.{tag}.n"]) as reader:
                async with db.engine.begin() as conn:
                    await write_upstream_trigger(conn, f"t.{tag}.as", user, 77, clock.now())

                async def delivered() -> bool:
                    async with db.engine.connect() as conn:
                        sent = (await conn.execute(sa.select(sa.func.count()).where(
                            notification_records.c.status == "sent"))).scalar()
                        consumed = (await conn.execute(sa.select(sa.func.count()).where(
                            N_TABLE.c.status == "consumed"))).scalar()
                    return bool(sent == 1 and consumed == 1)
                await wait_for(delivered, 60, interval=0.2, what="the notification POSTed and its row consumed")
                await reader.wait_count(2, 20)
                records = list(reader.records)
        finally:
            stop.set()
            relay.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runtime.close()
            tracing.shutdown()
            sa.event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
        async with db.engine.connect() as conn:
            stored = (await conn.execute(sa.select(N_TABLE.c.trace_context))).scalars().all()
        return {"spans": exporter.get_finished_spans(), "records": records, "stored": stored, "posts": feishu.posts,
                "statements": statements}


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "one-by-one"])
async def test_one_trace_from_commit_to_post(db, kafka_bootstrap, batched: bool) -> None:
    out = await _run_path(db, kafka_bootstrap, traced=True, batched=batched)
    spans = out["spans"]
    by_name = {s.name: [x for x in spans if x.name == s.name] for s in spans}
    names = ["outbox publish active-scheduler", "outbox handle active_schedule.triggered",
             "outbox publish notification", "outbox handle notification.feishu.requested", "webhook POST"]
    assert all(len(by_name.get(n, [])) == 1 for n in names), sorted((s.name, s.parent) for s in spans)
    chain = [by_name[n][0] for n in names]
    assert len({s.context.trace_id for s in chain}) == 1  # one trace
    assert chain[0].parent is None  # the Go-written trigger row has no context: the trace starts at its publish
    for parent, child in zip(chain, chain[1:]):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id, (parent.name, child.name)
    assert chain[-1].attributes["smartflow.outcome"] == "success"
    # the publish span starts at the row's commit (created_at, ms precision) and ends after the broker's ack
    assert chain[0].start_time <= chain[1].start_time and chain[2].start_time <= chain[3].start_time
    trace_hex = format(chain[0].context.trace_id, "032x")
    # Kafka headers: traceparent next to the untouched upstream trace_id (header and envelope payload field)
    first = next(r for r in out["records"] if r.topic.endswith(".as"))
    headers = dict(first.headers)
    assert headers["traceparent"].decode().split("-")[1] == trace_hex
    payload = json.loads(first.value)["payload"]
    assert headers["trace_id"].decode() == payload["trace_id"] == "trace_api_trigger_4242_77"
    second = next(r for r in out["records"] if r.topic.endswith(".n"))
    assert dict(second.headers)["traceparent"].decode().split("-")[1] == trace_hex
    # the notification outbox row carried the context of the trigger handler to the second relay hop
    assert len(out["stored"]) == 1 and json.loads(out["stored"][0])["traceparent"].split("-")[1] == trace_hex
    assert len(out["posts"]) == 1


async def test_off_by_default_leaves_no_trace(db, kafka_bootstrap) -> None:
    assert config.Settings().tracing.enabled is False
    out = await _run_path(db, kafka_bootstrap, traced=False, batched=True)
    assert out["spans"] == () or list(out["spans"]) == []
    assert all("traceparent" not in dict(r.headers) for r in out["records"])
    assert out["stored"] == [None]  # the column exists but nothing is written to it
    assert out["statements"] and not [s for s in out["statements"] if "trace_context" in s]  # no read or write
    assert len(out["posts"]) == 1


def test_otlp_headers_are_masked_and_an_unknown_exporter_is_refused() -> None:
    settings = config.load_settings(tracing={"enabled": True, "otlp_headers": {"api-key": "otlp-secret-9"}})
    assert "otlp-secret-9" not in json.dumps(settings.masked()) and "otlp-secret-9" not in repr(settings)
    assert settings.masked()["tracing"]["otlp_headers"] == {"api-key": "****"}
    with pytest.raises(config.ConfigError, match="SMARTFLOW_TRACING__EXPORTER"):
        config.load_settings(tracing={"exporter": "jaeger"})
