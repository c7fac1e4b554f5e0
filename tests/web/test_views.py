"""The worker's web views over real HTTP: one real `faust worker` process per backend (SQLite, MariaDB) against a
real Tansu broker, started once per module and backend (about 5 s each) and shared by the tests below.

Tests share the backend's database, so each one works on its own outbox table (service) or user. The last test
greps every body served in this module and the worker's log for the configured secrets.
"""

from __future__ import annotations

# Size (~570 lines): one real worker stack per backend is shared by every view test here (module-scoped fixture);
# splitting the file would start a worker stack again per file.

import asyncio
import json
import pathlib
import random
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

import config
from conftest import DB, drop_database, make_database
from smartflow_streams.core import clock
from smartflow_streams.catalog import BUILTIN_SERVICES, registry
from smartflow_streams.db.engine import create_engine
from smartflow_streams.db.models import (
    active_schedule_triggers, notification_records, outbox_admin_audit, outbox_dead_messages, outbox_table,
)
from smartflow_streams.db.schema import upgrade_schema
from smartflow_streams.cli.embedded import free_port
from tests.kit.support import FakeFeishu, spawn_worker, terminate, worker_env

pytestmark = pytest.mark.slow

ADMIN = "adm-7f3e9c2b51d4"
API = "tok-user-42"
BEARER_SECRET = "bearer-secret-6d1a0c"
WEBHOOK_SECRET = "tok-user-42-secretpart"  # last path segment of FakeFeishu.url(42)
SECRETS = (ADMIN, API, BEARER_SECRET, WEBHOOK_SECRET)
TEST_INTERVAL = 2.0  # notification.channel_test_interval_seconds of this module's worker


@dataclass
class Stack:
    kind: str
    db: DB
    tag: str
    base: str
    log: pathlib.Path
    ready_statuses: list[Any]
    bodies: list[str] = field(default_factory=list)
    pid: int = 0  # the worker process's id (its /health reports it)


def _poll_ready(base: str, proc: Any, log: pathlib.Path, bodies: list[str], timeout: float = 60.0) -> list[Any]:
    statuses: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/ready", timeout=3) as resp:
                bodies.append(resp.read().decode())
                statuses.append(resp.status)
                return statuses
        except urllib.error.HTTPError as exc:
            bodies.append(exc.read().decode())
            statuses.append(exc.code)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            statuses.append("down")
        time.sleep(0.2)
    raise AssertionError(f"worker not ready after {timeout} s: {statuses[-5:]}")


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def stack(request: pytest.FixtureRequest, kafka_bootstrap: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    kind = str(request.param)
    mysql = request.getfixturevalue("mariadb_url") if kind == "mariadb" else None
    tmp = tmp_path_factory.mktemp(f"web-{kind}")

    async def prepare() -> DB:
        handle = await make_database(kind, tmp, mysql)
        await upgrade_schema(handle.engine)
        await handle.engine.dispose()
        return handle

    db = asyncio.run(prepare())
    tag, port = uuid.uuid4().hex[:8], free_port()
    env = worker_env(db.url, kafka_bootstrap, tag, port, SMARTFLOW_ADMIN_TOKEN=ADMIN,
                     SMARTFLOW_API_TOKENS=json.dumps({API: 42}),
                     SMARTFLOW_NOTIFICATION__CHANNEL_TEST_INTERVAL_SECONDS=str(TEST_INTERVAL),
                     SMARTFLOW_WORKER__AUTH_FAILURES_PER_MINUTE="1000")  # tests/web/test_auth.py tests the throttle
    log = tmp / "worker.log"
    proc = spawn_worker(env, log)
    base = f"http://127.0.0.1:{port}"
    bodies: list[str] = []
    try:
        statuses = _poll_ready(base, proc, log, bodies)
        yield Stack(kind, db, tag, base, log, statuses, bodies, proc.pid)
    finally:
        assert terminate(proc) == 0
        asyncio.run(drop_database(db, mysql))


class Client:
    """aiohttp client that keeps every body it receives (for the secrets check)."""

    def __init__(self, http: aiohttp.ClientSession, stack: Stack) -> None:
        self.http, self.stack = http, stack

    async def call(self, method: str, path: str, *, token: str | None = None, body: Any = None,
                   raw: bytes | str | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        kwargs: dict[str, Any] = {"headers": h}
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        async with self.http.request(method, self.stack.base + path, **kwargs) as resp:
            text = await resp.text()
            self.stack.bodies.append(text)
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text


@dataclass
class Env:
    stack: Stack
    engine: AsyncEngine
    client: Client


@pytest.fixture
async def env(stack: Stack) -> AsyncIterator[Env]:
    config.set_settings(stack.db.settings)
    engine = create_engine(stack.db.settings)
    async with aiohttp.ClientSession() as http:
        yield Env(stack, engine, Client(http, stack))
    await engine.dispose()


async def insert_rows(engine: AsyncEngine, service: str, *rows: dict[str, Any]) -> list[int]:
    """Outbox rows for ``service``; each dict gives status and optionally ages/errors."""
    route = registry.service_route(service)
    table = outbox_table(route.table)
    now = clock.db_now()
    ids = []
    async with engine.begin() as conn:
        for row in rows:
            created = now - timedelta(seconds=row.get("age", 0))
            result = await conn.execute(sa.insert(table).values(
                biz_type=row.get("biz_type", "test.event"), service_name=service, topic=route.topic,
                message_key=row.get("key", "1"), payload="{}", status=row["status"],
                retry_count=row.get("retry_count", 0), max_retry=20, next_retry_at=created,
                last_error=row.get("last_error"), created_at=created, updated_at=created,
                consumed_at=(now - timedelta(days=row["consumed_days_ago"])) if "consumed_days_ago" in row else None))
            ids.append(int(result.inserted_primary_key[0]))
    return ids


async def outbox_row(engine: AsyncEngine, service: str, oid: int) -> Any:
    table = outbox_table(registry.service_route(service).table)
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(table).where(table.c.id == oid))).mappings().first()


