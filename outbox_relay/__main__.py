"""Entry point: ``python -m outbox_relay`` / ``smartflow-relay``. Configured only through config.py.

Exit codes: 0 after SIGTERM/SIGINT (claiming stops at once, the in-flight batch finishes or goes back within
``publish_timeout_seconds``; Ctrl-C prints no traceback, also during start-up), 2 on invalid configuration, a
database whose schema is missing our columns, or a metrics port that cannot be bound.

Shutdown is bounded: whatever still runs ``relay.shutdown_grace_seconds`` (12 s) after the signal is cancelled,
with one warning line naming where each remaining task waited. Nothing is lost by that: a batch cancelled before
its mark stays claimed and is published again after the claim lease (consumers drop the copy by outbox id).

Start-up waits for the database as long as it takes (retry 1 s doubling to 30 s, one log line per state change
and a reminder every ``relay.outage_reminder_seconds``), so the relay may be started before the database.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import sqlalchemy as sa
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from config import ConfigError, Settings, get_settings
from outbox_relay.relay import Relay
from smartflow_streams.core import tracing
from smartflow_streams.outbox.retention import RetentionRunner
from smartflow_streams.db.engine import create_engine
from smartflow_streams.db.schema import upgrade_schema
from smartflow_streams.core.kafka_security import ssl_context
from smartflow_streams.core.logs import setup_logging
from smartflow_streams.core.preflight import OutageLog, database_where, describe
from smartflow_streams.core.masking import scrub_error

log = logging.getLogger("outbox_relay")


class MetricsPortTaken(RuntimeError):
    pass


async def _metrics_server(settings: Settings, relay: Relay) -> web.AppRunner | None:
    if not settings.relay.metrics_port:
        return None

    async def metrics_view(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_view(_request: web.Request) -> web.Response:
        # pid: lets a supervisor (``smartflow up``) tell its own relay from another process on this port
        tables = {t.route.service_name: {**vars(t.stats), "last_error": scrub_error(t.stats.last_error)}
                  for t in relay.tables}  # an exception text may hold a DB URL or row data: scrubbed when served
        return web.json_response({"status": "ok", "pid": os.getpid(), "owner": relay.owner,
                                  "topics_ready": relay.topics_ready, "tables": tables})

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/health", health_view)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = settings.relay.metrics_host, settings.relay.metrics_port
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise MetricsPortTaken(
            f"relay metrics port {host}:{port} cannot be bound ({describe(exc)}); stop what listens there, set "
            f"SMARTFLOW_RELAY__METRICS_PORT to a free port, or 0 to disable the endpoint") from None
    log.info("relay metrics on http://%s:%d/metrics", host, port)
    return runner


async def run(settings: Settings, *, create_schema: bool) -> int:
    engine = create_engine(settings, pool_size=4)
    relay = Relay(settings, engine)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, relay.stop.set)
    try:
        if not await _prepare_database(engine, settings, relay.stop, create_schema=create_schema):
            await engine.dispose()
            return 0  # stopped while waiting for the database
        runner = await _metrics_server(settings, relay)
        tracing.configure(settings, "relay")
        retention = (asyncio.create_task(RetentionRunner(settings, engine, relay.owner, relay.stop).run())
                     if settings.retention.enabled else None)
    except (SchemaMissing, MetricsPortTaken) as exc:
        log.error("%s", exc)
        await engine.dispose()
        return 2
    main_task = asyncio.current_task()
    assert main_task is not None
    watchdog = asyncio.create_task(_shutdown_watchdog(relay.stop, settings.relay.shutdown_grace_seconds, main_task))
    try:
        await relay.run()
        if retention is not None:
            await retention
    except asyncio.CancelledError:
        if not watchdog.done():
            raise  # cancelled from outside, not by the watchdog
    finally:
        watchdog.cancel()  # the relay has returned: the rest is local clean-up
        if retention is not None and not retention.done():
            retention.cancel()
            await asyncio.gather(retention, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
        tracing.shutdown()
        await engine.dispose()
    return 0


async def _shutdown_watchdog(stop: asyncio.Event, grace: float, main_task: asyncio.Task[int]) -> None:
    """After the stop signal, give the relay ``grace`` seconds; then log where each task waits and cancel."""
    await stop.wait()
    await asyncio.sleep(grace)
    waiting = [_where(t) for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    log.warning("relay still stopping %g s after the signal; cancelling %d task(s) waiting in: %s", grace,
                len(waiting), "; ".join(sorted(set(waiting))) or "nothing")
    main_task.cancel()


def _where(task: asyncio.Task[object]) -> str:
    """The innermost frame a task is suspended in, as ``file:line function``."""
    stack = task.get_stack()
    if not stack:
        return task.get_name()
    frame = stack[-1]
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} {frame.f_code.co_name}"


class SchemaMissing(RuntimeError):
    pass


async def _prepare_database(engine, settings: Settings, stop: asyncio.Event, *,  # type: ignore[no-untyped-def]
                            create_schema: bool) -> bool:
    """Upgrade or check the schema, waiting for the database while it is unreachable; False if stopped first."""
    outage = OutageLog(log, "database", database_where(settings.database_url),
                       settings.relay.outage_reminder_seconds)
    delay = 1.0
    while not stop.is_set():
        try:
            if create_schema:
                await upgrade_schema(engine)
            else:
                await _check_schema(engine, settings)
            outage.recovered()
            return True
        except (sa.exc.OperationalError, sa.exc.InterfaceError, OSError, asyncio.TimeoutError) as exc:
            outage.failed(exc, delay)
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except asyncio.TimeoutError:
            pass
        delay = min(delay * 2, 30.0)
    return False


async def _check_schema(engine, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from outbox_relay.relay import routes_for

    tables = [r.table for r in routes_for(settings)] + ["outbox_relay_leases"]
    async with engine.connect() as conn:
        def inspect(c: sa.Connection) -> list[str]:
            insp = sa.inspect(c)
            bad = []
            for t in tables:
                if not insp.has_table(t):
                    bad.append(t)
                elif t != "outbox_relay_leases":
                    cols = {x["name"] for x in insp.get_columns(t)}
                    needed = ["claim_token"] + (["trace_context"] if settings.tracing.enabled else [])
                    bad += [f"{t}.{c}" for c in needed if c not in cols]
            return bad
        missing = await conn.run_sync(inspect)
    if missing:
        raise SchemaMissing(f"schema is missing {', '.join(missing)}: run `smartflow schema` (or pass --create-schema)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="smartflow-relay", description="smartflow-streams outbox relay")
    parser.add_argument("--create-schema", action="store_true", help="create/upgrade the schema before relaying")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
        ssl_context(settings.kafka)  # an unreadable CA file or client certificate fails here, with its key
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.log_level, settings.log_format)
    try:
        sys.exit(asyncio.run(run(settings, create_schema=args.create_schema)))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed: nothing to clean up yet
        log.info("relay interrupted during start-up")
        sys.exit(0)


if __name__ == "__main__":
    main()
