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

Supervision invariants:
- Before anything starts, every port the stack will listen on (worker web ``SMARTFLOW_WORKER__WEB_PORT``, relay
  metrics ``SMARTFLOW_RELAY__METRICS_PORT``) is bound once as a check; a taken port ends the run with exit 2 and
  a line naming the port, its user in the stack and the setting that moves it. Nothing is started then.
- "ready" counts only this run's children: each must still be running, the worker's ``/health`` must report the
  worker child's pid (another process answering on the port is named, not trusted) and its ``/ready`` must be
  200, and the relay's ``/health`` (when its metrics port is on) must report the relay child's pid.
- Children (and the embedded broker) are polled every 0.2 s from start to stop. When one exits on its own, the
  launcher prints which one, its exit code or signal and the last 20 lines of its log, stops the others and exits
  1. It does not restart children (a crash loop would hide the cause); run it again after fixing the cause.
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
from dataclasses import dataclass
from typing import Any

import aiohttp
import sqlalchemy as sa
from aiohttp import web

import config
from smartflow_streams.core import clock
from smartflow_streams.db.engine import create_engine, session_factory
from smartflow_streams.contracts.dedupe import notification_dedupe_key
from smartflow_streams.db.models import notification_records, user_notification_channels
from smartflow_streams.db.schema import upgrade_schema
from smartflow_streams.cli.embedded import free_port, start_tansu, stop_process, tansu_env, wait_port
from smartflow_streams.core.preflight import PortClaim, check_ports

log = logging.getLogger("smartflow.up")

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
DEMO_USERS = (1001, 1002, 1003, 1004, 1005)
DEMO_USER_BLOCKS = 50
"""A demo run uses users 1001-1005, or the first block 1011-1015, 1021-1025, ... (up to 50 blocks) none of whose
users was notified in the current 30-minute dedupe window: a second ``--demo`` within the window still delivers."""
DEMO_TRIGGER_TYPE = "important_urgent_task"
LOG_TAIL_LINES = 20
POLL_SECONDS = 0.2


