"""Operations views: ``/health`` (liveness), ``/ready`` (readiness), ``/metrics`` (Prometheus text).

Invariants:
- ``/health`` answers ``{"status": "ok", "pid": <worker process id>}`` whenever the event loop serves requests; it
  touches nothing else.
- ``/ready`` is 200 only when all three checks pass, else 503; the body lists each check:
  ``database`` (``SELECT 1`` within 2 s, run on every call), ``consumer`` (the Faust consumer has a non-empty
  partition assignment: a worker that has not joined its group yet is not ready) and ``topics`` (every topic of
  ``settings.worker.services`` exists in the cluster metadata; cached 5 s after success, 1 s after failure).
  Check details carry exception class names and scrubbed messages only (no URLs, no passwords).
- ``/metrics`` serves prometheus_client's default registry: Faust's sensor metrics (prefixed with the app id) and
  ours (:mod:`smartflow_streams.core.metrics`). Before serving, the DB-derived gauges ``smartflow_outbox_rows``,
  ``smartflow_outbox_oldest_pending_seconds`` (every catalog service that has a table) and
  ``smartflow_notification_records`` are refreshed, at most once every 2 s and under a lock, so scrapes never
  stampede the database; a failed refresh keeps the last values. Labels are service names and statuses only.
- ``smartflow_consumer_lag{group,topic,partition}`` is set at each scrape from the consumer's own view: highwater
  of the last fetch minus the last committed offset, for the partitions of the service topics assigned to this
  worker right now (revoked partitions disappear; a partition with no commit yet counts from offset 0). Labels:
  at most topics x partitions series per worker. Sum over workers of one group for the group's lag.
- Faust's sensor metrics are created once per (process, app id) and shared by every app built with that id: calling
  :func:`faust.sensors.prometheus.setup_prometheus_sensors` twice in one process (tests build many apps) would
  register the same series twice in the default registry and raise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import faust
import sqlalchemy as sa
from aiohttp import web
from faust.exceptions import ConsumerNotStarted
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.web import View
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from smartflow_streams.core import metrics
from smartflow_streams.catalog import registry
from smartflow_streams.core.kafka_security import aiokafka_security_kwargs
from smartflow_streams.core.masking import scrub_error
from smartflow_streams.outbox import admin as outbox_admin
from smartflow_streams.startup.runtime import WorkerRuntime
from smartflow_streams.web.queries import NOTIFICATION_STATUSES, notification_counts
from smartflow_streams.web.responses import json_response

log = logging.getLogger(__name__)

DB_TIMEOUT = 2.0
TOPICS_TTL_OK = 5.0
TOPICS_TTL_FAILED = 1.0
METRICS_REFRESH_EVERY = 2.0

_faust_metrics: dict[str, FaustMetrics] = {}


def install_prometheus_sensors(app: faust.App) -> None:
    """What ``setup_prometheus_sensors(app)`` does minus its ``/metrics`` page (ours refreshes gauges first),
    idempotent per app id."""
    prefix = str(app.conf.name).replace("-", "_").replace(".", "_")
    faust_metrics = _faust_metrics.get(prefix)
    if faust_metrics is None:
        faust_metrics = _faust_metrics[prefix] = FaustMetrics.create(REGISTRY, prefix)
    app.monitor = PrometheusMonitor(metrics=faust_metrics)


def brief_error(exc: BaseException) -> str:
    text = scrub_error(str(exc))
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


class Readiness:
    def __init__(self, app: faust.App, runtime: WorkerRuntime) -> None:
        self.app = app
        self.runtime = runtime
        self._topics: tuple[float, dict[str, Any]] | None = None
        self._topics_lock = asyncio.Lock()

    async def check(self) -> tuple[bool, dict[str, Any]]:
        database, topics = await asyncio.gather(self.database(), self.topics())
        checks = {"database": database, "consumer": self.consumer(), "topics": topics}
        return all(c["ok"] for c in checks.values()), checks

    async def database(self) -> dict[str, Any]:
        started = time.monotonic()

        async def ping() -> None:
            async with self.runtime.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))

        try:
            await asyncio.wait_for(ping(), DB_TIMEOUT)
        except asyncio.TimeoutError:
            return {"ok": False, "detail": f"no answer within {DB_TIMEOUT:g} s"}
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return {"ok": False, "detail": brief_error(exc)}
        return {"ok": True, "ms": round((time.monotonic() - started) * 1000, 1)}

    def consumer(self) -> dict[str, Any]:
        try:
            assignment = self.app.consumer.assignment()
        except ConsumerNotStarted:
            return {"ok": False, "detail": "consumer not started"}
        except Exception as exc:  # noqa: BLE001
            return {"ok": False, "detail": brief_error(exc)}
        if not assignment:
            return {"ok": False, "partitions": 0, "detail": "no partition assignment yet (group not joined)"}
        return {"ok": True, "partitions": len(assignment)}

    async def topics(self) -> dict[str, Any]:
        async with self._topics_lock:
            now = time.monotonic()
            if self._topics is not None and now < self._topics[0]:
                return self._topics[1]
            wanted = [registry.service_route(s).topic for s in self.runtime.settings.worker.services]
            try:
                existing = await asyncio.wait_for(self._list_topics(), 5.0)
                missing = [t for t in wanted if t not in existing]
                result: dict[str, Any] = {"ok": not missing, "topics": wanted, "missing": missing}
            except Exception as exc:  # noqa: BLE001 - includes TimeoutError
                result = {"ok": False, "topics": wanted, "detail": brief_error(exc)}
            ttl = TOPICS_TTL_OK if result["ok"] else TOPICS_TTL_FAILED
            self._topics = (time.monotonic() + ttl, result)
            return result

    async def _list_topics(self) -> set[str]:
        from aiokafka.admin import AIOKafkaAdminClient

        settings = self.runtime.settings
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers(),
                                    client_id=f"{self.app.conf.name}-ready", request_timeout_ms=4000,
                                    **aiokafka_security_kwargs(settings))
        try:  # close even when start() is cancelled by the timeout
            await admin.start()
            return set(await admin.list_topics())
        finally:
            await admin.close()


class GaugeRefresher:
    """Sets the DB-derived gauges from one snapshot, at most every :data:`METRICS_REFRESH_EVERY` seconds."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            if time.monotonic() < self._next:
                return
            self._next = time.monotonic() + METRICS_REFRESH_EVERY
            try:
                overviews, records = await asyncio.wait_for(self._read(), 5.0)
            except Exception as exc:  # noqa: BLE001 - serve the last values
                log.warning("metrics refresh from the database failed: %s", brief_error(exc))
                return
        for ov in overviews:
            for status, n in ov.counts.items():
                metrics.outbox_backlog.labels(ov.service, status).set(n)
            metrics.outbox_oldest_pending.labels(ov.service).set(ov.oldest_pending_seconds)
        for status in set(NOTIFICATION_STATUSES) | set(records):
            metrics.notification_records.labels(status).set(records.get(status, 0))

    async def _read(self) -> tuple[list[outbox_admin.ServiceOverview], dict[str, int]]:
        engine = self.runtime.engine
        return await outbox_admin.overview(engine, dead_limit=0), await notification_counts(engine)