# -- health, readiness, metrics ----------------------------------------------------------------------------------


async def test_health_and_ready(env: Env) -> None:
    assert await env.client.call("GET", "/health") == (200, {"status": "ok", "pid": env.stack.pid})
    status, body = await env.client.call("GET", "/ready")
    assert status == 200 and body["status"] == "ready"
    checks = body["checks"]
    assert set(checks) == {"database", "consumer", "topics"} and all(c["ok"] for c in checks.values())
    assert checks["consumer"]["partitions"] > 0
    tag = env.stack.tag
    assert sorted(checks["topics"]["topics"]) == [f"t.{tag}.active-scheduler", f"t.{tag}.notification"]
    # before the group was joined the worker answered 503 (or was not listening yet), never anything else
    assert env.stack.ready_statuses[-1] == 200
    assert set(env.stack.ready_statuses[:-1]) <= {503, "down"}


async def test_metrics_refresh_gauges_from_the_db(env: Env) -> None:
    await insert_rows(env.engine, "memory", {"status": "pending", "age": 40}, {"status": "pending"},
                      {"status": "dead", "last_error": "boom"})
    now = clock.db_now()
    async with env.engine.begin() as conn:
        await conn.execute(sa.insert(notification_records).values(
            channel="feishu", user_id=9, trigger_id="ast_m", preview_id="asp_m", trigger_type="t", target_type="x",
            target_id=1, dedupe_key="metrics-test", target_url="/assistant/m", status="sent", created_at=now,
            updated_at=now))
    prefix = f"sf_{env.stack.tag}"
    text = ""
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:  # the gauges refresh at most every 2 s
        status, text = await env.client.call("GET", "/metrics")
        assert status == 200
        if 'smartflow_outbox_rows{service="memory",status="pending"} 2.0' in text:
            break
        await asyncio.sleep(0.5)
    assert 'smartflow_outbox_rows{service="memory",status="pending"} 2.0' in text
    assert 'smartflow_outbox_rows{service="memory",status="dead"} 1.0' in text
    assert 'smartflow_notification_records{status="sent"} 1.0' in text
    oldest = [line for line in text.splitlines()
              if line.startswith('smartflow_outbox_oldest_pending_seconds{service="memory"}')]
    assert oldest and float(oldest[0].split()[-1]) >= 39
    assert f"{prefix}_messages_received_total" in text  # Faust's sensor, same registry
    assert f"{prefix}_assignment_operations_total" in text


