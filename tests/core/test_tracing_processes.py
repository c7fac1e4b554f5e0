"""Tracing with real processes and the real exporter: `python -m outbox_relay` and `faust -A smartflow_streams
worker` with ``SMARTFLOW_TRACING__*`` set export over OTLP/HTTP to a collector played by this test on 127.0.0.1;
the spans they send form one trace from the trigger's commit to the webhook POST."""

from __future__ import annotations

import gzip
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import config
from smartflow_streams.core import clock
from smartflow_streams.db.models import notification_records, user_notification_channels
from smartflow_streams.cli.embedded import free_port
from tests.kit.support import (
    FakeFeishu, spawn_relay, spawn_worker, terminate, wait_for, wait_worker_ready, worker_env, write_upstream_trigger,
)

pytestmark = pytest.mark.slow
CHAIN = ["outbox publish active-scheduler", "outbox handle active_schedule.triggered", "outbox publish notification",
         "outbox handle notification.feishu.requested", "webhook POST"]


class Collector:
    """An OTLP/HTTP traces endpoint (protobuf bodies) that keeps every span it receives."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Collector:
        app = web.Application()
        app.router.add_post("/v1/traces", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest.FromString(body)
        for resource_spans in message.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append({"name": span.name, "trace": span.trace_id.hex(), "id": span.span_id.hex(),
                                       "parent": span.parent_span_id.hex(), "service": attrs.get("service.name"),
                                       "auth": request.headers.get("X-Collector-Key")})
        return web.Response(body=b"", content_type="application/x-protobuf")

    def named(self, name: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["name"] == name]


async def test_relay_and_worker_processes_export_one_trace(db, kafka_bootstrap, tmp_path) -> None:
    tag = uuid.uuid4().hex[:8]
    config.set_settings(config.load_settings(database_url=db.url))
    async with Collector() as collector, FakeFeishu() as feishu:
        env = worker_env(db.url, kafka_bootstrap, tag, free_port(),
                         SMARTFLOW_TRACING__ENABLED="true", SMARTFLOW_TRACING__EXPORTER="otlp",
                         SMARTFLOW_TRACING__OTLP_ENDPOINT=f"http://127.0.0.1:{collector.port}/v1/traces",
                         SMARTFLOW_TRACING__OTLP_HEADERS='{"X-Collector-Key": "collector-secret-1"}')
        user = 5151
        now = clock.db_now()
        async with db.engine.begin() as conn:
            await conn.execute(sa.insert(user_notification_channels).values(
                user_id=user, channel="feishu_webhook", enabled=True, webhook_url=feishu.url(user), auth_type="none",
                webhook_kind="flow", created_at=now, updated_at=now))
        relay = spawn_relay(env, tmp_path / "relay.log")
        worker = spawn_worker(env, tmp_path / "worker.log")
        try:
            await wait_worker_ready(tmp_path / "worker.log")
            async with db.engine.begin() as conn:
                await write_upstream_trigger(conn, f"t.{tag}.active-scheduler", user, 9, clock.now())

            async def sent() -> bool:
                async with db.engine.connect() as conn:
                    return bool((await conn.execute(sa.select(sa.func.count()).where(
                        notification_records.c.status == "sent"))).scalar())
            await wait_for(sent, 90, interval=0.3, what="the notification POSTed")
        finally:
            codes = (terminate(worker), terminate(relay))  # a clean stop flushes the span batches
        assert codes == (0, 0)

        async def all_spans() -> bool:
            return all(collector.named(n) for n in CHAIN)
        await wait_for(all_spans, 30, interval=0.3, what=f"the chain's spans (got {collector.spans})")
    chain = [collector.named(n)[0] for n in CHAIN]
    assert all(len(collector.named(n)) == 1 for n in CHAIN), collector.spans
    assert len({s["trace"] for s in chain}) == 1
    assert chain[0]["parent"] == ""
    for parent, child in zip(chain, chain[1:]):
        assert child["parent"] == parent["id"], (parent, child)
    assert [s["service"] for s in chain] == [f"sf-{tag}-relay", f"sf-{tag}-worker", f"sf-{tag}-relay",
                                             f"sf-{tag}-worker", f"sf-{tag}-worker"]
    assert {s["auth"] for s in collector.spans} == {"collector-secret-1"}
    for name in ("relay.log", "worker.log"):
        assert "collector-secret-1" not in (tmp_path / name).read_text(errors="replace")
    assert len(feishu.posts) == 1
