"""The Faust app: ``faust -A smartflow_streams worker``.

Consumer group: Faust uses the app id as the group id. A worker started for one service
(``SMARTFLOW_WORKER__SERVICES='["notification"]'``) uses that service's catalog group
(``smartflow-notification-outbox-consumer``), so per-service deployments match upstream. A worker for several
services uses ``SMARTFLOW_WORKER__GROUP_ID`` (default: ``app_id``, ``smartflow-streams``). Never run a Go consumer
and a Faust worker in one group: their assignors differ and the group would refuse to form (trap 8 anyway).

Faust defaults chosen here: ``at_least_once``, ``store=memory://`` (tables rebuild from their changelogs),
``consumer_auto_offset_reset=earliest`` (upstream reader starts at FirstOffset), web server bound to 127.0.0.1.
Anything else comes through ``SMARTFLOW_FAUST__<SETTING>`` (e.g. Tansu needs the values in
:data:`smartflow_streams.embedded.TANSU_FAUST_SETTINGS`). The consumer's fetch wait, hard-coded to 1500 ms by
Faust, comes from ``worker.fetch_max_wait_ms`` (:func:`_install_fetch_wait`).
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from config import Settings, get_settings
from smartflow_streams.catalog import ACTIVE_SCHEDULER, NOTIFICATION, registry
from smartflow_streams.masking import install_log_masking
from smartflow_streams.runtime import WorkerRuntime

log = logging.getLogger("smartflow_streams")


def worker_group_id(settings: Settings) -> str:
    services = settings.worker.services
    if len(services) == 1:
        return registry.service_route(services[0]).group_id
    return settings.worker.group_id or settings.app_id


def build_app(settings: Settings | None = None, **overrides: Any) -> faust.App:
    from agents import define_agents
    from smartflow_streams.web import define_views
    from tables.consumption import ConsumptionTable
    from tables.dedupe import DedupeWindows

    settings = settings or get_settings()
    worker = settings.worker
    options: dict[str, Any] = dict(
        broker=[f"kafka://{b}" for b in settings.bootstrap_servers()],
        store="memory://",
        topic_partitions=worker.topic_partitions,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        web_host=worker.web_host,
        web_bind=worker.web_host,
        web_port=worker.web_port,
        datadir=worker.datadir,
        autodiscover=False,
        producer_acks=-1,
        web_tables_enabled=False,
        web_router_enabled=False,
    )
    options.update(settings.faust)
    options.update(overrides)
    app_id = options.pop("id", None) or worker_group_id(settings)
    app = faust.App(app_id, **options)
    app.smartflow_fetch_max_wait_ms = worker.fetch_max_wait_ms  # type: ignore[attr-defined]
    app.smartflow_fetch_idle_max_wait_ms = worker.fetch_idle_max_wait_ms  # type: ignore[attr-defined]
    _install_fetch_wait()

    consumption = ConsumptionTable(app, worker.topic_partitions, worker.consumption_state_seconds)
    dedupe = DedupeWindows(app, settings.notification.dedupe_window_seconds, worker.topic_partitions)
    runtime = WorkerRuntime(settings, dedupe=dedupe, consumption=consumption)
    app.smartflow_runtime = runtime  # type: ignore[attr-defined]
    app.smartflow_agents = define_agents(app, runtime, worker.services)  # type: ignore[attr-defined]
    _define_timers(app, runtime, settings)
    define_views(app, runtime)

    @app.task
    async def _on_start() -> None:
        install_log_masking()
        log.info("smartflow worker up: group=%s services=%s topics=%s", app.conf.id, worker.services,
                 [registry.service_route(s).topic for s in worker.services])

    return app


def _install_fetch_wait() -> None:
    """Make Faust's worker consumer use ``app.smartflow_fetch_max_wait_ms`` instead of its fixed 1500 ms.

    faust-streaming 0.15.3 passes ``fetch_max_wait_ms=1500`` to ``AIOKafkaConsumer`` with no setting to change it;
    aiokafka 0.14 keeps the value in ``_fetch_max_wait_ms`` until ``start()`` builds its fetcher, so it is replaced
    right after construction. Idempotent; both versions are pinned and ``tests/test_faust_app.py`` checks the value.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(original, "smartflow_patched", False):
        return

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        wait = getattr(self.app, "smartflow_fetch_max_wait_ms", None)
        if wait is not None:
            consumer._fetch_max_wait_ms = int(wait)
        idle_max = getattr(self.app, "smartflow_fetch_idle_max_wait_ms", None)
        if idle_max is not None and idle_max > consumer._fetch_max_wait_ms:
            _adapt_fetch_wait_on_start(consumer, consumer._fetch_max_wait_ms, int(idle_max))
        return consumer

    create_worker_consumer.smartflow_patched = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]


def _adapt_fetch_wait_on_start(consumer: Any, base_ms: int, idle_max_ms: int) -> None:
    """After ``consumer.start()``: each fetch response without a record doubles the fetcher's wait (from
    ``base_ms`` up to ``idle_max_ms``); one with a record sets it back to ``base_ms``.

    Why: Tansu holds every fetch for its whole wait, so the 10 ms that keeps latency low costs an idle worker 100
    fetches/s (~10 % of a core). aiokafka 0.14 reads ``Fetcher._fetch_max_wait_ms`` for every request it builds
    and reports from ``_proc_fetch_request`` whether records were added, so the wait adapts per fetch. Under load
    fetches bring records and the wait stays at ``base_ms``; the first record after a quiet period waits up to
    ``idle_max_ms``.
    """
    original_start = consumer.start

    async def start() -> None:
        await original_start()
        fetcher = consumer._fetcher
        proc = fetcher._proc_fetch_request

        async def proc_fetch_request(assignment: Any, node_id: Any, request: Any) -> bool:
            got_records = await proc(assignment, node_id, request)
            fetcher._fetch_max_wait_ms = base_ms if got_records else min(idle_max_ms, fetcher._fetch_max_wait_ms * 2)
            return got_records

        fetcher._proc_fetch_request = proc_fetch_request

    consumer.start = start


def _define_timers(app: faust.App, runtime: WorkerRuntime, settings: Settings) -> None:
    services = settings.worker.services
    if NOTIFICATION in services:
        @app.timer(interval=settings.notification.retry_scan_every_seconds, on_leader=True,
                   name="notification-retry-scanner")
        async def notification_retry_scanner() -> None:
            try:
                await runtime.notifications.retry_due()
            except Exception:  # noqa: BLE001 - a timer must survive a DB outage
                log.warning("notification retry scan failed", exc_info=True)

    if ACTIVE_SCHEDULER in services:
        @app.timer(interval=settings.scheduler.job_scan_every_seconds, on_leader=True, name="due-job-scanner")
        async def due_job_scanner() -> None:
            from smartflow_streams.scheduler.jobs import scan_due_jobs

            try:
                await scan_due_jobs(runtime.sessions, runtime.task_reader, settings)
            except Exception:  # noqa: BLE001
                log.warning("due-job scan failed", exc_info=True)


app = build_app()
