"""``smartflow`` console script: run the stack, manage the schema and dead letters, test channels, load.

    smartflow up [--demo] [--exit-after S]     embedded broker + schema + relay + worker (Ctrl-C stops all)
    smartflow schema                           create/upgrade tables in place (idempotent)
    smartflow config                           effective settings, secrets masked
    smartflow status                           per-service counts, oldest pending age
    smartflow dead list SERVICE [--limit N] [--event-type T] [--reason TEXT]
    smartflow dead requeue SERVICE (--id N ... | --all) [--actor NAME]
    smartflow purge SERVICE --days N [--actor NAME]
    smartflow replay SERVICE (--from-id A --to-id B | --since T --until T) [--status consumed,dead] [--execute]
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


async def _replay(args: argparse.Namespace) -> int:
    from smartflow_streams.outbox import replay

    return await _with_engine(lambda e: replay.run_command(e, args, _settings().zone))


async def _notify_test(args: argparse.Namespace) -> int:
    from smartflow_streams.notification.channels import send_channel_test

    settings = _settings()

    async def run(engine: Any) -> tuple[dict[str, Any], str]:
        result = await send_channel_test(engine, settings, args.user_id)
        hint = "" if result.get("status") == "success" else await _notify_test_hint(engine, settings, args.user_id)
        return result, hint

    result, hint = await _with_engine(run)
    _print(result)
    if hint:
        print(hint, file=sys.stderr)
    return 0 if result.get("status") == "success" else 1


async def _notify_test_hint(engine: Any, settings: config.Settings, user_id: int) -> str:
    """Why a channel test failed, in the terms of this machine: no channel, or a plain-http (demo) channel."""
    import sqlalchemy as sa
    from urllib.parse import urlsplit

    from smartflow_streams.db.models import user_notification_channels as t
    from smartflow_streams.core.masking import mask_webhook_url
    from smartflow_streams.core.preflight import unreachable_brokers

    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(t.c.webhook_url, t.c.enabled).where(
            t.c.user_id == user_id, t.c.channel == "feishu_webhook"))).first()
    if row is None or not row.enabled or not row.webhook_url:
        return (f"note: user {user_id} has no enabled feishu_webhook channel; give it one through the channel API "
                f"(PUT /api/v1/notification/channels/feishu on the worker, as that user) first")
    url = str(row.webhook_url)
    parts = urlsplit(url)
    if parts.scheme != "http" or settings.notification.allow_plain_http:
        return ""
    where = f"{parts.hostname}:{parts.port or 80}"
    down = bool(unreachable_brokers([where], timeout=0.5))  # a plain TCP connect
    demo = "/flow/api/trigger-webhook/demo-user-" in url
    lines = [f"note: user {user_id}'s channel is a plain-http URL ({mask_webhook_url(url)})"
             + (", written by `smartflow up --demo`" if demo else "") + ".",
             "  Plain http is refused unless SMARTFLOW_NOTIFICATION__ALLOW_PLAIN_HTTP=true and the host is in "
             "SMARTFLOW_NOTIFICATION__ALLOWED_HOSTS; the demo sets both for its own run only."]
    if down:
        lines.append(f"  Nothing listens on {where} now" + (" (the demo receiver stops with the demo)" if demo
                                                             else "") + ", so even that would fail.")
    lines.append(f"  To test it: SMARTFLOW_NOTIFICATION__ALLOW_PLAIN_HTTP=true "
                 f"SMARTFLOW_NOTIFICATION__ALLOWED_HOSTS='[\"{parts.hostname}\"]' smartflow notify-test {user_id}"
                 + (" while the demo runs" if demo else "") + ", or give the user a real https Feishu webhook.")
    return "\n".join(lines)


async def _load(args: argparse.Namespace) -> int:
    from smartflow_streams.db.engine import session_factory
    from smartflow_streams.scheduler.triggers import TriggerRequest, create_trigger

    settings = _settings()

    async def run(engine: Any) -> int:
        from smartflow_streams.core import clock
        from smartflow_streams.contracts.dedupe import notification_dedupe_key

        users = list(range(args.first_user, args.first_user + min(args.users, args.count)))
        without = await _users_without_channel(engine, users)
        if without:
            print(f"warning: {len(without)} of {len(users)} users ({_id_ranges(without)}) have no enabled "
                  "feishu_webhook channel: their notifications end `skipped` and nothing is delivered to them. "
                  "Give them channels first (PUT /api/v1/notification/channels/feishu), or use users that have "
                  "one (after `smartflow up --demo`: --first-user 1001 --users 5).", file=sys.stderr, flush=True)
        sessions = session_factory(engine)
        window = settings.notification.dedupe_window_seconds
        started = time.monotonic()
        created = hits = 0
        keys: set[str] = set()
        for i in range(args.count):
            uid = args.first_user + i % args.users
            async with sessions() as s, s.begin():
                result = await create_trigger(s, TriggerRequest(
                    user_id=uid, trigger_type="important_urgent_task", source="api_trigger", target_type="task_pool",
                    target_id=i + 1, trace_id=f"trace_load_{uid}_{i}"), settings)
            created += not result.dedupe_hit
            hits += result.dedupe_hit
            if not result.dedupe_hit:
                keys.add(notification_dedupe_key(uid, "important_urgent_task", clock.db_now(),
                                                 window_seconds=window, zone=settings.zone))
            if args.rate:
                await asyncio.sleep(max(0.0, started + (i + 1) / args.rate - time.monotonic()))
            if (i + 1) % max(1, args.count // 20) == 0 or i + 1 == args.count:
                rate = (i + 1) / max(time.monotonic() - started, 1e-9)
                print(f"\r{i + 1}/{args.count} triggers ({rate:.0f}/s, {hits} trigger dedupe hits)", end="",
                      flush=True)
        print()
        earlier = await _keys_with_records(engine, keys)
        print(f"{created} new triggers, {hits} trigger dedupe hits (an open trigger for the same user and target).")
        print(f"notifications: the {created} new triggers share {len(keys)} notification dedupe key(s) (one per "
              f"user, trigger type and {window // 60}-minute window), so the worker sends at most "
              f"{len(keys) - earlier} and counts {created - len(keys) + earlier} as deduplicated"
              + (f" ({earlier} key(s) were already used before this run)" if earlier else "")
              + (f"; {len(without)} user(s) without a channel end skipped" if without else "") + ".")
        return 0

    return await _with_engine(run)


async def _users_without_channel(engine: Any, users: list[int]) -> list[int]:
    import sqlalchemy as sa

    from smartflow_streams.db.models import user_notification_channels as t

    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(t.c.user_id).where(
            t.c.user_id.in_(users), t.c.channel == "feishu_webhook", t.c.enabled.is_(True)))
        have = {int(r[0]) for r in rows}
    return [u for u in users if u not in have]


async def _keys_with_records(engine: Any, keys: set[str]) -> int:
    """How many of ``keys`` had a notification record created before now (chunks of 500 keys per query)."""
    import sqlalchemy as sa

    from smartflow_streams.db.models import notification_records as t

    found = 0
    ordered = sorted(keys)
    async with engine.connect() as conn:
        for i in range(0, len(ordered), 500):
            found += int((await conn.execute(sa.select(sa.func.count(sa.distinct(t.c.dedupe_key))).where(
                t.c.dedupe_key.in_(ordered[i:i + 500])))).scalar() or 0)
    return found


def _id_ranges(ids: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"`` (at most 5 ranges, then ``...``)."""
    ranges: list[str] = []
    start = prev = ids[0]
    for uid in ids[1:] + [None]:  # type: ignore[list-item]
        if uid is not None and uid == prev + 1:
            prev = uid
            continue
        ranges.append(f"{start}-{prev}" if prev != start else str(start))
        if uid is not None:
            start = prev = uid
    return ", ".join(ranges[:5]) + (", ..." if len(ranges) > 5 else "")


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
    p = sub.add_parser("replay", help="republish finished outbox rows by id or time range (dry run unless --execute)")
    from smartflow_streams.outbox.replay import add_arguments

    add_arguments(p)
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

    setup_logging(settings.log_level if args.cmd != "up" else "warning", settings.log_format)
    if args.cmd == "config":
        _print(settings.masked())
        sys.exit(0)
    if args.cmd == "up":
        from smartflow_streams.cli.launcher import up

        sys.exit(asyncio.run(up(args.demo, args.exit_after)))
    handlers = {"schema": _schema, "status": _status, "dead": _dead, "purge": _purge, "replay": _replay,
                "notify-test": _notify_test, "load": _load}
    try:
        sys.exit(asyncio.run(handlers[args.cmd](args)))
    except Exception as exc:  # noqa: BLE001 - one clear line, not a traceback, for operators
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
