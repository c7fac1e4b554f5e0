"""``smartflow`` console script: run the stack, manage the schema and dead letters, test channels, load.

    smartflow up [--demo] [--exit-after S]     embedded broker + schema + relay + worker (Ctrl-C stops all)
    smartflow schema                           create/upgrade tables in place (idempotent)
    smartflow config                           effective settings, secrets masked
    smartflow status                           per-service counts, oldest pending age
    smartflow dead list SERVICE [--limit N] [--event-type T] [--reason TEXT]
    smartflow dead requeue SERVICE (--id N ... | --all) [--actor NAME]
    smartflow purge SERVICE --days N [--actor NAME]
    smartflow notify-test USER_ID              send the upstream test message to the user's channel
    smartflow load --users N --count N [--rate R]   create triggers (demo/load generator), with progress

Exit codes: 0 ok, 1 operation failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from typing import Any

import config


def _settings() -> config.Settings:
    try:
        return config.get_settings()
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)


async def _with_engine(fn: Any) -> Any:
    from smartflow_streams.db.engine import create_engine

    engine = create_engine(_settings())
    try:
        return await fn(engine)
    finally:
        await engine.dispose()


def _print(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


async def _schema(_args: argparse.Namespace) -> int:
    from smartflow_streams.db.schema import upgrade_schema

    changes = await _with_engine(upgrade_schema)
    print("\n".join(changes) if changes else "schema up to date")
    return 0


async def _status(_args: argparse.Namespace) -> int:
    from smartflow_streams.outbox import admin

    rows = await _with_engine(lambda e: admin.overview(e, dead_limit=0))
    for ov in rows:
        print(f"{ov.service:18} {ov.counts}  oldest pending {ov.oldest_pending_seconds:.1f} s")
    return 0


async def _dead(args: argparse.Namespace) -> int:
    from smartflow_streams.outbox import admin

    if args.dead_cmd == "list":
        rows = await _with_engine(lambda e: admin.list_dead(
            e, args.service, limit=args.limit, event_type=args.event_type, reason_contains=args.reason))
        _print(rows)
        return 0
    if not args.all and not args.id:
        print("give --id N ... or --all", file=sys.stderr)
        return 2
    moved = await _with_engine(lambda e: admin.requeue(e, args.service, None if args.all else args.id,
                                                        actor=args.actor))
    print(f"requeued {moved} row(s)")
    return 0


async def _purge(args: argparse.Namespace) -> int:
    from smartflow_streams.outbox import admin

    deleted = await _with_engine(lambda e: admin.purge_consumed(e, args.service, args.days, actor=args.actor))
    print(f"purged {deleted} consumed row(s) older than {args.days:g} day(s)")
    return 0


async def _notify_test(args: argparse.Namespace) -> int:
    from smartflow_streams.notification.channels import send_channel_test

    settings = _settings()
    result = await _with_engine(lambda e: send_channel_test(e, settings, args.user_id))
    _print(result)
    return 0 if result.get("status") == "success" else 1


async def _load(args: argparse.Namespace) -> int:
    from smartflow_streams.db.engine import session_factory
    from smartflow_streams.scheduler.triggers import TriggerRequest, create_trigger

    settings = _settings()

    async def run(engine: Any) -> int:
        sessions = session_factory(engine)
        started = time.monotonic()
        created = hits = 0
        for i in range(args.count):
            uid = args.first_user + i % args.users
            async with sessions() as s, s.begin():
                result = await create_trigger(s, TriggerRequest(
                    user_id=uid, trigger_type="important_urgent_task", source="api_trigger", target_type="task_pool",
                    target_id=i + 1, trace_id=f"trace_load_{uid}_{i}"), settings)
            created += not result.dedupe_hit
            hits += result.dedupe_hit
            if args.rate:
                await asyncio.sleep(max(0.0, started + (i + 1) / args.rate - time.monotonic()))
            if (i + 1) % max(1, args.count // 20) == 0 or i + 1 == args.count:
                rate = (i + 1) / max(time.monotonic() - started, 1e-9)
                print(f"\r{i + 1}/{args.count} triggers ({rate:.0f}/s, {hits} dedupe hits)", end="", flush=True)
        print()
        return 0

    return await _with_engine(run)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="smartflow", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="run broker (embedded), schema, relay and worker")
    p.add_argument("--demo", action="store_true", help="also start a webhook receiver and feed demo triggers")
    p.add_argument("--exit-after", type=float, default=None, help="stop after this many seconds")
    sub.add_parser("schema", help="create/upgrade the schema")
    sub.add_parser("config", help="show the effective configuration (secrets masked)")
    sub.add_parser("status", help="outbox counts per service")
    p = sub.add_parser("dead", help="dead-letter admin")
    dead = p.add_subparsers(dest="dead_cmd", required=True)
    q = dead.add_parser("list")
    q.add_argument("service")
    q.add_argument("--limit", type=int, default=50)
    q.add_argument("--event-type")
    q.add_argument("--reason")
    q = dead.add_parser("requeue")
    q.add_argument("service")
    q.add_argument("--id", type=int, nargs="*")
    q.add_argument("--all", action="store_true")
    q.add_argument("--actor", default=f"cli:{getpass.getuser()}")
    p = sub.add_parser("purge", help="delete consumed rows older than N days")
    p.add_argument("service")
    p.add_argument("--days", type=float, required=True)
    p.add_argument("--actor", default=f"cli:{getpass.getuser()}")
    p = sub.add_parser("notify-test", help="send a test notification to a user's channel")
    p.add_argument("user_id", type=int)
    p = sub.add_parser("load", help="create triggers (load generator)")
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--first-user", type=int, default=1)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--rate", type=float, default=0.0, help="triggers per second (0 = as fast as possible)")
    args = parser.parse_args(argv)

    settings = _settings()
    from smartflow_streams.core.logs import setup_logging

    setup_logging(settings.log_level if args.cmd != "up" else "warning")
    if args.cmd == "config":
        _print(settings.masked())
        sys.exit(0)
    if args.cmd == "up":
        from smartflow_streams.cli.launcher import up

        sys.exit(asyncio.run(up(args.demo, args.exit_after)))
    handlers = {"schema": _schema, "status": _status, "dead": _dead, "purge": _purge,
                "notify-test": _notify_test, "load": _load}
    try:
        sys.exit(asyncio.run(handlers[args.cmd](args)))
    except Exception as exc:  # noqa: BLE001 - one clear line, not a traceback, for operators
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