def refresh_consumer_lag(app: faust.App, runtime: WorkerRuntime) -> None:
    """Set :data:`metrics.consumer_lag` for the assigned partitions of this worker's service topics."""
    topics = {registry.service_route(s).topic for s in runtime.settings.worker.services}
    metrics.consumer_lag.clear()
    try:
        consumer = app.consumer
        assignment = consumer.assignment()
    except Exception:  # noqa: BLE001 - not started yet: no series
        return
    group = str(app.conf.id)
    for tp in assignment:
        if tp.topic not in topics:
            continue
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - partition not fetched yet
            continue
        if highwater is None:
            continue
        committed = consumer._committed_offset.get(tp) or 0  # Faust keeps the next offset to read
        metrics.consumer_lag.labels(group, tp.topic, str(tp.partition)).set(max(0, int(highwater) - committed))


def define_ops_views(app: faust.App, runtime: WorkerRuntime) -> None:
    readiness = Readiness(app, runtime)
    gauges = GaugeRefresher(runtime)
    install_prometheus_sensors(app)

    @app.page("/health")
    async def health(self: View, request: web.Request) -> web.Response:
        # pid: lets a supervisor (``smartflow up``) tell its own worker from another process on this port
        return json_response({"status": "ok", "pid": os.getpid()})

    @app.page("/ready")
    async def ready(self: View, request: web.Request) -> web.Response:
        ok, checks = await readiness.check()
        return json_response({"status": "ready" if ok else "not_ready", "checks": checks}, 200 if ok else 503)

    @app.page("/metrics")
    async def prometheus_metrics(self: View, request: web.Request) -> web.Response:
        await gauges.refresh()
        refresh_consumer_lag(app, runtime)
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})
