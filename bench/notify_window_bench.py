"""Notification sliding window under bad neighbours: normal users' send latency with and without a hanging webhook
and a bot over its quota, side by side in one run (real MariaDB, real HTTP server on 127.0.0.1).

One batch of ``--users`` (100) normal users' events (one record each, Go-shaped payloads) goes through the worker's
dispatcher. The "bad" run adds, interleaved every 20 events, ``--bad-records`` (5) records of one user whose
webhook hangs until the HTTP timeout (``--timeout``, 2 s) and as many of one custom bot already past its per-minute
quota. Latency of a normal send: batch start -> its POST received by the webhook server. Prints p50/p99/max of
both runs and their ratio.

    .venv/bin/python -m bench.notify_window_bench [--users 100] [--bad-records 5] [--timeout 2]

The test ``tests/notification/test_service_window.py`` runs :func:`run_scenario` with a stated bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from aiohttp import web

import config
from smartflow_streams.core import clock
from smartflow_streams.contracts.envelope import KafkaEnvelope, OutboxEventShell
from smartflow_streams.db.models import notification_records, user_notification_channels
from smartflow_streams.cli.embedded import free_port
from smartflow_streams.outbox.repository import OutboxRepository

NOTIFY = "notification.feishu.requested"
HANG_USER = 900_001
BOT_USER = 900_002


@dataclass
class ScenarioResult:
    normal_latencies: list[float] = field(default_factory=list)
    batch_seconds: float = 0.0
    outcomes: list[str] = field(default_factory=list)
    statuses: dict[int, list[tuple[str, str]]] = field(default_factory=dict)  # user -> (status, error code)

    def percentile(self, q: float) -> float:
        values = sorted(self.normal_latencies)
        return values[min(len(values) - 1, max(0, round(q * len(values)) - 1))] if values else float("nan")


class _Event:
    def __init__(self, value: bytes, key: bytes, offset: int) -> None:
        self.value = value
        self.message = SimpleNamespace(topic="t", partition=0, key=key, offset=offset)


class Webhooks:
    """Flow webhooks that answer at once (normal users) or hang (``/hang/``), and a custom bot, on 127.0.0.1."""

    def __init__(self) -> None:
        self.arrivals: dict[int, list[float]] = {}
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Webhooks:
        app = web.Application()
        app.router.add_post("/flow/api/trigger-webhook/{token}", self._flow)
        app.router.add_post("/hang/flow/api/trigger-webhook/{token}", self._hang)
        app.router.add_post("/open-apis/bot/v2/hook/{token}", self._bot)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _flow(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.arrivals.setdefault(int(body["user_id"]), []).append(time.perf_counter())
        return web.json_response({"code": 0, "msg": "success"})

    async def _hang(self, _request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.json_response({"code": 0})

    async def _bot(self, _request: web.Request) -> web.Response:
        self.arrivals.setdefault(BOT_USER, []).append(time.perf_counter())
        return web.json_response({"code": 0, "msg": "success"})

    def url(self, user_id: int) -> str:
        base = f"http://127.0.0.1:{self.port}"
        if user_id == HANG_USER:
            return f"{base}/hang/flow/api/trigger-webhook/tok-hang-secretpart"
        if user_id == BOT_USER:
            return f"{base}/open-apis/bot/v2/hook/bot-token-secretpart"
        return f"{base}/flow/api/trigger-webhook/tok-user-{user_id}-secretpart"


def _payload(user_id: int, n: int) -> dict[str, Any]:
    minute = f"2026-04-30T10:{n:02d}:00+08:00"
    return {"user_id": user_id, "trigger_id": f"ast_{user_id}_{n}", "preview_id": f"asp_{user_id}_{n}",
            "trigger_type": "important_urgent_task", "target_type": "task_pool", "target_id": n,
            "dedupe_key": f"{user_id}:important_urgent_task:{minute}", "target_url": "/assistant/abc",
            "summary_text": "任务 #3 需要安排", "fallback_text": "", "requested_at": minute}


async def run_scenario(db_url: str, *, users: int = 100, bad: bool, bad_records: int = 5,
                       timeout: float = 2.0, user_offset: int = 0) -> ScenarioResult:
    """One batch through a fresh worker runtime on ``db_url`` (schema already there). ``user_offset`` keeps two
    runs on one database apart. Flow webhooks are not rate limited (``rate_limit_enabled`` false); bots always are,
    here at ``rate_per_minute`` 2, so the bot is over its quota from its 3rd record on."""
    from agents.dispatch import Dispatcher
    from smartflow_streams.startup.runtime import WorkerRuntime

    settings = config.load_settings(database_url=db_url, notification={
        "allow_plain_http": True, "allowed_hosts": ["127.0.0.1"], "http_timeout_seconds": timeout,
        "rate_limit_enabled": False, "rate_per_minute": 2})
    config.set_settings(settings)
    runtime = WorkerRuntime(settings)
    normal = [user_offset + u for u in range(1, users + 1)]
    try:
        async with Webhooks() as hooks:
            repo = OutboxRepository.for_event(NOTIFY)
            plan: list[int] = list(normal)
            if bad:
                for n in range(bad_records):  # interleaved: one hanging and one bot record every 20 events
                    plan.insert(min(len(plan), n * 20), HANG_USER)
                    plan.insert(min(len(plan), n * 20 + 1), BOT_USER)
            events: list[_Event] = []
            async with runtime.sessions() as s, s.begin():
                for u in dict.fromkeys(plan):
                    await s.execute(sa.delete(user_notification_channels).where(
                        user_notification_channels.c.user_id == u))
                    await s.execute(sa.insert(user_notification_channels).values(
                        user_id=u, channel="feishu_webhook", enabled=True, webhook_url=hooks.url(u),
                        auth_type="none", webhook_kind="bot" if u == BOT_USER else "flow",
                        created_at=clock.db_now(), updated_at=clock.db_now()))
                seen: dict[int, int] = {}
                for offset, u in enumerate(plan):
                    seen[u] = seen.get(u, 0) + 1
                    n = seen[u] + (user_offset % 50 if u in (HANG_USER, BOT_USER) else 0)
                    oid = await repo.enqueue(s, NOTIFY, _payload(u, n), message_key=str(u), event_version="1")
                    row = await repo.get(s, oid)
                    value = KafkaEnvelope.from_shell(oid, OutboxEventShell.parse(row.payload),
                                                     repo.route.service_name).to_json_bytes()
                    events.append(_Event(value, str(u).encode(), offset))
            dispatcher = Dispatcher(runtime)
            started = time.perf_counter()
            outcomes = await dispatcher.handle_batch("notification", events)
            result = ScenarioResult(batch_seconds=time.perf_counter() - started, outcomes=outcomes)
            result.normal_latencies = [t - started for u in normal for t in hooks.arrivals.get(u, [])]
        async with runtime.sessions() as s:
            for r in (await s.execute(sa.select(notification_records.c.user_id, notification_records.c.status,
                                                notification_records.c.last_error_code))).all():
                result.statuses.setdefault(int(r.user_id), []).append((r.status, r.last_error_code or ""))
        return result
    finally:
        await runtime.close()


async def _main(args: argparse.Namespace) -> None:
    from bench.common import mariadb, new_mysql_database
    from smartflow_streams.db.engine import create_engine
    from smartflow_streams.db.schema import upgrade_schema

    with mariadb() as server:
        url = await new_mysql_database(server, "bench_window")
        engine = create_engine(config.load_settings(database_url=url))
        await upgrade_schema(engine)
        await engine.dispose()
        clean = await run_scenario(url, users=args.users, bad=False, timeout=args.timeout)
        dirty = await run_scenario(url, users=args.users, bad=True, bad_records=args.bad_records,
                                   timeout=args.timeout, user_offset=10_000)
    rows = {"without bad users": clean, "with hanging + over-quota bot": dirty}
    print(f"{args.users} normal users, 1 batch; bad run adds {args.bad_records} records of a webhook hanging until "
          f"the {args.timeout:g} s timeout and {args.bad_records} of a bot over quota (MariaDB, 127.0.0.1)")
    print(f"{'run':<32} {'p50 s':>8} {'p99 s':>8} {'max s':>8} {'batch s':>8} {'sends':>6}")
    for name, r in rows.items():
        print(f"{name:<32} {r.percentile(0.5):8.3f} {r.percentile(0.99):8.3f} {max(r.normal_latencies):8.3f} "
              f"{r.batch_seconds:8.3f} {len(r.normal_latencies):6d}")
    print(f"p99 ratio bad/clean: {dirty.percentile(0.99) / clean.percentile(0.99):.2f}")
    print(json.dumps({"clean_p99": clean.percentile(0.99), "bad_p99": dirty.percentile(0.99)}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--bad-records", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=2.0)
    asyncio.run(_main(parser.parse_args()))
