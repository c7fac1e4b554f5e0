"""The Faust app: ``faust -A smartflow_streams worker``.

Consumer group: Faust uses the app id as the group id. A worker started for one service
(``SMARTFLOW_WORKER__SERVICES='["notification"]'``) uses that service's catalog group
(``smartflow-notification-outbox-consumer``), so per-service deployments match upstream. A worker for several
services uses ``SMARTFLOW_WORKER__GROUP_ID`` (default: ``app_id``, ``smartflow-streams``). Never run a Go consumer
and a Faust worker in one group: their assignors differ and the group would refuse to form
(docs/upstream.md#running-beside-the-go-services).

Faust defaults chosen here: ``at_least_once``, ``store=memory://`` (tables rebuild from their changelogs),
``consumer_auto_offset_reset=earliest`` (upstream reader starts at FirstOffset), web server bound to 127.0.0.1.
Anything else comes through ``SMARTFLOW_FAUST__<SETTING>`` (e.g. Tansu needs the values in
:data:`smartflow_streams.cli.embedded.TANSU_FAUST_SETTINGS`). The consumer's fetch wait, hard-coded to 1500 ms by
Faust, comes from ``worker.fetch_max_wait_ms`` (:func:`_install_fetch_wait`). TLS/SASL: ``broker_credentials``
from ``SMARTFLOW_KAFKA__*`` (:mod:`smartflow_streams.core.kafka_security`, the relay's block too). With
``SMARTFLOW_LOG_FORMAT=json`` mode's logging gets :func:`smartflow_streams.core.logs.json_logging_config` (its stdout
handler replaced, its ``-l`` level kept).

Data directory (:func:`worker_datadir`): Faust's ``faust --datadir DIR`` / ``F_DATADIR=DIR`` when given, else
``worker.datadir`` (``SMARTFLOW_WORKER__DATADIR``, default ``./var/faust``). Missing parent folders are created
at start (:class:`SmartflowApp`), so the documented command works in a fresh checkout without ``./var``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import faust

from config import Settings, get_settings
from smartflow_streams.catalog import ACTIVE_SCHEDULER, NOTIFICATION, registry
from smartflow_streams.core import tracing
from smartflow_streams.core.kafka_security import faust_broker_credentials
from smartflow_streams.core.logs import json_logging_config
from smartflow_streams.core.masking import install_log_masking
from smartflow_streams.startup.runtime import WorkerRuntime

log = logging.getLogger("smartflow_streams")


def worker_group_id(settings: Settings) -> str:
    services = settings.worker.services
    if len(services) == 1:
        return registry.service_route(services[0]).group_id
    return settings.worker.group_id or settings.app_id


FAUST_DEFAULT_DATADIR = "{conf.name}-data"
"""Faust's built-in default; its CLI exports it as ``F_DATADIR`` when ``--datadir`` is not given."""


def _argv_datadir(argv: Sequence[str]) -> str:
    """``--datadir DIR`` / ``--datadir=DIR`` / ``-D DIR`` of a ``faust`` command line, ``""`` if absent or if this is
    not the Faust CLI. Read from argv because the CLI imports the app (``-A``) before it exports ``F_DATADIR``."""
    program = os.path.normpath(argv[0]) if argv else ""
    if "faust" not in (os.path.basename(program), os.path.basename(os.path.dirname(program))):
        return ""  # neither the ``faust`` script nor ``python -m faust`` (.../faust/__main__.py)
    for i, arg in enumerate(argv[1:], start=1):
        if arg in ("--datadir", "-D") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--datadir="):
            return arg.partition("=")[2]
    return ""


def worker_datadir(settings: Settings, environ: Mapping[str, str] = os.environ,
                   argv: Sequence[str] = sys.argv) -> str:
    """The worker's data directory, first found: ``faust --datadir DIR``; ``F_DATADIR`` (Faust's environment
    convention) unless it is Faust's own default; the configured ``worker.datadir`` (default ``./var/faust``)."""
    given = _argv_datadir(argv).strip() or environ.get("F_DATADIR", "").strip()
    if given and given != FAUST_DEFAULT_DATADIR:
        return given
    return settings.worker.datadir


