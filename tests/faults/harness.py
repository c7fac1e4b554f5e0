"""Fault-injection harness (not a test module): real broker, real MariaDB, real relays and workers, a fake Feishu.

A :class:`Scenario` owns one private Tansu broker (its own port, so stopping it disturbs no other test), uses a
database given by URL, spawns N relays (``python -m outbox_relay``, each with its own ``/health`` + ``/metrics``
port) and M Faust workers (``faust -A smartflow_streams worker``), runs a :class:`FaultFeishu` (Feishu Flow
webhook **and** custom-bot webhook with signature checking), and a steady load generator that inserts
upstream-shaped triggers (trigger row + outbox row in one transaction, like the Go services) for distinct users
with channels, optionally re-triggering a user inside the same 30-minute dedupe window.

:meth:`Scenario.check_invariants` waits for the system to settle and then asserts, and returns as a dict:

* every committed trigger is ``preview_generated`` and has exactly one preview;
* outbox tables: no ``pending``/``published`` row left; ``dead`` only where the case expects poison;
* one notification record per dedupe key, each in its expected terminal status;
* per dedupe key exactly one *delivered* POST (HTTP 200 + code 0, answered within the client timeout) for a
  ``sent`` record and none for a ``dead`` one; more are reported as ``duplicate_deliveries`` and allowed only
  for records a killed worker had claimed and not recorded (``sending`` at the kill -9 and claimed again after
  its lease; at most 2 x ``worker.max_in_flight`` per kill), plus the case's ``tolerated_duplicates``;
* the number of POSTs for a record never exceeds its ``attempt_count`` (every POST is a claimed attempt);
* relay counters vs the database: the relay's backlog gauges (``/health`` counts) equal the DB counts, relay
  ``dead`` counter equals the rows the relay dead-lettered, and ``published`` counters are bounded by the rows
  ever published (exactly when no relay was killed: a kill -9 loses the dead process' counters).

Each case is a coroutine in :data:`CASES` (used by ``tests/faults/test_faults.py`` with a small load and by
``bench/soak.py`` with a long one); :func:`run_case` writes one JSON line per case to ``var/fault-results.jsonl``.
"""

from __future__ import annotations

# Size (~1130 lines): one Scenario driver plus the nine fault cases (a-i) that share it and its invariant
# checks; the reusable parts (MariaDB, broker, fake Feishu, processes) are in tests/kit.

import asyncio
import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import time
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import sqlalchemy as sa
from aiokafka import AIOKafkaProducer