# -- /outbox/ ----------------------------------------------------------------------------------------------------


async def test_outbox_overview(env: Env) -> None:
    error = f"POST failed: Authorization: Bearer {BEARER_SECRET}; admin {ADMIN}; poison payload"
    *_, dead = await insert_rows(
        env.engine, "llm", {"status": "pending", "age": 61}, {"status": "published"}, {"status": "consumed"},
        {"status": "consumed"}, {"status": "dead", "last_error": error, "biz_type": "llm.call"})
    status, body = await env.client.call("GET", "/outbox/")
    assert status == 200
    services = {s["service"]: s for s in body["services"]}
    assert set(services) >= set(BUILTIN_SERVICES)  # every catalog table exists after upgrade_schema
    llm = services["llm"]
    assert llm["counts"] == {"pending": 1, "published": 1, "consumed": 2, "dead": 1}
    assert llm["oldest_pending_seconds"] >= 60 and llm["consumed_by_this_worker"] is False
    [row] = llm["recent_dead"]
    assert row["id"] == dead and row["biz_type"] == "llm.call"
    assert "Bearer ****" in row["last_error"] and "poison payload" in row["last_error"]
    assert BEARER_SECRET not in row["last_error"] and ADMIN not in row["last_error"]
    assert services["notification"]["consumed_by_this_worker"]
    assert services["active-scheduler"]["consumed_by_this_worker"]
    assert services["notification"]["topic"] == f"t.{env.stack.tag}.notification"
    assert isinstance(body["consumption"], dict)  # the worker's Faust table is there (empty: nothing consumed yet)
    assert set(body["notifications"]["records"]) >= {"pending", "sending", "sent", "failed", "dead", "skipped"}
    assert body["worker"]["services"] == ["active-scheduler", "notification"]
    assert isinstance(body["dead_messages"], int)


# -- admin -------------------------------------------------------------------------------------------------------

ADMIN_ROUTES = [  # on "agent": the requeue/purge tests below count the audit rows of their own services
    ("GET", "/admin/dead/agent/", None), ("POST", "/admin/dead/agent/requeue", {"ids": [1]}),
    ("POST", "/admin/purge/agent", {"older_than_days": 30}), ("GET", "/admin/audit/", None),
    ("GET", "/admin/dead-messages/", None),
]


async def test_admin_routes_require_the_admin_token(env: Env) -> None:
    c = env.client
    for method, path, body in ADMIN_ROUTES:
        for headers in ({}, {"Authorization": f"Bearer {ADMIN}x"}, {"Authorization": "Bearer "},
                        {"Authorization": f"Basic {ADMIN}"}, {"Authorization": f"Bearer {API}"}):
            status, answer = await c.call(method, path, body=body, headers=headers)
            assert status == 401 and "unauthorized" in answer["error"], (method, path, headers)
        status, _ = await c.call(method, path, body=body, token=ADMIN)
        assert status == 200, (method, path)
    status, answer = await c.call("GET", "/admin/dead/no-such-service/", token=ADMIN)
    assert status == 404 and "unknown service" in answer["error"]
    status, answer = await c.call("POST", "/admin/dead/no-such-service/requeue", body={"all": True}, token=ADMIN)
    assert status == 404
    status, _ = await c.call("GET", "/admin/dead/agent/?limit=abc", token=ADMIN)
    assert status == 400


