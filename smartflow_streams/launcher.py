"""``smartflow up``: the embedded default in one command (broker, schema, relay, worker; ``--demo`` adds a webhook
receiver, demo channels and triggers).

What it starts, all on 127.0.0.1:
- Tansu (Kafka protocol, memory storage) on the port of ``SMARTFLOW_KAFKA_BOOTSTRAP`` (default
  ``127.0.0.1:19092``) when that is one local address and nothing listens there; otherwise the bootstrap is used as
  given (real Kafka).
- the schema upgrade on ``SMARTFLOW_DATABASE_URL`` (default SQLite file ``./var/smartflow.db``);
- the relay (``python -m outbox_relay``) and one Faust worker (``faust -A smartflow_streams worker``) as child
  processes, logs in ``./var/logs/``;
- with ``--demo``: a local webhook receiver playing Feishu, five demo users whose channels point at it, and a few
  triggers (one duplicate on purpose, to show dedupe).
Ctrl-C (or ``--exit-after``) stops children in reverse order and waits for them: nothing is left running.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import time
from typing import Any

import aiohttp
import sqlalchemy as sa
from aiohttp import web

import config
from smartflow_streams import clock
from smartflow_streams.db.engine import create_engine, session_factory
from smartflow_streams.db.models import user_notification_channels
from smartflow_streams.db.schema import upgrade_schema
from smartflow_streams.embedded import free_port, start_tansu, stop_process, tansu_env, wait_port

log = logging.getLogger("smartflow.up")

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
DEMO_USERS = (1001, 1002, 1003, 1004, 1005)


class DemoReceiver:
    """A local stand-in for Feishu's Flow webhook: answers ``{"code":0}`` and remembers what it got."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/flow/api/trigger-webhook/{token}", self._post)
        app.router.add_get("/received", self._list)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _list(self, _request: web.Request) -> web.Response:
        return web.json_response(self.received)

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(body)
        message = body.get("message", {})
        print(f"  [webhook] user {body.get('user_id')}: {message.get('summary', '')[:80]!r} -> "
              f"{message.get('action_url')}", flush=True)
        return web.json_response({"code": 0, "msg": "success"})

    def url(self, user_id: int) -> str:
        return f"http://127.0.0.1:{self.port}/flow/api/trigger-webhook/demo-user-{user_id}-token"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Stack:
    def __init__(self, settings: config.Settings, *, demo: bool, var: pathlib.Path) -> None:
        self.settings, self.demo, self.var = settings, demo, var
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.broker: subprocess.Popen[bytes] | None = None
        self.receiver = DemoReceiver() if demo else None
        self.admin_token = settings.admin_token.get_secret_value() if settings.admin_token else secrets.token_hex(16)
        self.env: dict[str, str] = {}

    async def start(self) -> None:
        logs = self.var / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        bootstrap = self.settings.kafka_bootstrap
        env = {k: v for k, v in os.environ.items()}
        env["SMARTFLOW_ADMIN_TOKEN"] = self.admin_token
        host, _, port_text = bootstrap.rpartition(":")
        local = "," not in bootstrap and host in ("127.0.0.1", "localhost")
        listening = True
        if local:
            try:
                wait_port(int(port_text), timeout=0.2)
            except TimeoutError:
                listening = False
        if not listening:
            self.broker = start_tansu(int(port_text), open(logs / "tansu.log", "ab"))
            print(f"- broker: embedded Tansu on {bootstrap} (memory storage)")
        else:
            print(f"- broker: {bootstrap} (already running)")
        if self.broker is not None or bootstrap == DEFAULT_BOOTSTRAP:
            for key, value in tansu_env().items():
                env.setdefault(key, value)
        engine = create_engine(self.settings)
        changes = await upgrade_schema(engine)
        print(f"- database: {self._db_label()} (schema: {len(changes)} changes)")
        if self.receiver is not None:
            await self.receiver.start()
            env["SMARTFLOW_NOTIFICATION__ALLOW_PLAIN_HTTP"] = "true"
            env["SMARTFLOW_NOTIFICATION__ALLOWED_HOSTS"] = '["127.0.0.1"]'
            env["SMARTFLOW_NOTIFICATION__ALLOWED_PORTS"] = f"[{self.receiver.port}]"  # not our own admin routes
            env.setdefault("SMARTFLOW_NOTIFICATION__RETRY_SCAN_EVERY_SECONDS", "5")
            await self._demo_channels(engine)
            print(f"- demo webhook receiver: http://127.0.0.1:{self.receiver.port}/received")
        await engine.dispose()
        self.env = env
        py = sys.executable
        self._spawn("relay", [py, "-m", "outbox_relay"], logs / "relay.log")
        self._spawn("worker", [py, "-m", "faust", "-A", "smartflow_streams", "worker", "-l", "info",
                               "--web-port", str(self.settings.worker.web_port),
                               "--web-host", self.settings.worker.web_host], logs / "worker.log")

    def _db_label(self) -> str:
        from smartflow_streams.masking import mask_database_url

        return mask_database_url(self.settings.database_url)

    def _spawn(self, name: str, args: list[str], log_path: pathlib.Path) -> None:
        proc = subprocess.Popen(args, env=self.env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.children.append((name, proc))
        print(f"- {name}: pid {proc.pid}, log {log_path}")

    async def _demo_channels(self, engine: Any) -> None:
        assert self.receiver is not None
        t = user_notification_channels
        now = clock.db_now()
        async with engine.begin() as conn:
            await conn.execute(sa.delete(t).where(t.c.user_id.in_(DEMO_USERS)))
            for uid in DEMO_USERS:
                await conn.execute(sa.insert(t).values(
                    user_id=uid, channel="feishu_webhook", enabled=True, webhook_url=self.receiver.url(uid),
                    auth_type="none", webhook_kind="flow", created_at=now, updated_at=now))

    async def wait_ready(self, timeout: float = 90.0) -> bool:
        url = f"http://{self.settings.worker.web_host}:{self.settings.worker.web_port}/ready"
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if any(p.poll() is not None for _, p in self.children):
                    return False
                try:
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            return True
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(0.5)
        return False

    async def feed_demo(self) -> None:
        from smartflow_streams.scheduler.triggers import TriggerRequest, create_trigger

        engine = create_engine(self.settings)
        sessions = session_factory(engine)
        try:
            for i, uid in enumerate(DEMO_USERS + (DEMO_USERS[0],)):
                async with sessions() as s, s.begin():
                    result = await create_trigger(s, TriggerRequest(
                        user_id=uid, trigger_type="important_urgent_task", source="api_trigger",
                        target_type="task_pool", target_id=100 + i, trace_id=f"trace_demo_{uid}_{i}"), self.settings)
                note = " (same user and window: the notification is deduplicated)" if i == len(DEMO_USERS) else ""
                print(f"  [trigger] user {uid}: {result.trigger_id} dedupe_hit={result.dedupe_hit}{note}", flush=True)
                await asyncio.sleep(1.0)
        finally:
            await engine.dispose()

    async def stop(self) -> None:
        for name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(self.children):
            try:
                await asyncio.get_running_loop().run_in_executor(None, proc.wait, 20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            print(f"- {name} stopped (exit {proc.returncode})")
        if self.receiver is not None:
            await self.receiver.stop()
        if self.broker is not None:
            stop_process(self.broker)
            print("- broker stopped")


async def up(demo: bool, exit_after: float | None) -> int:
    settings = config.get_settings()
    var = pathlib.Path("var")
    stack = Stack(settings, demo=demo, var=var)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        await stack.start()
        if not await stack.wait_ready():
            print("! the worker did not become ready; see var/logs/worker.log", file=sys.stderr)
            code = 1
        else:
            base = f"http://{settings.worker.web_host}:{settings.worker.web_port}"
            print(f"\nready: dashboard {base}/dashboard/   metrics {base}/metrics   relay metrics "
                  f"http://{settings.relay.metrics_host}:{settings.relay.metrics_port}/metrics")
            if settings.admin_token:  # the operator's own token is never printed
                print("admin token (for requeue/purge): the one set in SMARTFLOW_ADMIN_TOKEN")
            else:
                print(f"admin token (for requeue/purge; set SMARTFLOW_ADMIN_TOKEN to choose it): {stack.admin_token}")
            if demo:
                print("demo: feeding triggers for users", ", ".join(map(str, DEMO_USERS)))
                await stack.feed_demo()
            print("Ctrl-C to stop." if exit_after is None else f"stopping after {exit_after:g} s.", flush=True)
            try:
                await asyncio.wait_for(stop.wait(), exit_after)
            except asyncio.TimeoutError:
                pass
    finally:
        print("\nstopping...")
        await stack.stop()
        if stack.receiver is not None:
            print(f"demo webhook received {len(stack.receiver.received)} notification(s): "
                  f"{json.dumps(sorted(b.get('user_id') for b in stack.receiver.received))}")
    return code