@dataclass
class Child:
    """A process this run started, the log it writes and (if it has one) the ``/health`` URL reporting its pid."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: pathlib.Path
    health_url: str | None = None

    def exit_text(self) -> str:
        code = self.proc.returncode
        if code is not None and code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with code {code}"


def log_tail(path: pathlib.Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a log file (reads at most its last 64 KB)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            text = f.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return [f"(cannot read {path}: {exc})"]
    return text.splitlines()[-lines:]


def port_claims(settings: config.Settings) -> list[PortClaim]:
    claims = [PortClaim("worker web server", settings.worker.web_host, settings.worker.web_port,
                        "SMARTFLOW_WORKER__WEB_PORT")]
    if settings.relay.metrics_port:
        claims.append(PortClaim("relay metrics endpoint", settings.relay.metrics_host, settings.relay.metrics_port,
                                "SMARTFLOW_RELAY__METRICS_PORT"))
    return claims


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
        self.children: list[Child] = []
        self.broker: subprocess.Popen[bytes] | None = None
        self.broker_log: pathlib.Path | None = None
        self.demo_users: tuple[int, ...] = DEMO_USERS
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
            self.broker_log = logs / "tansu.log"
            self.broker = start_tansu(int(port_text), open(self.broker_log, "ab"))
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
            self.demo_users = await self._pick_demo_users(engine)
            await self._demo_channels(engine)
            print(f"- demo webhook receiver: http://127.0.0.1:{self.receiver.port}/received")
        await engine.dispose()
        self.env = env
        py = sys.executable
        relay = self.settings.relay
        worker = self.settings.worker
        self._spawn("relay", [py, "-m", "outbox_relay"], logs / "relay.log",
                    f"http://{relay.metrics_host}:{relay.metrics_port}/health" if relay.metrics_port else None)
        self._spawn("worker", [py, "-m", "faust", "-A", "smartflow_streams", "worker", "-l", "info",
                               "--web-port", str(worker.web_port), "--web-host", worker.web_host],
                    logs / "worker.log", f"http://{worker.web_host}:{worker.web_port}/health")

    def _db_label(self) -> str:
        from smartflow_streams.core.masking import mask_database_url

        return mask_database_url(self.settings.database_url)

    def _spawn(self, name: str, args: list[str], log_path: pathlib.Path, health_url: str | None) -> None:
        proc = subprocess.Popen(args, env=self.env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.children.append(Child(name, proc, log_path, health_url))
        print(f"- {name}: pid {proc.pid}, log {log_path}")

    def watched(self) -> list[Child]:
        """Every process this run started and must keep running: the children and the embedded broker."""
        watched = list(self.children)
        if self.broker is not None and self.broker_log is not None:
            watched.append(Child("broker (embedded Tansu)", self.broker, self.broker_log))
        return watched

    def exited(self) -> Child | None:
        return next((c for c in self.watched() if c.proc.poll() is not None), None)

    async def watch(self) -> Child:
        """Returns the first watched process that exits (polls every 0.2 s; runs until one does)."""
        while True:
            child = self.exited()
            if child is not None:
                return child
            await asyncio.sleep(POLL_SECONDS)

    async def _pick_demo_users(self, engine: Any) -> tuple[int, ...]:
        """The first block of five demo users none of whom has a notification record in the current window."""
        zone = self.settings.zone
        window = self.settings.notification.dedupe_window_seconds
        now = clock.db_now()
        t = notification_records
        for block in range(DEMO_USER_BLOCKS):
            users = tuple(uid + 10 * block for uid in DEMO_USERS)
            keys = [notification_dedupe_key(uid, DEMO_TRIGGER_TYPE, now, window_seconds=window, zone=zone)
                    for uid in users]
            async with engine.connect() as conn:
                used = (await conn.execute(sa.select(sa.func.count()).select_from(t).where(
                    t.c.dedupe_key.in_(keys)))).scalar()
            if not used:
                if block:
                    print(f"- demo users {DEMO_USERS[0]}-{DEMO_USERS[-1]} were already notified in this "
                          f"{window // 60}-minute dedupe window (one notification per user, trigger type and window, "
                          f"kept in {self._db_label()}): this run uses users {users[0]}-{users[-1]}")
                return users
        print(f"- every demo user block was notified in this {window // 60}-minute window: this run's triggers are "
              "deduplicated and nothing is delivered (wait for the next window or delete ./var)")
        return DEMO_USERS

    async def _demo_channels(self, engine: Any) -> None:
        assert self.receiver is not None
        t = user_notification_channels
        now = clock.db_now()
        async with engine.begin() as conn:
            await conn.execute(sa.delete(t).where(t.c.user_id.in_(self.demo_users)))
            for uid in self.demo_users:
                await conn.execute(sa.insert(t).values(
                    user_id=uid, channel="feishu_webhook", enabled=True, webhook_url=self.receiver.url(uid),
                    auth_type="none", bearer_token="", webhook_kind="flow", created_at=now, updated_at=now))

    async def wait_ready(self, timeout: float = 90.0) -> str | None:
        """``None`` once every child is ready (see the module invariants), else why not. Returns early when a
        watched process exits (the caller reports it)."""
        url = f"http://{self.settings.worker.web_host}:{self.settings.worker.web_port}/ready"
        worker = next(c for c in self.children if c.name == "worker")
        deadline = time.monotonic() + timeout
        impostor: dict[str, str] = {}
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.exited() is not None:
                    return "exited"
                pending = [c for c in self.children if c.health_url and not await self._own_health(http, c, impostor)]
                if not pending and await self._get_ok(http, url):
                    return None
                await asyncio.sleep(0.5)
        waiting = ", ".join(impostor.values()) or "the worker did not report ready (/ready)"
        return f"not ready after {timeout:g} s: {waiting}; see {worker.log_path}"

    async def _own_health(self, http: aiohttp.ClientSession, child: Child, impostor: dict[str, str]) -> bool:
        """True when ``child``'s ``/health`` answers with ``child``'s pid; notes (once) another process answering."""
        assert child.health_url is not None
        try:
            async with http.get(child.health_url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                body = await resp.json(content_type=None) if resp.status == 200 else {}
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return False
        pid = body.get("pid") if isinstance(body, dict) else None
        if pid == child.proc.pid:
            return True
        if child.name not in impostor:
            impostor[child.name] = (f"{child.health_url} is answered by another process (pid {pid}), not this "
                                    f"run's {child.name} (pid {child.proc.pid})")
            print(f"! {impostor[child.name]}", file=sys.stderr, flush=True)
        return False

    @staticmethod
    async def _get_ok(http: aiohttp.ClientSession, url: str) -> bool:
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    def report_exit(self, child: Child) -> None:
        """What a user needs when a process died: which, how, and the end of its own log."""
        err = sys.stderr
        print(f"\n! {child.name} (pid {child.proc.pid}) {child.exit_text()}; last lines of {child.log_path}:",
              file=err)
        for line in log_tail(child.log_path):
            print(f"    {line}", file=err)
        print(f"! stopping the rest (smartflow up does not restart children); fix the cause and run it again",
              file=err, flush=True)

    async def feed_demo(self) -> None:
        from smartflow_streams.scheduler.triggers import TriggerRequest, create_trigger

        engine = create_engine(self.settings)
        sessions = session_factory(engine)
        try:
            users = self.demo_users
            for i, uid in enumerate(users + (users[0],)):
                async with sessions() as s, s.begin():
                    result = await create_trigger(s, TriggerRequest(
                        user_id=uid, trigger_type=DEMO_TRIGGER_TYPE, source="api_trigger",
                        target_type="task_pool", target_id=100 + i, trace_id=f"trace_demo_{uid}_{i}"), self.settings)
                if result.dedupe_hit:
                    note = " (trigger deduplicated: an open trigger for this user and target already exists)"
                elif i == len(users):
                    note = (f" (a new trigger, but its notification is deduplicated: user {uid} already has one "
                            "for this trigger type in this 30-minute window)")
                else:
                    note = ""
                print(f"  [trigger] user {uid}: {result.trigger_id} dedupe_hit={result.dedupe_hit}{note}", flush=True)
                await asyncio.sleep(1.0)
        finally:
            await engine.dispose()

    async def stop(self) -> None:
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in reversed(self.children):
            proc = child.proc
            try:
                await asyncio.get_running_loop().run_in_executor(None, proc.wait, 20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            print(f"- {child.name} stopped (exit {proc.returncode})")
        if self.receiver is not None:
            await self.receiver.stop()
        if self.broker is not None:
            stop_process(self.broker)
            print("- broker stopped")


async def up(demo: bool, exit_after: float | None) -> int:
    settings = config.get_settings()
    problems = check_ports(port_claims(settings))
    if problems:
        for problem in problems:
            print(f"! {problem}", file=sys.stderr)
        print("! nothing was started", file=sys.stderr, flush=True)
        return 2
    var = pathlib.Path("var")
    stack = Stack(settings, demo=demo, var=var)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    watcher: asyncio.Task[Child] | None = None
    try:
        await stack.start()
        watcher = asyncio.create_task(stack.watch())
        problem = await stack.wait_ready()
        if problem is not None:
            dead = stack.exited()
            if dead is not None:
                stack.report_exit(dead)
            else:
                print(f"! {problem}", file=sys.stderr, flush=True)
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
                print("demo: feeding triggers for users", ", ".join(map(str, stack.demo_users)))
                feeding = asyncio.create_task(stack.feed_demo())
                await asyncio.wait({feeding, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if feeding.done():
                    feeding.result()
                else:
                    feeding.cancel()
            if not watcher.done():
                print("Ctrl-C to stop." if exit_after is None else f"stopping after {exit_after:g} s.", flush=True)
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({stopping, watcher}, timeout=exit_after, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
        if code == 0 and watcher.done():
            stack.report_exit(watcher.result())
            code = 1
    finally:
        if watcher is not None and not watcher.done():
            watcher.cancel()
        print("\nstopping...")
        await stack.stop()
        if stack.receiver is not None:
            print(f"demo webhook received {len(stack.receiver.received)} notification(s): "
                  f"{json.dumps(sorted(b.get('user_id') for b in stack.receiver.received))}")
    return code
