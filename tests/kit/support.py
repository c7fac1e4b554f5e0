"""Helpers for integration tests: spawn relays/workers as real processes, read topics back, poll the DB."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer

from tests.kit.feishu import FakeFeishu  # noqa: F401 - the kit's fake Feishu, importable from here too

ROOT = pathlib.Path(__file__).resolve().parents[2]


def base_env(db_url: str, bootstrap: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTFLOW_")}
    env.update({
        "SMARTFLOW_DATABASE_URL": db_url,
        "SMARTFLOW_KAFKA_BOOTSTRAP": bootstrap,
        "SMARTFLOW_RELAY__METRICS_PORT": "0",
        "SMARTFLOW_LOG_LEVEL": "info",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


SPAWNED: list[subprocess.Popen[bytes]] = []


def spawn(args: list[str], env: dict[str, str], log_path: pathlib.Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")
    proc = subprocess.Popen([sys.executable, *args], env=env, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    SPAWNED.append(proc)
    return proc


def kill_leftovers() -> None:
    """Session teardown: no process a test spawned may outlive the test session, whatever the test did."""
    for proc in SPAWNED:
        if proc.poll() is None:
            kill9(proc)


def spawn_relay(env: dict[str, str], log_path: pathlib.Path) -> subprocess.Popen[bytes]:
    return spawn(["-m", "outbox_relay"], env, log_path)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def terminate(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill9(proc)
        return -9


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.1,
                   what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class TopicReader:
    """Reads topics from the beginning in the background (no consumer group: plain assignment via subscribe)."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.bootstrap, self.topics = bootstrap, topics
        self.records: list[Any] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TopicReader:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass

    async def _run(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(*self.topics, bootstrap_servers=self.bootstrap, group_id=None,
                                        auto_offset_reset="earliest", enable_auto_commit=False,
                                        metadata_max_age_ms=1000)
            try:
                await consumer.start()
                while True:
                    batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                    for records in batch.values():
                        self.records.extend(records)
            except asyncio.CancelledError:
                raise
            except Exception:  # broker restarting: reconnect
                await asyncio.sleep(0.5)
            finally:
                try:
                    await consumer.stop()
                except Exception:
                    pass

    def outbox_ids(self) -> list[int]:
        return [json.loads(r.value)["outbox_id"] for r in self.records]

    async def wait_count(self, n: int, timeout: float) -> None:
        async def enough() -> bool:
            return len({(r.topic, json.loads(r.value)["outbox_id"]) for r in self.records}) >= n
        await wait_for(enough, timeout, what=f"{n} distinct outbox ids on {self.topics}")



def worker_env(db_url: str, bootstrap: str, tag: str, web_port: int, **extra: str) -> dict[str, str]:
    """Env for a real worker (and relay) on Tansu with per-test topics, group and fast timers."""
    from smartflow_streams.cli.embedded import tansu_env

    env = base_env(
        db_url, bootstrap,
        SMARTFLOW_APP_ID=f"sf-{tag}",
        SMARTFLOW_SERVICES__NOTIFICATION__TOPIC=f"t.{tag}.notification",
        SMARTFLOW_SERVICES__ACTIVE_SCHEDULER__TOPIC=f"t.{tag}.active-scheduler",
        SMARTFLOW_RELAY__SERVICES='["active-scheduler", "notification"]',
        SMARTFLOW_WORKER__WEB_PORT=str(web_port),
        SMARTFLOW_WORKER__DATADIR=f"/tmp/sf-faust-{tag}-{web_port}",
        SMARTFLOW_NOTIFICATION__ALLOW_PLAIN_HTTP="true",
        SMARTFLOW_NOTIFICATION__ALLOWED_HOSTS='["127.0.0.1"]',
        SMARTFLOW_NOTIFICATION__RETRY_SCAN_EVERY_SECONDS="0.5",
        SMARTFLOW_NOTIFICATION__BASE_DELAY_SECONDS="0.5",
        SMARTFLOW_NOTIFICATION__MAX_DELAY_SECONDS="2",
        SMARTFLOW_NOTIFICATION__SENDING_LEASE_SECONDS="5",
        SMARTFLOW_NOTIFICATION__HTTP_TIMEOUT_SECONDS="2",
        SMARTFLOW_NOTIFICATION__RATE_LIMIT_ENABLED="false",
        SMARTFLOW_RELAY__REPUBLISH_AFTER_SECONDS="20",
        SMARTFLOW_RELAY__LEASE_SECONDS="5",
        SMARTFLOW_RELAY__TABLE_LEASE_SECONDS="3",
    )
    env.update(tansu_env())
    env.update(extra)
    return env


def spawn_worker(env: dict[str, str], log_path: pathlib.Path) -> subprocess.Popen[bytes]:
    port = env["SMARTFLOW_WORKER__WEB_PORT"]
    return spawn(["-m", "faust", "-A", "smartflow_streams", "worker", "-l", "info", "--web-port", port,
                  "--web-host", "127.0.0.1"], env, log_path)


async def wait_worker_ready(log_path: pathlib.Path, timeout: float = 60.0) -> None:
    """A worker is ready when Faust logs 'Worker ready' and it got a partition assignment."""
    async def ready() -> bool:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        return "Worker ready" in text
    await wait_for(ready, timeout, interval=0.2, what=f"worker ready ({log_path.name})")


def upstream_trigger_rows(topic: str, user_id: int, target_id: int, requested_at: datetime,
                          now: datetime | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Exactly what Go's TriggerService + EnqueueActiveScheduleTriggeredInTx write: the values of a ``pending``
    trigger row and of its ``active_schedule.triggered`` outbox row keyed by the user id. Row times are ``now``
    (naive, DB zone), default ``requested_at``."""
    from smartflow_streams.contracts.dedupe import new_trigger_id, trigger_dedupe_key
    from smartflow_streams.contracts.envelope import OutboxEventShell
    from smartflow_streams.contracts.events import ActiveScheduleTriggeredPayload

    trigger_id = new_trigger_id()
    dedupe = trigger_dedupe_key(user_id, "important_urgent_task", "task_pool", target_id, requested_at)
    payload = ActiveScheduleTriggeredPayload(
        trigger_id=trigger_id, user_id=user_id, trigger_type="important_urgent_task", source="api_trigger",
        target_type="task_pool", target_id=target_id, dedupe_key=dedupe, is_mock_time=False,
        requested_at=requested_at, payload="{}", trace_id=f"trace_api_trigger_{user_id}_{target_id}")
    shell = OutboxEventShell(event_id=trigger_id, event_type="active_schedule.triggered", event_version="1",
                             aggregate_id=trigger_id, payload=payload.to_json())
    naive = requested_at.replace(tzinfo=None)
    at = now or naive
    trigger = dict(id=trigger_id, user_id=user_id, trigger_type="important_urgent_task", source="api_trigger",
                   target_type="task_pool", target_id=target_id, dedupe_key=dedupe, status="pending",
                   is_mock_time=False, requested_at=naive, payload_json="{}", trace_id=payload.trace_id,
                   created_at=at, updated_at=at)
    outbox = dict(biz_type="active_schedule.triggered", service_name="active-scheduler", topic=topic,
                  message_key=str(user_id), payload=shell.to_json(), status="pending", retry_count=0, max_retry=20,
                  next_retry_at=at, created_at=at, updated_at=at)
    return trigger, outbox


async def write_upstream_trigger(conn: Any, topic: str, user_id: int, target_id: int, requested_at: datetime,
                                 now: datetime | None = None) -> str:
    """:func:`upstream_trigger_rows` written on ``conn`` (the caller's transaction); returns the trigger id."""
    import sqlalchemy as sa

    from smartflow_streams.db.models import active_schedule_triggers, outbox_table

    trigger, outbox = upstream_trigger_rows(topic, user_id, target_id, requested_at, now)
    await conn.execute(sa.insert(active_schedule_triggers).values(**trigger))
    await conn.execute(sa.insert(outbox_table("active_scheduler_outbox_messages")).values(**outbox))
    return str(trigger["id"])


class TcpProxy:
    """Test-only TCP relay on 127.0.0.1 to ``target_port``, optionally terminating TLS (``server_context``; client
    certificate required when the context asks for one). ``handshakes`` counts accepted sessions (with TLS: completed
    handshakes, so a test can show its traffic really was encrypted). ``freeze()`` stops forwarding in both
    directions while keeping every connection open (a stalled network path: no RST, no answer), ``thaw()`` resumes;
    bytes read meanwhile are held, not dropped."""

    def __init__(self, target_port: int, server_context: Any = None) -> None:
        from smartflow_streams.cli.embedded import free_port

        self.target_port, self.context = target_port, server_context
        self.port = free_port()
        self.handshakes = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.context)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    await self._flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        tasks = [asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._tasks.difference_update(tasks)


class TlsProxy(TcpProxy):
    """A :class:`TcpProxy` that terminates TLS: the Kafka security tests put it in front of a Tansu broker that
    advertises this proxy's port, so every client connection, metadata and fetches alike, goes through TLS."""

    def __init__(self, target_port: int, server_context: Any) -> None:
        super().__init__(target_port, server_context)