class SmartflowApp(faust.App):
    """``faust.App`` with the attributes this project hangs on it, declared; it creates its data folders with their
    missing parents (Faust creates only the last level)."""

    smartflow_fetch_max_wait_ms: int | None
    smartflow_fetch_idle_max_wait_ms: int | None
    smartflow_runtime: WorkerRuntime
    smartflow_agents: dict[str, Any]

    def _create_directories(self) -> None:
        for path in (self.conf.datadir, self.conf.appdir, self.conf.tabledir):
            path.mkdir(parents=True, exist_ok=True)


def build_app(settings: Settings | None = None, **overrides: Any) -> SmartflowApp:
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
        datadir=worker_datadir(settings),
        autodiscover=False,
        producer_acks=-1,
        broker_credentials=faust_broker_credentials(settings),
        web_tables_enabled=False,
        web_router_enabled=False,
    )
    if settings.log_format == "json":
        services = worker.services
        options["logging_config"] = json_logging_config(services[0] if len(services) == 1 else None)
    options.update(settings.faust)
    options.update(overrides)
    app_id = options.pop("id", None) or worker_group_id(settings)
    app = SmartflowApp(app_id, **options)
    app.smartflow_fetch_max_wait_ms = worker.fetch_max_wait_ms
    app.smartflow_fetch_idle_max_wait_ms = worker.fetch_idle_max_wait_ms
    _install_fetch_wait()

    consumption = ConsumptionTable(app, worker.topic_partitions, worker.consumption_state_seconds)
    dedupe = DedupeWindows(app, settings.notification.dedupe_window_seconds, worker.topic_partitions)
    runtime = WorkerRuntime(settings, dedupe=dedupe, consumption=consumption)
    app.smartflow_runtime = runtime
    app.smartflow_agents = define_agents(app, runtime, worker.services)
    _define_timers(app, runtime, settings)
    define_views(app, runtime)

    @app.on_worker_init.connect
    def _preflight(sender: Any, **_kwargs: Any) -> None:
        if _is_worker_command(sys.argv):  # Faust sends this signal for every CLI command that loads the app
            worker_preflight(settings)

    @app.task
    async def _on_start() -> None:
        install_log_masking()
        tracing.configure(settings, "worker")  # off by default; spans are flushed at exit
        log.info("smartflow worker up: group=%s services=%s topics=%s", app.conf.id, worker.services,
                 [registry.service_route(s).topic for s in worker.services])

    return app


def _is_worker_command(argv: Sequence[str]) -> bool:
    """True for ``faust ... worker ...`` (not ``--help``, not another Faust command that loads the app)."""
    args = list(argv[1:])
    return "worker" in args and not ({"--help", "-h"} & set(args))


def worker_preflight(settings: Settings) -> None:
    """Before ``faust worker`` starts anything: a broker must answer and the web port must be free, else one line
    on stderr (what, where, the error, what to do) and exit 1, instead of Faust's traceback a few seconds later.

    Runs only for the ``faust worker`` command (Faust's ``on_worker_init`` signal). The broker check is a TCP
    connect to each bootstrap server (1 s each, any one answering passes); a port that answers but does not speak
    Kafka still fails later inside Faust.
    """
    from smartflow_streams.core.preflight import PortClaim, check_ports, describe, unreachable_brokers

    problems = check_ports([PortClaim("worker web server", settings.worker.web_host, settings.worker.web_port,
                                      "SMARTFLOW_WORKER__WEB_PORT")])
    failures = unreachable_brokers(settings.bootstrap_servers())
    if failures:
        errors = "; ".join(f"{server}: {describe(exc)}" for server, exc in failures)
        problems.append(f"no Kafka broker reachable at {settings.kafka_bootstrap} ({errors}); start the broker "
                        "first (`smartflow up` runs an embedded one) or point SMARTFLOW_KAFKA_BOOTSTRAP at a "
                        "running one")
    if problems:
        for problem in problems:
            print(f"smartflow worker: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(1)


def _install_fetch_wait() -> None:
    """Make Faust's worker consumer use ``app.smartflow_fetch_max_wait_ms`` instead of its fixed 1500 ms.

    faust-streaming 0.15.3 passes ``fetch_max_wait_ms=1500`` to ``AIOKafkaConsumer`` with no setting to change it;
    aiokafka 0.14 keeps the value in ``_fetch_max_wait_ms`` until ``start()`` builds its fetcher, so it is replaced
    right after construction. Idempotent; both versions are pinned and ``tests/startup/test_faust_app.py`` checks the value.
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