import config
from smartflow_streams.core import clock
from smartflow_streams.db.engine import create_engine
from smartflow_streams.db.models import (
    active_schedule_previews, active_schedule_triggers, notification_records, outbox_dead_messages, outbox_table,
    outbox_relay_leases, user_notification_channels,
)
from smartflow_streams.db.schema import upgrade_schema
from smartflow_streams.cli.embedded import free_port, start_tansu, stop_process
from tests.kit.feishu import BOT_OK, FLOW_OK, SIGN_FAILED, FaultFeishu, Post, Reply, feishu_sign  # noqa: F401
from tests.kit.mariadb import MariaDBServer
from tests.kit.support import (
    TopicReader, kill9, spawn_relay, spawn_worker, wait_for, worker_env, write_upstream_trigger,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "var" / "fault-results.jsonl"
AS_TABLE_NAME = "active_scheduler_outbox_messages"
N_TABLE_NAME = "notification_outbox_messages"
AS_TABLE = outbox_table(AS_TABLE_NAME)
N_TABLE = outbox_table(N_TABLE_NAME)
SERVICE_OF_TABLE = {AS_TABLE_NAME: "active-scheduler", N_TABLE_NAME: "notification"}

# Shortened timers: a crashed relay's claims are due after 3 s, a lost message is republished after 8 s, a crashed
# sender's record is re-sent after 4 s. HTTP timeout 2 s (worker_env); the sending lease must exceed it.
FAULT_ENV: dict[str, str] = {
    "SMARTFLOW_RELAY__REPUBLISH_AFTER_SECONDS": "8",
    "SMARTFLOW_RELAY__LEASE_SECONDS": "3",
    "SMARTFLOW_RELAY__TABLE_LEASE_SECONDS": "3",
    "SMARTFLOW_RELAY__PUBLISH_TIMEOUT_SECONDS": "3",
    "SMARTFLOW_RELAY__TOPIC_CHECK_TIMEOUT_SECONDS": "3",
    "SMARTFLOW_RELAY__SUMMARY_INTERVAL_SECONDS": "1",  # also the backlog-gauge refresh period (min(5, this))
    "SMARTFLOW_NOTIFICATION__SENDING_LEASE_SECONDS": "4",
    "SMARTFLOW_NOTIFICATION__HTTP_TIMEOUT_SECONDS": "2",
}

WORKER_MAX_IN_FLIGHT = config.WorkerSettings().max_in_flight  # the workers run with the default (16)


def socket_owner(client_port: int, server_port: int, pids: list[int]) -> int | None:
    """The pid (among ``pids``) owning the TCP connection 127.0.0.1:client_port -> :server_port (Linux /proc)."""
    inode = None
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(path) as f:
            next(f)
            for line in f:
                parts = line.split()
                if (int(parts[1].rsplit(":", 1)[1], 16) == client_port
                        and int(parts[2].rsplit(":", 1)[1], 16) == server_port):
                    inode = parts[9]
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
    return None


PrivateMariaDB = MariaDBServer  # the kit's MariaDB starter (stoppable, same-port restart)


# ------------------------------------------------------------------------------------------------ processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: pathlib.Path
    port: int  # relay metrics port / worker web port
    env: dict[str, str]
    started: float
    killed: bool = False
    last_health: dict[str, Any] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class ChannelSpec:
    fake: str = "main"
    kind: str = "flow"  # flow | bot
    secret: str = ""
    script: list[Reply] = field(default_factory=list)
    expect: str = "sent"  # expected terminal record status
    expect_error_code: str | None = None


def parse_prometheus(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)$", line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        with contextlib.suppress(ValueError):
            out[(m.group(1), labels)] = float(m.group(3))
    return out


# ------------------------------------------------------------------------------------------------- scenario


class Scenario:
    """One fault case: broker + relays + workers + fakes + load; see the module docstring."""

    def __init__(
        self, name: str, db_url: str, workdir: pathlib.Path, *, relays: int = 1, workers: int = 1,
        rate: float = 8.0, dup_every: int = 5, extra_env: dict[str, str] | None = None,
        fakes: dict[str, FaultFeishu] | None = None, channel_for: Callable[[int, int], ChannelSpec] | None = None,
        user_base: int = 10_000,
    ) -> None:
        self.name, self.db_url, self.workdir = name, db_url, workdir
        self.n_relays, self.n_workers = relays, workers
        self.rate, self.dup_every = rate, dup_every
        self.extra_env = {**FAULT_ENV, **(extra_env or {})}
        client_timeout = float(self.extra_env["SMARTFLOW_NOTIFICATION__HTTP_TIMEOUT_SECONDS"])
        self.fakes = fakes or {"main": FaultFeishu(client_timeout=client_timeout)}
        self.channel_for = channel_for or (lambda _uid, _i: ChannelSpec())
        self.user_base = user_base
        self.tag = uuid.uuid4().hex[:8]
        self.as_topic = f"t.{self.tag}.active-scheduler"
        self.n_topic = f"t.{self.tag}.notification"
        self.relays: list[Proc] = []
        self.workers: list[Proc] = []
        self.retired: list[Proc] = []
        self.events: list[dict[str, Any]] = []
        self.channels: dict[int, ChannelSpec] = {}
        self.triggers: list[tuple[int, str]] = []  # acknowledged (user_id, trigger_id)
        self.insert_failures = 0
        self.requested_at = None
        self.relay_kills = 0
        self.worker_kills = 0
        # record id -> (user id, attempt_count) of every record `sending` right after a worker kill -9
        self._sending_at_worker_kill: dict[int, tuple[int, int]] = {}
        self._load_task: asyncio.Task[None] | None = None
        self._load_stop = asyncio.Event()
        self._scrape_task: asyncio.Task[None] | None = None
        self._stack = contextlib.AsyncExitStack()
        self.t0 = time.monotonic()
        self.broker: subprocess.Popen[bytes] | None = None
        self.injected_published: Counter[str] = Counter()
        self.broker_port = 0
        self.engine: Any = None
        self.wire: TopicReader | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    def note(self, what: str, **detail: Any) -> None:
        self.events.append({"t": round(time.monotonic() - self.t0, 2), "event": what, **detail})

    async def __aenter__(self) -> Scenario:
        try:
            return await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise

    async def _start(self) -> Scenario:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.broker_port = free_port()
        self._broker_log = open(self.workdir / "tansu.log", "ab")
        self.broker = start_tansu(self.broker_port, self._broker_log)
        settings = config.load_settings(database_url=self.db_url, services={
            "notification": {"topic": self.n_topic}, "active-scheduler": {"topic": self.as_topic}})
        config.set_settings(settings)
        self.engine = create_engine(settings)
        await upgrade_schema(self.engine)
        for fake in self.fakes.values():
            await self._stack.enter_async_context(fake)
        self.http = await self._stack.enter_async_context(aiohttp.ClientSession(trust_env=False))
        self.requested_at = clock.now()
        for _ in range(self.n_relays):
            self.start_relay()
        for _ in range(self.n_workers):
            self.start_worker()
        await asyncio.gather(*(self.wait_worker_ready(w) for w in self.workers))
        self.wire = await self._stack.enter_async_context(TopicReader(self.bootstrap, [self.as_topic, self.n_topic]))
        self._scrape_task = asyncio.create_task(self._scrape_relays())
        self.note("started", relays=self.n_relays, workers=self.n_workers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._load_stop.set()
        for task in (self._load_task, self._scrape_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self.exit_codes: dict[str, int | None] = {}
        procs = [p for p in self.relays + self.workers if p.alive]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in procs:
            try:
                p.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill9(p.popen)
            self.exit_codes[p.name] = p.popen.returncode
        await self._stack.aclose()
        stop_process(self.broker)
        if hasattr(self, "_broker_log"):
            self._broker_log.close()
        if self.engine is not None:
            await self.engine.dispose()

    # -- processes --------------------------------------------------------------------------------------------

    def _env(self, web_port: int, **extra: str) -> dict[str, str]:
        env = worker_env(self.db_url, self.bootstrap, self.tag, web_port, **self.extra_env)
        env["SMARTFLOW_WORKER__DATADIR"] = str(self.workdir / f"faust-{web_port}")
        env.update(extra)
        return env

    def start_relay(self, **extra: str) -> Proc:
        port = free_port()
        env = self._env(free_port(), SMARTFLOW_RELAY__METRICS_PORT=str(port), **extra)
        name = f"relay{len(self.relays) + len(self.retired)}"
        log = self.workdir / f"{name}.log"
        proc = Proc(name, spawn_relay(env, log), log, port, env, time.monotonic())
        self.relays.append(proc)
        self.note("relay started", name=name, pid=proc.popen.pid)
        return proc

    def start_worker(self, **extra: str) -> Proc:
        port = free_port()
        env = self._env(port, **extra)
        name = f"worker{len(self.workers) + sum(1 for p in self.retired if p.name.startswith('worker'))}"
        log = self.workdir / f"{name}.log"
        proc = Proc(name, spawn_worker(env, log), log, port, env, time.monotonic())
        self.workers.append(proc)
        self.note("worker started", name=name, pid=proc.popen.pid, **extra)
        return proc

    async def wait_worker_ready(self, proc: Proc, timeout: float = 90.0) -> float:
        """Until the worker logs 'Worker ready' and its /ready answers 200 (it holds partitions); seconds taken."""
        async def ready() -> bool:
            if not proc.alive:
                raise AssertionError(f"{proc.name} exited: {proc.log.read_text(errors='replace')[-3000:]}")
            if "Worker ready" not in (proc.log.read_text(errors="replace") if proc.log.exists() else ""):
                return False
            return await self._ready_200(proc)
        await wait_for(ready, timeout, interval=0.3, what=f"{proc.name} ready")
        return time.monotonic() - proc.started

    async def _ready_200(self, proc: Proc) -> bool:
        try:
            async with self.http.get(f"http://127.0.0.1:{proc.port}/ready",
                                     timeout=aiohttp.ClientTimeout(total=3)) as r:
                return r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    def kill(self, proc: Proc) -> None:
        kill9(proc.popen)
        proc.killed = True
        if proc in self.relays:
            self.relays.remove(proc)
            self.relay_kills += 1
        if proc in self.workers:
            self.workers.remove(proc)
            self.worker_kills += 1
        self.retired.append(proc)
        self.note("kill -9", name=proc.name, pid=proc.popen.pid)

    async def due_rows(self) -> int:
        """Outbox rows pending and due: what the leading relay is reading or publishing right now (the table lease
        is its claim, so its batch carries no per-row mark until it is marked published)."""
        now = clock.db_now()
        due = 0
        async with self.engine.connect() as conn:
            for t in (AS_TABLE, N_TABLE):
                due += int((await conn.execute(sa.select(sa.func.count()).where(
                    t.c.status == "pending", t.c.next_retry_at <= now))).scalar())
        return due

    async def leader_relay(self, table: str = AS_TABLE_NAME) -> Proc | None:
        async with self.engine.connect() as conn:
            owner = (await conn.execute(sa.select(outbox_relay_leases.c.owner).where(
                outbox_relay_leases.c.table_name == table))).scalar()
        if not owner:
            return None
        pid = int(owner.split(":")[1])
        return next((p for p in self.relays if p.popen.pid == pid), None)

    async def kill_relay_mid_batch(self, proc: Proc | None = None, timeout: float = 8.0) -> dict[str, Any]:
        """kill -9 a relay the moment rows are due (it polls every <= 50 ms, so it is reading or publishing them),
        else after ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            seen = await self.due_rows()
            if seen:
                break
            await asyncio.sleep(0.003)
        victim = proc or await self.leader_relay() or self.relays[0]
        self.kill(victim)
        left = await self.due_rows()  # read or published by the dead relay but not marked: the next holder sends them
        info = {"relay": victim.name, "due_seen": seen, "due_after_kill": left}
        self.note("relay killed", **info)
        return info

    async def kill_worker_mid_post(self, fake: str = "main", timeout: float = 15.0) -> dict[str, Any]:
        """kill -9 the worker that has a POST in flight at the fake (found through /proc), else any worker."""
        f = self.fakes[fake]
        deadline = time.monotonic() + timeout
        pids = [w.popen.pid for w in self.workers]
        while time.monotonic() < deadline:
            for post in list(f.inflight.values()):
                pid = socket_owner(post.peer_port, f.port, pids)
                if pid is not None:
                    victim = next(w for w in self.workers if w.popen.pid == pid)
                    # a worker sends up to worker.max_in_flight POSTs at once: count the victim's
                    inflight = sum(1 for p in list(f.inflight.values())
                                   if socket_owner(p.peer_port, f.port, [pid]) == pid)
                    self.kill(victim)
                    info = {"worker": victim.name, "mid_post": True, "user_id": post.user_id,
                            "inflight_posts": max(1, inflight),
                            "sending_at_kill": await self._snapshot_sending()}
                    self.note("worker killed", **info)
                    return info
            await asyncio.sleep(0.01)
        victim = self.workers[0]
        self.kill(victim)
        info = {"worker": victim.name, "mid_post": False, "sending_at_kill": await self._snapshot_sending()}
        self.note("worker killed", **info)
        return info

    async def _snapshot_sending(self) -> int:
        """Remember the records in ``sending`` right after a kill -9 (the victim is reaped, so every claim it made
        is committed and it makes no more): the victim's orphaned claims are among them. Returns how many."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(
                notification_records.c.id, notification_records.c.user_id, notification_records.c.attempt_count)
                .where(notification_records.c.status == "sending"))).all()
        for rid, uid, attempts in rows:
            self._sending_at_worker_kill.setdefault(int(rid), (int(uid), int(attempts)))
        return len(rows)

    def _orphaned_users(self, final_attempts: dict[int, int]) -> set[int]:
        """Users whose record a killed worker left ``sending``: it was ``sending`` at a kill and was claimed
        again afterwards (its final ``attempt_count`` grew: the lease expired and the scanner re-sent it). A
        record the surviving worker held at the kill finishes on its first claim and is not counted."""
        return {uid for rid, (uid, attempts) in self._sending_at_worker_kill.items()
                if final_attempts.get(rid, 0) > attempts}

    def stop_broker(self) -> None:
        stop_process(self.broker)
        self.note("broker stopped")

    def start_broker(self) -> None:
        self.broker = start_tansu(self.broker_port, self._broker_log)
        self.note("broker started")

    def freeze_broker(self) -> None:
        """SIGSTOP: the broker answers nothing and accepts no work, its log and group state survive (what a
        stopped-and-restarted Apache Kafka broker looks like to clients; Tansu here cannot persist)."""
        assert self.broker is not None
        self.broker.send_signal(signal.SIGSTOP)
        self.note("broker frozen")

    def thaw_broker(self) -> None:
        assert self.broker is not None
        self.broker.send_signal(signal.SIGCONT)
        self.note("broker resumed")

    # -- load -------------------------------------------------------------------------------------------------

    def start_load(self, duration: float | None = None) -> None:
        self._load_duration = duration
        self._load_task = asyncio.create_task(self._load(duration))

    async def stop_load(self) -> None:
        self._load_stop.set()
        if self._load_task is not None:
            await self._load_task
        self.note("load stopped", triggers=len(self.triggers), insert_failures=self.insert_failures)

    async def _load(self, duration: float | None) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        i = 0
        next_user = self.user_base
        last_user = None
        while not self._load_stop.is_set():
            elapsed = loop.time() - started
            if duration is not None and elapsed >= duration:
                break
            due = int(elapsed * self.rate) + 1
            while i < due and not self._load_stop.is_set():
                duplicate = bool(self.dup_every and last_user is not None and i % self.dup_every == self.dup_every - 1)
                uid = last_user if duplicate else next_user
                if not duplicate:
                    next_user += 1
                try:
                    trigger_id = await self.insert_trigger(uid, i + 1)
                except Exception as exc:  # noqa: BLE001 - a DB outage: count it, move on with a fresh user
                    self.insert_failures += 1
                    if self.insert_failures <= 3 or self.insert_failures % 20 == 0:
                        self.note("insert failed", error=f"{type(exc).__name__}: {str(exc)[:120]}")
                    last_user = None
                    i += 1
                    await asyncio.sleep(0.2)
                    continue
                self.triggers.append((uid, trigger_id))
                last_user = uid
                i += 1
            await asyncio.sleep(0.02)
        self._load_stop.set()

    async def insert_trigger(self, user_id: int, target_id: int) -> str:
        """What Go's TriggerService + EnqueueActiveScheduleTriggeredInTx write, plus the user's channel if new."""
        requested_at = self.requested_at  # one window for the whole case: a user's triggers share a dedupe key
        now = clock.db_now()
        spec = self.channels.get(user_id)
        async with self.engine.begin() as conn:
            if spec is None:
                spec = self.channel_for(user_id, len(self.channels))
                fake = self.fakes[spec.fake]
                url = fake.url(user_id) if spec.kind == "flow" else fake.bot_url(user_id)
                if spec.secret:
                    fake.secrets[user_id] = spec.secret
                if spec.script:
                    fake.per_user[user_id] = list(spec.script)
                await conn.execute(sa.insert(user_notification_channels).values(
                    user_id=user_id, channel="feishu_webhook", enabled=True, webhook_url=url,
                    auth_type="bearer" if spec.kind == "flow" else "none",
                    bearer_token=f"bearer-secret-{user_id}" if spec.kind == "flow" else "",
                    webhook_kind=spec.kind, sign_secret=spec.secret or None, msg_type="text",
                    created_at=now, updated_at=now))
            trigger_id = await write_upstream_trigger(conn, self.as_topic, user_id, target_id, requested_at, now)
        self.channels[user_id] = spec
        return trigger_id

    # -- observation ------------------------------------------------------------------------------------------

    async def _scrape_relays(self) -> None:
        while True:
            for proc in list(self.relays):
                with contextlib.suppress(Exception):
                    async with self.http.get(f"http://127.0.0.1:{proc.port}/health",
                                             timeout=aiohttp.ClientTimeout(total=2)) as r:
                        proc.last_health = await r.json()
            await asyncio.sleep(0.5)

    async def worker_metrics(self, proc: Proc) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        try:
            async with self.http.get(f"http://127.0.0.1:{proc.port}/metrics",
                                     timeout=aiohttp.ClientTimeout(total=5)) as r:
                return parse_prometheus(await r.text())
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return {}

    async def worker_outcomes(self, proc: Proc) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = defaultdict(dict)
        for (name, labels), value in (await self.worker_metrics(proc)).items():
            if name == "smartflow_outbox_consumed_total":
                d = dict(labels)
                out[d["service"]][d["outcome"]] = int(value)
        return dict(out)

    async def statuses(self, table: sa.Table) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(table.c.status, sa.func.count()).group_by(table.c.status))).all()
        return {str(k): int(v) for k, v in rows}

    async def sent_count(self) -> int:
        return (await self.statuses(notification_records)).get("sent", 0)

    async def settled(self) -> bool:
        if self._load_task is not None and not self._load_task.done():
            return False
        for t in (AS_TABLE, N_TABLE):
            s = await self.statuses(t)
            if s.get("pending") or s.get("published"):
                return False
        r = await self.statuses(notification_records)
        if any(r.get(k) for k in ("pending", "sending", "failed")):
            return False
        tr = await self.statuses(active_schedule_triggers)
        return not any(tr.get(k) for k in ("pending", "processing", "failed"))

    async def wait_settled(self, timeout: float = 90.0) -> float:
        started = time.monotonic()
        try:
            await wait_for(self.settled, timeout, interval=0.5, what=f"{self.name} settled")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; state: {await self.snapshot()}") from None
        return time.monotonic() - started

    async def snapshot(self) -> dict[str, Any]:
        return {
            "triggers": await self.statuses(active_schedule_triggers),
            "outbox_as": await self.statuses(AS_TABLE),
            "outbox_n": await self.statuses(N_TABLE),
            "records": await self.statuses(notification_records),
            "alive": [p.name for p in self.relays + self.workers if p.alive],
        }

    # -- injection helpers --------------------------------------------------------------------------------------

    async def produce(self, records: list[tuple[str, bytes | None, bytes]]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await producer.start()
        try:
            for topic, key, value in records:
                await producer.send_and_wait(topic, value, key=key)
        finally:
            await producer.stop()

    async def insert_outbox_row(self, table: sa.Table, payload: str, *, status: str = "pending",
                                biz_type: str = "active_schedule.triggered", service: str = "active-scheduler",
                                key: str = "poison") -> int:
        now = clock.db_now()
        if status == "published":  # as if a relay had sent it; not a publish the relay counters can know of
            self.injected_published[table.name] += 1
        async with self.engine.begin() as conn:
            result = await conn.execute(sa.insert(table).values(
                biz_type=biz_type, service_name=service, topic=self.as_topic if table is AS_TABLE else self.n_topic,
                message_key=key, payload=payload, status=status, retry_count=0, max_retry=20,
                next_retry_at=now if status == "pending" else None, published_at=now if status == "published" else None,
                created_at=now, updated_at=now))
        return int(result.inserted_primary_key[0])

    # -- invariants -------------------------------------------------------------------------------------------

    async def check_invariants(
        self, *, settle_timeout: float = 90.0, expect_dead: dict[str, int] | None = None,
        tolerated_duplicates: int = 0, expect_dead_messages: int | None = 0, quiet_seconds: float = 1.5,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Wait for settle, assert every invariant (module docstring), return the counts."""
        if self._load_task is not None and not self._load_task.done():
            if self._load_duration is None:
                await self.stop_load()
            else:  # let a timed load run its course
                await self._load_task
                self.note("load done", triggers=len(self.triggers), insert_failures=self.insert_failures)
        settle_seconds = await self.wait_settled(settle_timeout)
        await asyncio.sleep(quiet_seconds)  # a late retry/duplicate POST would show up here
        expect_dead = expect_dead or {}
        res: dict[str, Any] = {"case": self.name, "settle_seconds": round(settle_seconds, 1)}
        async with self.engine.connect() as conn:
            trig = dict((await conn.execute(sa.select(active_schedule_triggers.c.status, sa.func.count())
                                            .group_by(active_schedule_triggers.c.status))).all())
            n_triggers = sum(trig.values())
            n_previews = (await conn.execute(sa.select(sa.func.count()).select_from(active_schedule_previews))).scalar()
            per_trigger = (await conn.execute(
                sa.select(active_schedule_previews.c.trigger_id, sa.func.count())
                .group_by(active_schedule_previews.c.trigger_id).having(sa.func.count() > 1))).all()
            outbox: dict[str, dict[str, Any]] = {}
            for t in (AS_TABLE, N_TABLE):
                counts = dict((await conn.execute(sa.select(t.c.status, sa.func.count()).group_by(t.c.status))).all())
                dead_errors = [e for (e,) in (await conn.execute(sa.select(t.c.last_error).where(t.c.status == "dead")))]
                ever = (await conn.execute(sa.select(sa.func.count()).where(t.c.published_at.is_not(None)))).scalar()
                ever -= self.injected_published[t.name]
                retries = (await conn.execute(sa.select(sa.func.coalesce(sa.func.sum(t.c.retry_count), 0)))).scalar()
                retried_rows = (await conn.execute(sa.select(sa.func.count()).where(t.c.retry_count > 0))).scalar()
                relay_dead = sum(1 for e in dead_errors if (e or "").startswith("failed to parse outbox event shell"))
                outbox[t.name] = {"by_status": {str(k): int(v) for k, v in counts.items()},
                                  "published_ever": int(ever), "retry_count_sum": int(retries),
                                  "rows_retried": int(retried_rows), "relay_dead": relay_dead,
                                  "dead_reasons": sorted({(e or "")[:90] for e in dead_errors})}
            recs = (await conn.execute(sa.select(
                notification_records.c.id,
                notification_records.c.user_id, notification_records.c.status, notification_records.c.attempt_count,
                notification_records.c.last_error_code, notification_records.c.dedupe_key))).all()
            dead_msgs = (await conn.execute(sa.select(outbox_dead_messages.c.reason))).scalars().all()
        # -- triggers and previews
        assert n_triggers >= len(self.triggers), f"acknowledged triggers missing: {n_triggers} < {len(self.triggers)}"
        assert n_triggers <= len(self.triggers) + self.insert_failures
        assert trig == {"preview_generated": n_triggers}, trig
        assert n_previews == n_triggers and not per_trigger, (n_previews, n_triggers, per_trigger)
        # -- outbox
        for name, info in outbox.items():
            by = info["by_status"]
            assert not by.get("pending") and not by.get("published"), (name, by)
            assert by.get("dead", 0) == expect_dead.get(name, 0), (name, by, info["dead_reasons"])
        as_consumed = outbox[AS_TABLE_NAME]["by_status"].get("consumed", 0)
        n_consumed = outbox[N_TABLE_NAME]["by_status"].get("consumed", 0)
        assert as_consumed == n_triggers, (as_consumed, n_triggers)
        assert n_consumed == n_triggers, ("one notification event per trigger", n_consumed, n_triggers)
        assert expect_dead_messages is None or len(dead_msgs) == expect_dead_messages, dead_msgs
        # -- records: one per dedupe key, expected terminal status
        keys = Counter(r.dedupe_key for r in recs)
        assert all(c == 1 for c in keys.values())
        users_with_triggers = {u for u, _ in self.triggers}
        rec_by_user = {int(r.user_id): r for r in recs}
        assert len(rec_by_user) == len(recs), "one dedupe key (one window) per user in a case"
        assert users_with_triggers <= set(rec_by_user), users_with_triggers - set(rec_by_user)
        # -- POSTs per dedupe key
        posts: Counter[int] = Counter()
        delivered: Counter[int] = Counter()
        for fake in self.fakes.values():
            posts.update(p.user_id for p in fake.log)
            delivered.update(p.user_id for p in fake.log if p.delivered)
        duplicates: dict[int, int] = {}
        wrong: list[Any] = []
        retried_records = 0
        for uid, r in rec_by_user.items():
            spec = self.channels.get(uid, ChannelSpec())
            if r.status != spec.expect or (spec.expect_error_code and r.last_error_code != spec.expect_error_code):
                wrong.append((uid, r.status, r.last_error_code, r.attempt_count))
            want = 1 if r.status == "sent" else 0
            if delivered[uid] < want:
                wrong.append((uid, "not delivered", r.status))
            if delivered[uid] > want:
                duplicates[uid] = delivered[uid] - want
            if posts[uid] > r.attempt_count:
                wrong.append((uid, "more POSTs than attempts", posts[uid], r.attempt_count))
            if spec.script and r.attempt_count < 2:
                wrong.append((uid, "scripted failure not retried", r.attempt_count))
            retried_records += r.attempt_count > 1
        assert not wrong, wrong[:20]
        # a kill -9 of a worker may deliver again exactly the records it had claimed and not yet recorded
        # (`worker.max_in_flight` per agent and as many in its scanner); any other duplicate is a defect
        orphaned = self._orphaned_users({int(r.id): int(r.attempt_count) for r in recs})
        unexplained = {u: n - (self.worker_kills if u in orphaned else 0) for u, n in duplicates.items()}
        unexplained = {u: n for u, n in unexplained.items() if n > 0}
        assert sum(unexplained.values()) <= tolerated_duplicates, (unexplained, "orphaned claims:", sorted(orphaned))
        assert len(orphaned) <= 2 * WORKER_MAX_IN_FLIGHT * self.worker_kills, (len(orphaned), self.worker_kills)
        stray = set(posts) - set(rec_by_user)
        assert not stray, f"POSTs for users without a record: {stray}"
        # -- wire (what the topics carried)
        wire_ids = Counter((r.topic, json.loads(r.value)["outbox_id"]) for r in self.wire.records
                           if _outbox_id(r.value) is not None)
        # -- relay counters vs database
        relay_check = await self._check_relay_counters(outbox)
        worker_outcomes: dict[str, Counter[str]] = defaultdict(Counter)
        for w in self.workers:
            for service, counts in (await self.worker_outcomes(w)).items():
                worker_outcomes[service].update(counts)
        n_events = outbox[N_TABLE_NAME]["by_status"].get("consumed", 0)
        rec_status = Counter(r.status for r in recs)
        leaked = self.secrets_in_logs()
        assert not leaked, f"secrets in process logs: {leaked}"
        res.update({
            "triggers_inserted": len(self.triggers), "triggers_in_db": n_triggers,
            "insert_failures": self.insert_failures,
            "triggers_preview_generated": trig.get("preview_generated", 0), "previews": n_previews,
            "outbox": outbox, "notification_events": n_events,
            "records": dict(rec_status), "records_retried": retried_records,
            "dedupe_suppressed": n_events - len(recs),
            "posts_total": sum(posts.values()), "posts_delivered": sum(delivered.values()),
            "duplicate_deliveries": sum(duplicates.values()), "duplicate_users": sorted(duplicates),
            "tolerated_duplicates": tolerated_duplicates + len(orphaned), "orphaned_claims": len(orphaned),
            "max_attempts": max((r.attempt_count for r in recs), default=0),
            "dead_messages": len(dead_msgs), "dead_message_reasons": sorted({m[:80] for m in dead_msgs}),
            "wire_messages": sum(wire_ids.values()), "wire_distinct": len(wire_ids),
            "wire_redelivered_copies": sum(wire_ids.values()) - len(wire_ids),
            "relay_counters": relay_check,
            "live_worker_outcomes": {s: dict(c) for s, c in worker_outcomes.items()},
            "relay_kills": self.relay_kills, "worker_kills": self.worker_kills,
            "logs_checked_for_secrets": len(list(self.workdir.glob("*.log"))),
            "events": self.events,
        })
        if extra:
            res.update(extra)
        return res

    def secrets_in_logs(self) -> dict[str, list[str]]:
        """Configured secrets found in any relay/worker/broker log of this case: channel bearer tokens, bot signing
        secrets and the token segment of every webhook URL (masking is the workers' job; see smartflow_streams
        .masking)."""
        secrets = {s.secret for s in self.channels.values() if s.secret}
        secrets |= {f"bearer-secret-{uid}" for uid, s in self.channels.items() if s.kind == "flow"}
        secrets |= {f"tok-user-{uid}-secretpart" for uid, s in self.channels.items() if s.kind == "flow"}
        secrets |= {f"bot-user-{uid}-secretpart" for uid, s in self.channels.items() if s.kind == "bot"}
        found: dict[str, list[str]] = {}
        for log in sorted(self.workdir.glob("*.log")):
            text = log.read_text(errors="replace")
            hits = sorted(x for x in secrets if x in text)
            if hits:
                found[log.name] = hits[:5]
        return found

    async def _check_relay_counters(self, outbox: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Relay counters (``/health`` stats = the Prometheus counters of that process) against the database."""
        live = [p for p in self.relays if p.alive]
        # backlog gauges: the live relays refresh them every 5 s; wait for one refresh after settle
        async def gauges_match() -> bool:
            for proc in live:
                tables = proc.last_health.get("tables", {})
                for table, info in outbox.items():
                    counts = tables.get(SERVICE_OF_TABLE[table], {}).get("counts", {})
                    if {k: v for k, v in counts.items() if v} != {k: v for k, v in info["by_status"].items() if v}:
                        return False
            return True
        gauges_ok = True
        try:
            await wait_for(gauges_match, 12, interval=0.5, what="relay backlog gauges equal DB counts")
        except AssertionError:
            gauges_ok = False
        summary: dict[str, Any] = {"backlog_gauges_match_db": gauges_ok, "exact": self.relay_kills == 0}
        for table, info in outbox.items():
            service = SERVICE_OF_TABLE[table]
            stats = [p.last_health.get("tables", {}).get(service, {}) for p in self.relays + self.retired]
            published = sum(int(s.get("published", 0)) for s in stats)
            dead = sum(int(s.get("dead", 0)) for s in stats)
            retried = sum(int(s.get("retried", 0)) for s in stats)
            row = {"published": published, "retried": retried, "dead": dead,
                   "db_published_ever": info["published_ever"], "db_retry_count_sum": info["retry_count_sum"],
                   "db_relay_dead": info["relay_dead"]}
            # every mark_published needs a pending row; a row returns to pending only with retry_count + 1
            upper_ok = published <= info["published_ever"] + info["retry_count_sum"]
            row["upper_bound_ok"] = upper_ok
            assert upper_ok, (table, row)
            if self.relay_kills == 0 and live:
                assert published >= info["published_ever"], (table, row)
                assert dead == info["relay_dead"], (table, row)
            summary[service] = row
        assert gauges_ok or not live, f"relay backlog gauges differ from the DB: {[p.last_health for p in live]}"
        return summary


def _outbox_id(value: bytes | None) -> int | None:
    try:
        v = json.loads(value or b"")
        return int(v["outbox_id"]) if isinstance(v, dict) and isinstance(v.get("outbox_id"), int) else None
    except (ValueError, TypeError, KeyError):
        return None


# --------------------------------------------------------------------------------------------------- results


def write_result(result: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a", encoding="utf-8") as f:
        f.write(json.dumps(result, default=str, ensure_ascii=False) + "\n")


def brief(result: dict[str, Any]) -> str:
    keys = ("case", "ok", "seconds", "triggers_in_db", "notification_events", "records", "dedupe_suppressed",
            "posts_total", "posts_delivered", "duplicate_deliveries", "wire_redelivered_copies", "dead_messages")
    return json.dumps({k: result.get(k) for k in keys}, default=str)


async def run_case(name: str, fn: Callable[..., Awaitable[dict[str, Any]]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run one case coroutine, time it, write its JSON line (also on failure), return the result."""
    started = time.monotonic()
    result: dict[str, Any] = {"case": name, "at": datetime.now().isoformat(timespec="seconds"), "params": kwargs}
    try:
        result.update(await fn(*args, **kwargs))
        result["case"] = name  # the run's name (soak runs prefix theirs), not the scenario's
        result["ok"] = True
        return result
    except BaseException as exc:
        result["ok"] = False
        result["error"] = "".join(traceback.format_exception_only(type(exc), exc))[-3000:]
        raise
    finally:
        result["seconds"] = round(time.monotonic() - started, 1)
        write_result(result)


# ------------------------------------------------------------------------------------------------------ cases
# Every case: (db_url, workdir, *, rate, duration) -> result dict. They assert; run_case records.


async def case_a_relay_kill9(db_url: str, workdir: pathlib.Path, *, rate: float = 8, duration: float = 10,
                             kills: int = 3) -> dict[str, Any]:
    """kill -9 of the relay mid-batch (rows due: being read or published, not yet marked), ``kills`` times,
    restarted each time (the new process waits out the dead one's 3 s table lease)."""
    async with Scenario("a_relay_kill9", db_url, workdir, relays=1, workers=1, rate=rate) as sc:
        sc.start_load()
        started = time.monotonic()
        info = []
        for k in range(kills):
            await asyncio.sleep(max(0.5, duration / (kills + 1) - 1))
            info.append(await sc.kill_relay_mid_batch())
            sc.start_relay()
        await asyncio.sleep(max(0.0, duration - (time.monotonic() - started)))
        return await sc.check_invariants(extra={"kills": info})


async def case_b_worker_kill9(db_url: str, workdir: pathlib.Path, *, rate: float = 8, duration: float = 10) -> dict[str, Any]:
    """Two workers; kill -9 of the one with a webhook POST in flight; restarted 3 s later.

    Tolerated: one more delivery for each record the victim had claimed and not yet recorded (its POSTs in flight,
    and those already answered while chunk-mates were still in flight: outcomes are written per chunk of up to
    ``worker.max_in_flight``); they are re-sent after the sending lease (4 s here). Any other duplicate fails the
    case (:meth:`Scenario.check_invariants`). Reported as ``duplicate_deliveries`` / ``orphaned_claims``."""
    async with Scenario("b_worker_kill9", db_url, workdir, relays=1, workers=2, rate=rate) as sc:
        fake = sc.fakes["main"]
        sc.start_load(duration)
        await asyncio.sleep(duration * 0.3)
        fake.default_delay = 0.4  # widen the window between the POST and the outcome write
        killed = await sc.kill_worker_mid_post()
        fake.default_delay = 0.0
        await asyncio.sleep(3)
        proc = sc.start_worker()
        ready = await sc.wait_worker_ready(proc)
        return await sc.check_invariants(extra={"kill": killed, "restart_ready_seconds": round(ready, 1)})


async def case_c_relay_and_worker_kill9(db_url: str, workdir: pathlib.Path, *, rate: float = 8,
                                        duration: float = 10) -> dict[str, Any]:
    """Two relays (exclusive: one leads each table) and two workers; the leading relay and one worker get kill -9
    at the same moment, neither restarted: the standby relay takes over after the 3 s table lease, the surviving
    worker takes the partitions after the session timeout."""
    async with Scenario("c_two_of_each_one_killed", db_url, workdir, relays=2, workers=2, rate=rate) as sc:
        fake = sc.fakes["main"]
        sc.start_load(duration)
        await asyncio.sleep(duration * 0.3)
        fake.default_delay = 0.3
        leader = await sc.leader_relay()
        relay_kill = await sc.kill_relay_mid_batch(leader)
        worker_kill = await sc.kill_worker_mid_post(timeout=3)
        fake.default_delay = 0.0
        before = await sc.sent_count()
        t = time.monotonic()
        await wait_for(lambda: _more_sent(sc, before), 60, interval=0.2, what="progress after the kills")
        return await sc.check_invariants(extra={
            "relay_kill": relay_kill, "worker_kill": worker_kill,
            "first_progress_after_kill_seconds": round(time.monotonic() - t, 1)})


async def _more_sent(sc: Scenario, before: int) -> bool:
    return await sc.sent_count() > before


async def case_d_broker_restart(db_url: str, workdir: pathlib.Path, *, rate: float = 8, duration: float = 12,
                                outage: float = 8.0, worker_grace: float = 60.0) -> dict[str, Any]:
    """Broker unavailable for ``outage`` s under load, then back with its data: Tansu is frozen (SIGSTOP) and
    resumed (SIGCONT), because Tansu only has memory storage and a real stop would lose every topic, offset and
    changelog, which an Apache Kafka broker restart does not. During the outage the relay's publishes time out
    (3 s here) and its rows go back with backoff; the workers' sessions expire (6 s) and they rejoin. The whole
    system must settle on its own within ``worker_grace`` s, with no process restarted.

    Not covered (Tansu-specific, docs/faults.md#cases): Tansu restarted EMPTY. Topics it auto-creates on the
    first produce after such a restart accept records but serve no fetches (observed with Tansu 0.6.0: consumers
    and changelog recovery wait forever), so only an operator re-creating the broker state can recover that."""
    async with Scenario("d_broker_restart", db_url, workdir, relays=1, workers=1, rate=rate) as sc:
        sc.start_load(duration)
        await asyncio.sleep(duration * 0.25)
        sc.freeze_broker()
        await asyncio.sleep(outage)
        sc.thaw_broker()
        resumed_at = time.monotonic()
        await wait_for(sc.settled, worker_grace, interval=0.5, what="settling after the broker outage")
        recovery = time.monotonic() - resumed_at
        sc.note("recovered", seconds=round(recovery, 1))
        return await sc.check_invariants(settle_timeout=60, tolerated_duplicates=0, extra={
            "recovery_seconds": round(recovery, 1), "outage_seconds": outage})


async def case_e_database_restart(db_url: str | None, workdir: pathlib.Path, *, rate: float = 8,
                                  duration: float = 12, outage: float = 3.0) -> dict[str, Any]:
    """A private MariaDB (scripts/mariadb.sh, own datadir and port) shut down for ``outage`` s under load and
    started again. ``db_url`` is ignored: the case needs a server it may stop."""
    server = PrivateMariaDB(workdir / "mariadb")
    await asyncio.to_thread(server.start)
    try:
        url = await server.create_database()
        async with Scenario("e_database_restart", url, workdir, relays=1, workers=1, rate=rate) as sc:
            sc.start_load(duration)
            await asyncio.sleep(duration * 0.3)
            t = time.monotonic()
            await asyncio.to_thread(server.stop)
            sc.note("database stopped", took=round(time.monotonic() - t, 1))
            await asyncio.sleep(outage)
            t = time.monotonic()
            await asyncio.to_thread(server.restart_same_port)
            sc.note("database started", took=round(time.monotonic() - t, 1))
            alive = {p.name: p.alive for p in sc.relays + sc.workers}
            res = await sc.check_invariants(settle_timeout=120, tolerated_duplicates=1,
                                            extra={"outage_seconds": outage, "alive_after_restart": alive})
            assert all(p.alive for p in sc.relays + sc.workers), "a process died from the DB outage"
            return res
    finally:
        await asyncio.to_thread(server.stop)


async def case_f_duplicate_deliveries(db_url: str, workdir: pathlib.Path, *, rate: float = 8,
                                      duration: float = 10) -> dict[str, Any]:
    """Every envelope on both topics produced again (mid-load and after settling), and a worker in a NEW consumer
    group (SMARTFLOW_WORKER__GROUP_ID, so also new Faust tables: empty dedupe/consumption state) reading both
    topics from the beginning: not one extra POST."""
    async with Scenario("f_duplicate_deliveries", db_url, workdir, relays=1, workers=1, rate=rate) as sc:
        sc.start_load(duration)
        await asyncio.sleep(duration / 2)
        first = [(r.topic, r.key, r.value) for r in list(sc.wire.records)]
        await sc.produce(first)
        sc.note("replayed mid-load", messages=len(first))
        await sc._load_task  # noqa: SLF001 - let the load run its course
        await sc.wait_settled()
        posts_before = sum(len(f.log) for f in sc.fakes.values())
        await asyncio.sleep(1)
        everything = [(r.topic, r.key, r.value) for r in list(sc.wire.records)]
        await sc.produce(everything)
        sc.note("replayed all", messages=len(everything))
        replay = sc.start_worker(SMARTFLOW_WORKER__GROUP_ID=f"sf-{sc.tag}-replay-group")
        await sc.wait_worker_ready(replay)
        total = {"active-scheduler": 0, "notification": 0}
        for r in sc.wire.records:
            total["active-scheduler" if r.topic == sc.as_topic else "notification"] += 1

        async def replay_done() -> bool:
            outcomes = await sc.worker_outcomes(replay)
            return all(sum(outcomes.get(s, {}).values()) >= n for s, n in total.items())
        await wait_for(replay_done, 90, interval=0.5, what="the new-group worker consumed every message")
        replay_outcomes = await sc.worker_outcomes(replay)
        res = await sc.check_invariants(extra={"replayed_mid_load": len(first), "replayed_all": len(everything),
                                               "new_group_outcomes": replay_outcomes,
                                               "topic_messages_at_end": total})
        posts_after = sum(len(f.log) for f in sc.fakes.values())
        assert posts_after == posts_before, (posts_before, posts_after)
        for service, counts in replay_outcomes.items():
            assert set(counts) <= {"duplicate"}, (service, counts)
        res["posts_after_settle_delta"] = posts_after - posts_before
        return res


async def case_g_poison(db_url: str, workdir: pathlib.Path, *, rate: float = 8, duration: float = 10) -> dict[str, Any]:
    """Poison mixed into live traffic: garbage bytes and envelopes with bad versions / invalid payloads produced
    straight to both topics, and poison outbox rows (bad shell JSON, bad version, invalid payload, unknown type).
    Each ends ``dead`` with its reason or in ``outbox_dead_messages``; good events are unaffected."""
    async with Scenario("g_poison", db_url, workdir, relays=1, workers=1, rate=rate) as sc:
        sc.start_load(duration)
        await asyncio.sleep(duration * 0.3)
        trig = json.dumps({"trigger_id": "ast_x", "user_id": "not-a-number"})
        expected: dict[tuple[str, int], tuple[sa.Table, str]] = {}  # ids repeat across the two tables

        async def row(table: sa.Table, payload: str, reason: str, **kw: Any) -> int:
            oid = await sc.insert_outbox_row(table, payload, **kw)
            expected[(table.name, oid)] = (table, reason)
            return oid
        n_kw = dict(biz_type="notification.feishu.requested", service="notification")
        # relay-side poison: the shell itself cannot be parsed
        await row(AS_TABLE, "{not json", "failed to parse outbox event shell")
        await row(N_TABLE, '{"event_type":"","payload":{}}', "failed to parse outbox event shell", **n_kw)
        # consumer-side poison carried by the relay
        await row(AS_TABLE, json.dumps({"event_type": "active_schedule.triggered", "event_version": "9",
                                        "payload": {"x": 1}}), "event_version not supported")
        await row(AS_TABLE, json.dumps({"event_type": "active_schedule.triggered", "event_version": "1",
                                        "payload": json.loads(trig)}), "payload invalid")
        await row(AS_TABLE, json.dumps({"event_type": "no.such.event", "event_version": "1", "payload": {}}),
                  "no handler registered")
        await row(N_TABLE, json.dumps({"event_type": "notification.feishu.requested", "event_version": "1",
                                       "payload": {"user_id": 1}}), "payload invalid", **n_kw)
        # envelopes produced straight to the topics, for rows that are 'published' (as if a relay had sent them)
        direct_as = await row(AS_TABLE, "{}", "event_version not supported", status="published")
        direct_n = await row(N_TABLE, "{}", "invalid envelope", status="published", **n_kw)
        direct_n2 = await row(N_TABLE, "{}", "payload invalid", status="published", **n_kw)
        bad_version = json.dumps({"outbox_id": direct_as, "event_type": "active_schedule.triggered",
                                  "event_version": "7", "service_name": "active-scheduler", "payload": {}}).encode()
        truncated = f'{{"outbox_id":{direct_n},"event_type":"notification.feishu.requested","payl'.encode()
        bad_payload = json.dumps({"outbox_id": direct_n2, "event_type": "notification.feishu.requested",
                                  "event_version": "1", "service_name": "notification",
                                  "payload": {"user_id": "seven"}}).encode()
        garbage = [b"\x00\xff\xfe garbage", b"[1,2,3]", b'{"outbox_id":"12"}']
        msgs: list[tuple[str, bytes | None, bytes]] = [
            (sc.as_topic, b"poison", bad_version), (sc.n_topic, b"poison", truncated),
            (sc.n_topic, b"poison", bad_payload)]
        msgs += [(topic, b"poison", g) for topic in (sc.as_topic, sc.n_topic) for g in garbage]
        # an envelope whose outbox_id matches no row (observed, reported: see ``orphan_envelope_recorded``)
        orphan_id = 987_654_321
        msgs.append((sc.as_topic, b"poison", json.dumps({
            "outbox_id": orphan_id, "event_type": "active_schedule.triggered", "event_version": "7",
            "service_name": "active-scheduler", "payload": {}}).encode()))
        await sc.produce(msgs)
        sc.note("poison injected", rows=len(expected), messages=len(msgs))
        res = await sc.check_invariants(
            expect_dead={AS_TABLE_NAME: sum(1 for t, _ in expected.values() if t is AS_TABLE),
                         N_TABLE_NAME: sum(1 for t, _ in expected.values() if t is N_TABLE)},
            expect_dead_messages=None)
        async with sc.engine.connect() as conn:
            for (_, oid), (table, reason) in expected.items():
                status, error = (await conn.execute(sa.select(table.c.status, table.c.last_error)
                                                    .where(table.c.id == oid))).one()
                assert status == "dead" and reason in (error or ""), (table.name, oid, status, error, reason)
            reasons = (await conn.execute(sa.select(outbox_dead_messages.c.reason, outbox_dead_messages.c.raw_value)))
            stored = reasons.all()
        garbage_stored = [r for r in stored if str(orphan_id) not in (r.raw_value or "")]
        assert len(garbage_stored) == 2 * len(garbage), stored
        assert all(r.reason.startswith("invalid envelope") for r in garbage_stored), stored
        res["orphan_envelope_recorded"] = len(stored) > len(garbage_stored)
        res["poison_rows"] = len(expected)
        res["poison_messages"] = len(msgs)
        return res


async def case_h_webhook_failures(db_url: str, workdir: pathlib.Path, *, rate: float = 6,
                                  duration: float = 10) -> dict[str, Any]:
    """The webhook fails with 5xx, throttles (HTTP 429; for a custom bot, code 11232), times out (answers after
    1.5 s, client timeout 1 s), and has a 3 s global 503 outage mid-load; then recovers: every record ends
    ``sent``, retried ones with ``attempt_count > 1``, one delivered POST each. max_attempts is 10 here so the
    outage plus a scripted failure cannot exhaust a record."""
    ok_delay = 0.0
    pattern = [
        ChannelSpec(script=[(500, {"msg": "down"}, 0.0), (503, {"msg": "unavailable"}, 0.0)]),
        ChannelSpec(script=[(429, {"code": 99991400, "msg": "too many request"}, 0.0)]),
        ChannelSpec(script=[(200, FLOW_OK, 1.5)]),  # slower than the 1 s client timeout
        ChannelSpec(kind="bot", script=[(200, {"code": 11232, "msg": "frequency limited"}, ok_delay)] * 2),
        ChannelSpec(kind="bot", secret="bot-sign-secret"),
        ChannelSpec(kind="bot", script=[(502, {"msg": "bad gateway"}, 0.0)]),
        ChannelSpec(), ChannelSpec(),
    ]
    env = {"SMARTFLOW_NOTIFICATION__HTTP_TIMEOUT_SECONDS": "1", "SMARTFLOW_NOTIFICATION__MAX_ATTEMPTS": "10"}
    fakes = {"main": FaultFeishu(client_timeout=1.0)}
    async with Scenario("h_webhook_failures", db_url, workdir, relays=1, workers=2, rate=rate, extra_env=env,
                        fakes=fakes, channel_for=lambda _uid, i: _copy_spec(pattern[i % len(pattern)])) as sc:
        sc.start_load(duration)
        await asyncio.sleep(duration * 0.4)
        fakes["main"].outage = (503, {"msg": "maintenance"}, 0.0)
        sc.note("webhook outage begins")
        await asyncio.sleep(3)
        fakes["main"].outage = None
        sc.note("webhook outage ends")
        res = await sc.check_invariants(settle_timeout=120)
        reasons = Counter(p.reason or "ok" for p in fakes["main"].log)
        res["post_reasons"] = dict(reasons)
        res["sign_ok"] = fakes["main"].sign_ok
        async with sc.engine.connect() as conn:
            attempts = Counter((await conn.execute(sa.select(notification_records.c.attempt_count))).scalars().all())
        res["attempt_histogram"] = dict(sorted(attempts.items()))
        assert res["records_retried"] >= sum(1 for s in sc.channels.values() if s.script)
        assert reasons.get("outage", 0) > 0, "the outage window saw no traffic"
        return res


def _copy_spec(spec: ChannelSpec) -> ChannelSpec:
    return ChannelSpec(spec.fake, spec.kind, spec.secret, list(spec.script), spec.expect, spec.expect_error_code)


async def case_i_signer_clock_skew(db_url: str, workdir: pathlib.Path, *, rate: float = 6,
                                   duration: float = 8) -> dict[str, Any]:
    """Custom-bot channels with signing. Sub-case 1: the Feishu fake's clock is 2 h ahead, so every signature
    timestamp is rejected (code 19021): the record ends ``dead`` ``bot_sign_failed`` after exactly one POST, no
    retries. Sub-case 2 (other users, another fake): skew 30 min, within Feishu's 1 h: ``sent``."""
    fakes = {"skew2h": FaultFeishu(client_timeout=2.0, skew_seconds=7200, name="skew2h"),
             "skew30m": FaultFeishu(client_timeout=2.0, skew_seconds=1800, name="skew30m")}

    def channel_for(_uid: int, i: int) -> ChannelSpec:
        if i % 2 == 0:
            return ChannelSpec(fake="skew2h", kind="bot", secret=f"sec-{i}", expect="dead",
                               expect_error_code="bot_sign_failed")
        return ChannelSpec(fake="skew30m", kind="bot", secret=f"sec-{i}")
    async with Scenario("i_signer_clock_skew", db_url, workdir, relays=1, workers=1, rate=rate, fakes=fakes,
                        channel_for=channel_for) as sc:
        sc.start_load(duration)
        res = await sc.check_invariants(quiet_seconds=3.0)
        skewed = [u for u, s in sc.channels.items() if s.fake == "skew2h"]
        per_user = fakes["skew2h"].posts_by_user()
        assert all(per_user.get(u) == 1 for u in skewed), {u: per_user.get(u) for u in skewed}
        async with sc.engine.connect() as conn:
            rows = (await conn.execute(sa.select(notification_records.c.attempt_count, notification_records.c.status)
                                       .where(notification_records.c.user_id.in_(skewed)))).all()
            n_retried = (await conn.execute(sa.select(sa.func.count()).where(N_TABLE.c.retry_count > 0))).scalar()
        assert all(r.attempt_count == 1 and r.status == "dead" for r in rows), rows
        res.update({"skew2h_users": len(skewed), "skew2h_posts": sum(per_user.values()),
                    "skew2h_sign_rejected": fakes["skew2h"].sign_rejected,
                    "skew30m_users": len(sc.channels) - len(skewed), "skew30m_sign_ok": fakes["skew30m"].sign_ok,
                    "notification_rows_retried": n_retried})
        assert fakes["skew30m"].sign_rejected == 0
        return res


CASES: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "a": case_a_relay_kill9,
    "b": case_b_worker_kill9,
    "c": case_c_relay_and_worker_kill9,
    "d": case_d_broker_restart,
    "e": case_e_database_restart,
    "f": case_f_duplicate_deliveries,
    "g": case_g_poison,
    "h": case_h_webhook_failures,
    "i": case_i_signer_clock_skew,
}