def test_admin_disabled_without_token_and_auth_helpers() -> None:
    from smartflow_streams.web.auth import ADMIN_DISABLED, Denial, admin_actor, api_user, check_admin

    off = config.load_settings(admin_token=None)
    assert off.admin_token is None
    for header in (None, f"Bearer {ADMIN}", "Bearer anything"):
        assert check_admin(off, header) == Denial(403, ADMIN_DISABLED)
    assert check_admin(config.load_settings(admin_token=""), f"Bearer {ADMIN}") == Denial(403, ADMIN_DISABLED)
    on = config.load_settings(admin_token=ADMIN, api_tokens={API: 42, "tok-zero-user": 0})
    assert check_admin(on, f"Bearer {ADMIN}") is None and check_admin(on, f"bearer  {ADMIN} ") is None
    for header in (None, "", "Bearer", f"Bearer {ADMIN[:-1]}", f"Token {ADMIN}", ADMIN):
        denial = check_admin(on, header)
        assert denial is not None and denial.status == 401, header
    assert api_user(on, f"Bearer {API}") == 42
    assert api_user(on, "Bearer tok-zero-user") is None and api_user(on, f"Bearer {ADMIN}") is None
    assert api_user(on, None) is None
    assert admin_actor(None) == "admin:token" and admin_actor("  alice ") == "admin:alice"
    assert admin_actor("x" * 200) == "admin:" + "x" * 64 and admin_actor("a\x00b\nc") == "admin:abc"


async def test_requeue_moves_dead_rows_to_pending_and_audits(env: Env) -> None:
    c = env.client
    ids = await insert_rows(env.engine, "task",
                            {"status": "dead", "biz_type": "task.a", "last_error": "timeout talking to x",
                             "retry_count": 20},
                            {"status": "dead", "biz_type": "task.b", "last_error": "payload invalid"},
                            {"status": "dead", "biz_type": "task.b", "last_error": "payload invalid again"},
                            {"status": "consumed"})
    status, body = await c.call("GET", "/admin/dead/task/?limit=2", token=ADMIN)
    assert status == 200 and [r["id"] for r in body["rows"]] == [ids[2], ids[1]]
    _, body = await c.call("GET", "/admin/dead/task/?event_type=task.a", token=ADMIN)
    assert [r["id"] for r in body["rows"]] == [ids[0]]
    _, body = await c.call("GET", "/admin/dead/task/?reason=again", token=ADMIN)
    assert [r["id"] for r in body["rows"]] == [ids[2]]

    status, body = await c.call("POST", "/admin/dead/task/requeue", body={"ids": [ids[0], ids[3]]}, token=ADMIN,
                                headers={"X-Actor": "alice"})
    assert (status, body["requeued"], body["actor"]) == (200, 1, "admin:alice")  # the consumed row is untouched
    row = await outbox_row(env.engine, "task", ids[0])
    assert (row["status"], row["retry_count"], row["claim_token"]) == ("pending", 0, None)
    assert row["last_error"].startswith("requeued by admin:alice; was: timeout")
    assert (await outbox_row(env.engine, "task", ids[3]))["status"] == "consumed"
    async with env.engine.connect() as conn:
        audit = (await conn.execute(sa.select(outbox_admin_audit).where(
            outbox_admin_audit.c.service_name == "task", outbox_admin_audit.c.action == "requeue"))).mappings().all()
    assert [(a["actor"], json.loads(a["detail"])) for a in audit] == [("admin:alice", {"ids": [ids[0], ids[3]],
                                                                                      "moved": 1})]
    status, body = await c.call("GET", "/admin/audit/?limit=5", token=ADMIN)
    assert status == 200 and any(e["actor"] == "admin:alice" and e["detail"]["moved"] == 1 for e in body["entries"])

    for bad in ({"ids": []}, {"ids": ["1"]}, {"ids": [True]}, {"all": "yes"}, {}, {"ids": 5}):
        status, body = await c.call("POST", "/admin/dead/task/requeue", body=bad, token=ADMIN)
        assert status == 400 and "ids" in body["error"], bad
    for raw in ("not json", "[1, 2]", ""):
        status, _ = await c.call("POST", "/admin/dead/task/requeue", raw=raw, token=ADMIN)
        assert status == 400, raw

    status, body = await c.call("POST", "/admin/dead/task/requeue", body={"all": True}, token=ADMIN)
    assert (status, body["requeued"], body["actor"]) == (200, 2, "admin:token")
    assert {(await outbox_row(env.engine, "task", i))["status"] for i in ids[:3]} == {"pending"}
    _, body = await c.call("GET", "/admin/dead/task/", token=ADMIN)
    assert body["rows"] == []


