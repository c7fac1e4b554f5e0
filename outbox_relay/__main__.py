"""Entry point: ``python -m outbox_relay`` / ``smartflow-relay``. Configured only through config.py.

Exit codes: 0 after SIGTERM/SIGINT (claiming stops at once, the in-flight batch finishes or goes back within
``publish_timeout_seconds``), 2 on invalid configuration or a database whose schema is missing our columns.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import sqlalchemy as sa
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from config import ConfigError, Settings, get_settings
from outbox_relay.relay import Relay
from smartflow_streams.db.engine import create_engine
from smartflow_streams.db.schema import upgrade_schema
from smartflow_streams.logs import setup_logging
from smartflow_streams.masking import scrub_error

log = logging.getLogger("outbox_relay")


async def _metrics_server(settings: Settings, relay: Relay) -> web.AppRunner | None:
    if not settings.relay.metrics_port:
        return None

    async def metrics_view(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_view(_request: web.Request) -> web.Response:
        tables = {t.route.service_name: {**vars(t.stats), "last_error": scrub_error(t.stats.last_error)}
                  for t in relay.tables}  # an exception text may hold a DB URL or row data: scrubbed when served
        return web.json_response({"status": "ok", "owner": relay.owner, "topics_ready": relay.topics_ready,
                                  "tables": tables})

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/health", health_view)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.relay.metrics_host, settings.relay.metrics_port).start()
    log.info("relay metrics on http://%s:%d/metrics", settings.relay.metrics_host, settings.relay.metrics_port)
    return runner


async def run(settings: Settings, *, create_schema: bool) -> int:
    engine = create_engine(settings, pool_size=4)
    try:
        if create_schema:
            await upgrade_schema(engine)
        else:
            await _check_schema(engine, settings)
    except SchemaMissing as exc:
        log.error("%s", exc)
        await engine.dispose()
        return 2
    relay = Relay(settings, engine)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, relay.stop.set)
    runner = await _metrics_server(settings, relay)
    try:
        await relay.run()
    finally:
        if runner is not None:
            await runner.cleanup()
        await engine.dispose()
    return 0


class SchemaMissing(RuntimeError):
    pass


async def _check_schema(engine, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from outbox_relay.relay import routes_for

    tables = [r.table for r in routes_for(settings)] + ["outbox_relay_leases"]
    for attempt in range(30):
        try:
            async with engine.connect() as conn:
                def inspect(c: sa.Connection) -> list[str]:
                    insp = sa.inspect(c)
                    bad = []
                    for t in tables:
                        if not insp.has_table(t):
                            bad.append(t)
                        elif t != "outbox_relay_leases" and "claim_token" not in {x["name"] for x in insp.get_columns(t)}:
                            bad.append(f"{t}.claim_token")
                    return bad
                missing = await conn.run_sync(inspect)
            break
        except sa.exc.OperationalError as exc:  # database not up yet: wait up to 30 s
            log.warning("database not reachable (%s); retrying", exc.__class__.__name__)
            await asyncio.sleep(1)
    else:
        raise SchemaMissing("database not reachable after 30 s")
    if missing:
        raise SchemaMissing(f"schema is missing {', '.join(missing)}: run `smartflow schema` (or pass --create-schema)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="smartflow-relay", description="smartflow-streams outbox relay")
    parser.add_argument("--create-schema", action="store_true", help="create/upgrade the schema before relaying")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.log_level)
    sys.exit(asyncio.run(run(settings, create_schema=args.create_schema)))


if __name__ == "__main__":
    main()