async def test_purge_deletes_old_consumed_rows_only(env: Env) -> None:
    c = env.client
    ids = await insert_rows(env.engine, "token-store", {"status": "consumed", "consumed_days_ago": 10},
                            {"status": "consumed", "consumed_days_ago": 8},
                            {"status": "consumed", "consumed_days_ago": 1},
                            {"status": "pending", "age": 30 * 86400}, {"status": "dead"})
    for bad in ({"older_than_days": 0}, {"older_than_days": "7"}, {"older_than_days": True}, {}):
        status, body = await c.call("POST", "/admin/purge/token-store", body=bad, token=ADMIN)
        assert status == 400 and "older_than_days" in body["error"], bad
    status, _ = await c.call("POST", "/admin/purge/nope", body={"older_than_days": 7}, token=ADMIN)
    assert status == 404
    status, body = await c.call("POST", "/admin/purge/token-store", body={"older_than_days": 7}, token=ADMIN,
                                headers={"X-Actor": "bob"})
    assert (status, body["deleted"], body["actor"]) == (200, 2, "admin:bob")
    left = [await outbox_row(env.engine, "token-store", i) for i in ids]
    assert [r is None for r in left] == [True, True, False, False, False]
    async with env.engine.connect() as conn:
        audit = (await conn.execute(sa.select(outbox_admin_audit).where(
            outbox_admin_audit.c.service_name == "token-store"))).mappings().all()
    assert [(a["action"], a["actor"], json.loads(a["detail"])["deleted"]) for a in audit] == [("purge", "admin:bob", 2)]


async def test_dead_messages_listing_is_scrubbed(env: Env) -> None:
    async with env.engine.begin() as conn:
        await conn.execute(sa.insert(outbox_dead_messages).values(
            service_name="notification", topic="t.x", kafka_partition=1, kafka_offset=int(time.time() * 1000),
            reason=f"invalid envelope: header Authorization: Bearer {BEARER_SECRET}", raw_value="{",
            created_at=clock.db_now()))
    status, body = await env.client.call("GET", "/admin/dead-messages/?limit=10", token=ADMIN)
    assert status == 200 and body["count"] >= 1
    newest = body["messages"][0]
    assert newest["reason"] == "invalid envelope: header Authorization: Bearer ****"
    assert "raw_value" not in newest


# -- upstream-compatible APIs ------------------------------------------------------------------------------------


def upstream_error(answer: tuple[int, Any], http: int, code: str) -> str:
    status, body = answer
    assert (status, body["status"]) == (http, code), answer
    assert set(body) == {"status", "info"}
    return str(body["info"])


async def test_trigger_api(env: Env) -> None:
    c = env.client
    path = "/api/v1/active-schedule/trigger"
    req = {"trigger_type": "important_urgent_task", "target_type": "task_pool", "target_id": 11,
           "payload": {"note": "from api"}}
    upstream_error(await c.call("POST", path, body=req), 401, "40014")
    upstream_error(await c.call("POST", path, body=req, token="tok-unknown-user"), 401, "40014")
    upstream_error(await c.call("POST", path, body=req, token=ADMIN), 401, "40014")

    status, body = await c.call("POST", path, body=req, token=API)
    assert status == 200 and (body["status"], body["info"]) == ("10000", "success"), body
    data = body["data"]
    assert set(data) == {"trigger_id", "status", "preview_id", "dedupe_hit", "trace_id"}
    assert data["trigger_id"].startswith("ast_") and data["status"] == "pending" and data["preview_id"] is None
    assert data["dedupe_hit"] is False and data["trace_id"].startswith("trace_api_trigger_42_")
    status, again = await c.call("POST", path, body=req, token=API)
    assert status == 200 and again["data"]["dedupe_hit"] is True and again["data"]["trigger_id"] == data["trigger_id"]

    keyed = {**req, "target_id": 12, "idempotency_key": "idem-web-1"}
    _, first = await c.call("POST", path, body=keyed, token=API)
    _, second = await c.call("POST", path, body={**keyed, "target_id": 13}, token=API)
    assert first["data"]["dedupe_hit"] is False and second["data"]["dedupe_hit"] is True
    assert second["data"]["trigger_id"] == first["data"]["trigger_id"]

    _, mocked = await c.call("POST", path, body={**req, "target_id": 14, "mock_now": "2026-05-01T10:00:00+08:00"},
                             token=API)
    async with env.engine.connect() as conn:
        rows = {r["id"]: r for r in (await conn.execute(sa.select(active_schedule_triggers).where(
            active_schedule_triggers.c.user_id == 42))).mappings()}
        outbox = outbox_table(registry.service_route("active-scheduler").table)
        events = (await conn.execute(sa.select(outbox.c.payload, outbox.c.status))).all()
    assert len(rows) == 3 and {r["source"] for r in rows.values()} == {"api_trigger"}
    row = rows[mocked["data"]["trigger_id"]]
    assert row["is_mock_time"] and row["mock_now"] == datetime(2026, 5, 1, 10, 0)
    assert not rows[data["trigger_id"]]["is_mock_time"]
    assert len(events) == 3  # each trigger wrote its outbox row in the same transaction (no relay here: pending)
    payloads = " ".join(p for p, _ in events)
    assert all(t in payloads for t in (data["trigger_id"], first["data"]["trigger_id"], mocked["data"]["trigger_id"]))

    assert "trigger_type" in upstream_error(
        await c.call("POST", path, body={"target_type": "task_pool", "target_id": 1}, token=API), 400, "40004")
    assert "target_type" in upstream_error(
        await c.call("POST", path, body={"trigger_type": "important_urgent_task"}, token=API), 400, "40004")
    for bad in ({**req, "trigger_type": "nope"}, {**req, "target_id": "11"}, {**req, "target_id": 1.5},
                {**req, "mock_now": "yesterday"}, {**req, "mock_now": 5}, {**req, "payload": [1]},
                {**req, "target_id": 0}, {**req, "feedback_id": 7}):
        upstream_error(await c.call("POST", path, body=bad, token=API), 400, "40005")
    for raw in ("not json", "[1, 2]", "", '"text"', b"\xff\xfe{}"):
        info = upstream_error(await c.call("POST", path, raw=raw, token=API), 400, "40005")
        assert "JSON object" in info


async def test_channel_api(env: Env) -> None:
    c = env.client
    path = "/api/v1/notification/channels/feishu"
    async with FakeFeishu() as feishu:
        url = feishu.url(42)
        assert WEBHOOK_SECRET in url
        upstream_error(await c.call("GET", path), 401, "40014")
        upstream_error(await c.call("PUT", path, body={"webhook_url": url}, token="wrong-token"), 401, "40014")
        upstream_error(await c.call("POST", path + "/test"), 401, "40014")
        upstream_error(await c.call("DELETE", path, token=f"{API}x"), 401, "40014")

        _, body = await c.call("GET", path, token=API)
        assert body["status"] == "10000" and body["data"]["configured"] is False

        status, body = await c.call("PUT", path, token=API, body={
            "webhook_url": url, "auth_type": "bearer", "bearer_token": BEARER_SECRET})
        assert status == 200 and body["status"] == "10000", body
        view = body["data"]
        mask = f"http://127.0.0.1:{feishu.port}/flow/api/trigger-webhook/tok-...part"
        assert (view["configured"], view["enabled"], view["webhook_url_mask"]) == (True, True, mask)
        assert (view["auth_type"], view["has_bearer_token"]) == ("bearer", True)
        _, body = await c.call("GET", path, token=API)
        assert body["data"] == view

        status, body = await c.call("POST", path + "/test", token=API)
        assert status == 200 and body["status"] == "10000"
        result = body["data"]
        assert (result["status"], result["outcome"], result["provider"], result["skipped"]) == (
            "success", "success", "feishu", False)
        assert len(feishu.posts) == 1 and feishu.headers[0]["Authorization"] == f"Bearer {BEARER_SECRET}"
        status, body = await c.call("POST", path + "/test", token=API)  # again at once: throttled, nothing sent
        assert (status, body["status"]) == (429, "42900"), body
        assert len(feishu.posts) == 1
        assert feishu.posts[0]["trigger_id"] == "ast_test_webhook"
        _, body = await c.call("GET", path, token=API)
        assert body["data"]["last_test_status"] == "success" and body["data"]["last_test_at"]

        assert "webhook_url" in upstream_error(await c.call("PUT", path, body={}, token=API), 400, "40004")
        assert "bearer_token" in upstream_error(
            await c.call("PUT", path, body={"webhook_url": url, "auth_type": "bearer"}, token=API), 400, "40004")
        upstream_error(await c.call("PUT", path, body={"webhook_url": "http://evil.example/flow/api/trigger-webhook/x"},
                                    token=API), 400, "40005")
        upstream_error(await c.call("PUT", path, body={"webhook_url": url, "webhook_kind": "sms"}, token=API),
                       400, "40005")
        for raw in ("not json", '["webhook_url"]', ""):
            upstream_error(await c.call("PUT", path, raw=raw, token=API), 400, "40005")
        upstream_error(await c.call("POST", path + "/test", raw="not json", token=API), 400, "40005")
        _, body = await c.call("GET", path, token=API)
        assert body["data"] == {**view, "last_test_status": "success", "last_test_error": "",
                                "last_test_at": body["data"]["last_test_at"]}  # failed PUTs changed nothing

        status, body = await c.call("DELETE", path, token=API)
        assert (status, body["data"]) == (200, {"deleted": True})
        _, body = await c.call("GET", path, token=API)
        assert body["data"]["configured"] is False
        await asyncio.sleep(TEST_INTERVAL)
        _, body = await c.call("POST", path + "/test", token=API)
        assert (body["data"]["status"], body["data"]["skipped"]) == ("failed", True)
        assert len(feishu.posts) == 1


async def _raw_request(base: str, head: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte (a header aiohttp's client would refuse to send)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


async def test_hostile_input_gets_clear_errors(env: Env) -> None:
    """Issue 18, items 2, 5 and 8: deep nesting, oversized bodies and fields, loose types, a non-UTF-8
    Authorization header, an id beyond BIGINT: each a 4xx in the route's shape, never a 500."""
    c = env.client
    path = "/api/v1/notification/channels/feishu"
    deep = "[" * 100_000 + "]" * 100_000
    upstream_error(await c.call("PUT", path, raw=deep, token=API), 400, "40005")
    upstream_error(await c.call("POST", "/api/v1/active-schedule/trigger", raw=deep, token=API), 400, "40005")
    status, body = await c.call("POST", "/admin/dead/taskclass-forum/requeue", raw=deep, token=ADMIN)
    assert status == 400 and set(body) == {"error"}, body
    status, body = await c.call("PUT", path, raw=b"{" + b" " * (2 * 1024 * 1024) + b"}", token=API)
    assert (status, body["status"]) == (413, "41300"), body
    status, body = await c.call("POST", "/admin/dead/taskclass-forum/requeue", body={"ids": [10**30]}, token=ADMIN)
    assert status == 400 and "2**63" in body["error"], body

    async with FakeFeishu() as feishu:
        url = feishu.url(43)
        for bad in ({"webhook_url": url, "auth_type": "bearer", "bearer_token": ["x"]},
                    {"webhook_url": url, "enabled": "false"},
                    {"webhook_url": url, "sign_secret": {"a": 1}},
                    {"webhook_url": [url]},
                    {"webhook_url": url + "x" * 900_000},
                    {"webhook_url": url + "x" * 600},
                    {"webhook_url": url, "auth_type": "bearer", "bearer_token": "b" * 513},
                    {"webhook_url": url, "sign_secret": "s" * 129},
                    {"webhook_url": f"{env.stack.base}/admin/dead/task/requeue"}):  # our own admin routes
            info = upstream_error(await c.call("PUT", path, body=bad, token=API), 400, "40005")
            assert "wrong parameter" in info, (bad.keys(), info)
        status, body = await c.call("PUT", path, token=API, body={"webhook_url": url, "enabled": False})
        assert status == 200 and body["data"]["enabled"] is False

    port = env.stack.base.rsplit(":", 1)[1]
    for route in (path, "/admin/audit/"):
        status, answer = await _raw_request(env.stack.base, (
            f"GET {route} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n".encode()
            + b"Authorization: Bearer \xff\xfe\xc3\x28\r\n\r\n"))
        assert status == 401, (route, status, answer[:200])
        assert b"Traceback" not in answer


def _fuzz_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value: the kinds a hostile or buggy client sends (huge/negative numbers, odd strings, nesting)."""
    kinds = ["int", "float", "str", "bool", "none"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, -1, 1, 2**31, -(2**63), 2**64, rng.randint(-10**6, 10**6)])
    if kind == "float":
        return rng.choice([0.5, -1e308, 1e308, 3.0])
    if kind == "str":
        return rng.choice(["", " ", "important_urgent_task", "task_pool", "2026-05-01T10:00:00+08:00", "null",
                           "\u0000", "💥" * 50, "x" * 5000, "'; DROP TABLE x; --", "https://evil.example/hook"])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "list":
        return [_fuzz_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["a", "ids", "all", "payload", "webhook_url"]): _fuzz_value(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def _fuzz_body(rng: random.Random, fields: list[str]) -> tuple[Any, bytes | None]:
    """(JSON body, None) with the route's field names and random values, or (None, raw bytes)."""
    roll = rng.random()
    if roll < 0.15:
        return None, bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
    if roll < 0.3:
        return _fuzz_value(rng), None
    return {f: _fuzz_value(rng) for f in fields if rng.random() < 0.7}, None


async def test_fuzzed_bodies_get_clear_errors_and_never_break_the_worker(env: Env) -> None:
    """400 bodies fuzzed at the HTTP boundary (seeded, reproducible): every answer is 200 or 4xx in the route's
    error shape, never a 5xx, and the worker still answers /health afterwards. The admin routes get the
    ``taskclass-forum`` service, which no other test here touches."""
    c = env.client
    rng = random.Random(20261123)
    routes = [
        ("POST", "/api/v1/active-schedule/trigger", API,
         ["trigger_type", "target_type", "target_id", "feedback_id", "idempotency_key", "mock_now", "payload"]),
        ("PUT", "/api/v1/notification/channels/feishu", API,
         ["enabled", "webhook_url", "auth_type", "bearer_token", "webhook_kind", "sign_secret", "msg_type"]),
        ("POST", "/api/v1/notification/channels/feishu/test", API, []),
        ("POST", "/admin/dead/taskclass-forum/requeue", ADMIN, ["ids", "all"]),
        ("POST", "/admin/purge/taskclass-forum", ADMIN, ["older_than_days"]),
    ]
    seen: dict[int, int] = {}
    for i in range(400):
        method, path, token, fields = routes[i % len(routes)]
        body, raw = _fuzz_body(rng, fields)
        status, answer = await c.call(method, path, token=token, body=body, raw=raw,
                                      headers={"Content-Type": "application/json"})
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, (method, path, body, raw, answer)
        assert isinstance(answer, dict), (path, answer)
        if path.startswith("/api/"):
            assert answer["status"] == "10000" or set(answer) == {"status", "info"}, answer
        elif status >= 400:
            assert set(answer) == {"error"}, answer
    assert seen.get(400, 0) > 100  # the fuzz really hit the validation paths
    status, health = await c.call("GET", "/health")
    assert status == 200 and health == {"status": "ok", "pid": env.stack.pid}


async def test_no_secret_in_any_body_or_the_worker_log(env: Env) -> None:
    """Runs last in the module: every body served to the tests above, and the worker's whole log."""
    c = env.client
    await c.call("GET", "/outbox/")
    await c.call("GET", "/admin/audit/", token=ADMIN)
    await c.call("GET", "/api/v1/notification/channels/feishu", token=API)
    await c.call("GET", "/metrics")
    await c.call("GET", "/dashboard/")
    await asyncio.sleep(0.5)  # let the worker flush its last log lines
    assert len(env.stack.bodies) >= 5
    for body in env.stack.bodies:
        for secret in SECRETS:
            assert secret not in body, (secret, body[:300])
    log = env.stack.log.read_text(errors="replace")
    assert "Worker ready" in log
    for secret in SECRETS:
        assert secret not in log, secret
