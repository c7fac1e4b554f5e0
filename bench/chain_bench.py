"""Whole-chain benchmark: commit -> webhook POST sweep, and the relay on Go-shaped rows, side by side in one run.

    .venv/bin/python bench/chain_bench.py [--rates 50,200,1000] [--seconds 10] [--rows 100000]
                                          [--baseline-rows 2000] [--idle-seconds 20] [--skip-chain] [--skip-relay]
                                          [--relay-variants]
    smoke run: .venv/bin/python bench/chain_bench.py --rates 50 --seconds 2 --rows 5000 --baseline-rows 300 \\
               --idle-seconds 5

One Tansu broker and one private MariaDB for everything.

1. **Whole chain** (``--rates``): the project relay (all 8 outbox tables) and one ``faust worker`` as processes,
   a webhook in this process answering 200 at once, and a *separate* load process that writes triggers as the Go
   API does (trigger row + ``active_schedule.triggered`` outbox row in one transaction, one user per trigger) at
   each offered rate for ``--seconds``. Latency per user = first POST at the webhook minus the load process's
   commit time (same host clock). Prints p50/p95/p99, delivered/s, users POSTed more than once, and the CPU ms per
   trigger of every process (worker, relay, MariaDB, broker, load generator, webhook = this process). Before the
   sweep, ``--idle-seconds`` of nothing to do: each process's CPU share of one core while idle.
2. **Relay on Go-shaped rows** (``--rows``): a backlog of N ``active_schedule.triggered`` rows as the Go API writes
   them (envelopes ~620 bytes, one key per row) drained by the relay serving all 8 tables, beside a raw aiokafka
   producer sending the same messages (same keys, values and headers) and the upstream-style per-row relay
   (``--baseline-rows``), same run, with ratios. ``--relay-variants`` adds the drains that isolate what the Go shape
   costs against ``bench/relay_bench.py``'s load (one table, notification rows, 500 keys).
3. **Memory** (every phase): the worker's and the relay's RSS at the start and end of each phase and its peak
   (sampled every 10 s); phases longer than 2 min also print one sample per minute. A soak is one long phase:
   ``--skip-relay --rates 150 --seconds 1800 --idle-seconds 0``.
4. **Scale-out** (``--scale-out FRACTION``, root): the ``--rates`` phases twice, with 1 and with 2 workers, each
   worker in its own cgroup capped at FRACTION of a core, so that the workers and not the shared 2-core box are the
   limit; topics get 4 partitions (2 per worker); prints which partitions each worker held and delivered/s with 2
   workers against 1. Offer more than one capped worker can take (its capacity is ~FRACTION / its CPU ms per
   trigger): ``--scale-out 0.25 --rates 120 --seconds 20 --idle-seconds 0``.
Targets (issue 16): >= 1,000 triggers/s delivered, p50 < 100 ms at 50/s, p99 < 250 ms at 200/s and < 1 s at
1,000/s; relay >= 0.5x the raw producer and >= 20x the per-row relay; idle relay and worker < 2 % of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

import config  # noqa: E402
from bench import relay_bench  # noqa: E402
from bench.common import (  # noqa: E402
    bulk_fill, cpu_seconds, machine, mariadb, new_mysql_database, percentiles, pids_named, tansu,
)
from bench.pipeline_bench import LOGS, Webhook, count_sent, env_for, prepare, worker_envs  # noqa: E402
from outbox_relay.producer import ensure_topics  # noqa: E402
from smartflow_streams.core import clock  # noqa: E402
from smartflow_streams.contracts.envelope import KafkaEnvelope, OutboxEventShell  # noqa: E402
from smartflow_streams.db.engine import create_engine  # noqa: E402
from smartflow_streams.db.models import active_schedule_triggers, outbox_table  # noqa: E402
from smartflow_streams.db.schema import upgrade_schema  # noqa: E402
from tests.kit.support import spawn, spawn_relay, spawn_worker, terminate, upstream_trigger_rows, wait_worker_ready  # noqa: E402

AS_TABLE = outbox_table("active_scheduler_outbox_messages")
AS_SERVICE = "active-scheduler"


# -- the load process ---------------------------------------------------------------------------------------------


async def load_main(url: str, topic: str, rate: float, seconds: float, first_user: int, out: str,
                    via: str = "driver") -> None:
    """Separate process: one Go-shaped transaction per trigger at ``rate``/s; writes {user: commit time} to out.

    ``via`` ``driver`` (default): aiomysql directly, as Go's database/sql talks to MySQL: START TRANSACTION, two
    INSERTs, COMMIT (4 round trips, no pool ping or reset); the load generator stands in for the Go API, which
    does not pay SQLAlchemy's per-statement CPU. ``sqlalchemy``: the same rows through a SQLAlchemy engine (its
    pool adds a ROLLBACK per return), the load of the runs before 2026-12-03 10:00 UTC."""
    committed: dict[int, float] = {}
    total = int(rate * seconds)
    in_flight = asyncio.Semaphore(32)
    if via == "sqlalchemy":
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(url, pool_size=32, max_overflow=0, isolation_level="READ COMMITTED")
        trigger_insert, outbox_insert = sa.insert(active_schedule_triggers), sa.insert(AS_TABLE)

        async def write(trigger: dict[str, Any], outbox: dict[str, Any]) -> None:
            async with engine.begin() as conn:
                await conn.execute(trigger_insert, trigger)
                await conn.execute(outbox_insert, outbox)

        async with engine.connect() as conn:  # warm the pool's first connection
            await conn.execute(sa.text("SELECT 1"))
        close: Any = engine.dispose
    else:
        import aiomysql
        from sqlalchemy.engine import make_url

        u = make_url(url)
        pool = await aiomysql.create_pool(host=u.host, port=u.port or 3306, user=u.username, password=u.password,
                                          db=u.database, charset="utf8mb4", autocommit=True, minsize=1, maxsize=32)
        sample = upstream_trigger_rows(topic, 1, 1, clock.now(), clock.db_now())  # column order only
        sqls = [f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})"
                for table, row in zip((active_schedule_triggers.name, AS_TABLE.name), sample)]

        async def write(trigger: dict[str, Any], outbox: dict[str, Any]) -> None:
            async with pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute("START TRANSACTION")
                await cur.execute(sqls[0], list(trigger.values()))
                await cur.execute(sqls[1], list(outbox.values()))
                await conn.commit()

        async def close() -> None:
            pool.close()
            await pool.wait_closed()

    async def one(user: int) -> None:
        trigger, outbox = upstream_trigger_rows(topic, user, user, clock.now(), clock.db_now())
        async with in_flight:
            await write(trigger, outbox)
        committed[user] = time.time()

    tasks: set[asyncio.Task[None]] = set()  # the unfinished ones only: a 30-minute soak is ~270,000 writes
    failed: list[BaseException] = []

    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            failed.append(task.exception())  # type: ignore[arg-type]

    start, cpu_start = time.monotonic(), time.process_time()
    for i in range(total):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        task = asyncio.create_task(one(first_user + i))
        tasks.add(task)
        task.add_done_callback(done)
        if failed:
            raise failed[0]
    await asyncio.gather(*tasks)
    if failed:
        raise failed[0]
    offered = total / (time.monotonic() - start)
    cpu = time.process_time() - cpu_start  # the writes only: not the interpreter's start and imports (~1 s)
    await close()
    Path(out).write_text(json.dumps({"offered": offered, "committed": committed, "cpu_seconds": cpu}))


# -- whole chain --------------------------------------------------------------------------------------------------


class FirstPostWebhook(Webhook):
    """The instant webhook, remembering each user's first POST time and the number of POSTs per user."""

    def __init__(self) -> None:
        super().__init__(count_only=True)
        self.first: dict[int, float] = {}
        self.per_user: dict[int, int] = {}

    async def _handle(self, request):  # type: ignore[no-untyped-def]
        t = time.time()
        user = int(request.match_info["token"].rsplit("-", 1)[1])
        self.first.setdefault(user, t)
        self.per_user[user] = self.per_user.get(user, 0) + 1
        return await super()._handle(request)


def chain_components(relay: subprocess.Popen[bytes], workers: list[subprocess.Popen[bytes]], db_url: str,
                     bootstrap: str) -> dict[str, list[int]]:
    """This run's processes (the machine may run other MariaDB and Tansu servers: matched by port)."""
    from sqlalchemy.engine import make_url

    return {"worker": [w.pid for w in workers], "relay": [relay.pid],
            "mariadb": pids_named("mariadbd", make_url(db_url).port),
            "broker": pids_named("tansu", int(bootstrap.rsplit(":", 1)[1]))}


async def wait_assigned(logs: list[Path], timeout: float) -> list[str]:
    """Several workers: wait until the group's rebalances are over (no new assignment in any log for 5 s) and each
    worker holds partitions of the trigger topic (its last assignment table names it)."""
    def state() -> tuple[tuple[int, ...], bool]:
        counts, all_have = [], True
        for log in logs:
            text = log.read_text(errors="replace") if log.exists() else ""
            counts.append(text.count("Executing _on_partitions_assigned"))
            last = text.rsplit("Setting newly assigned partitions", 1)[-1].split("Executing _on_partitions_assigned")[0]
            all_have = all_have and ".active-scheduler" in last
        return tuple(counts), all_have

    deadline, stable_since, last = time.monotonic() + timeout, time.monotonic(), state()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = state()
        if now != last:
            last, stable_since = now, time.monotonic()
        elif now[1] and time.monotonic() - stable_since >= 5:
            tables = [log.read_text(errors="replace").rsplit("Setting newly assigned partitions", 1)[-1] for log in logs]
            return [" ".join(" ".join(line.strip("| ").split()) for line in t.splitlines() if line.startswith("|")
                             and (".active-scheduler " in line or ".notification " in line)) for t in tables]
    raise SystemExit(f"workers not all assigned trigger partitions within {timeout:g} s: {logs}")


class CpuCap:
    """Caps each given process at ``fraction`` of one core in a cgroup of its own (cgroup v1 ``cpu`` controller, or
    v2 ``cpu.max``; needs root), so a worker, not the 2-core box, is the limit: ``--scale-out``. Removed on close."""

    PERIOD_US = 100_000

    def __init__(self, fraction: float, tag: str) -> None:
        self.fraction, self.tag, self.groups = fraction, tag, []
        v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
        if (v1 / "cpu.cfs_quota_us").exists():
            self.root, self.v2 = v1, False
        elif (v2 / "cgroup.controllers").exists() and "cpu" in (v2 / "cgroup.controllers").read_text():
            self.root, self.v2 = v2, True
        else:
            raise SystemExit("--scale-out needs a cgroup cpu controller (v1 /sys/fs/cgroup/cpu or v2 cpu.max)")

    def cap(self, pid: int) -> None:
        group = self.root / f"sf-bench-{self.tag}-{pid}"
        group.mkdir()
        self.groups.append(group)
        quota = int(self.fraction * self.PERIOD_US)
        if self.v2:
            (group / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        (group / "cgroup.procs").write_text(str(pid))  # every thread of the process, and threads it starts later

    def close(self) -> None:
        for group in self.groups:
            for pid in (group / "cgroup.procs").read_text().split():  # still running: back to the root group
                with contextlib.suppress(OSError):
                    (self.root / "cgroup.procs").write_text(pid)
            with contextlib.suppress(OSError):
                group.rmdir()


def py_spy() -> str:
    """The py-spy binary: the venv's, else one on PATH (not a project dependency: ``.venv/bin/pip install
    py-spy==0.4.3`` to use ``--profile``)."""
    venv = Path(sys.executable).parent / "py-spy"
    found = str(venv) if venv.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy==0.4.3 (or put py-spy on PATH)")
    return found


def start_profiles(args: argparse.Namespace, components: dict[str, list[int]], phase: str,
                   seconds: float) -> list[subprocess.Popen[bytes]]:
    """``--profile DIR``: py-spy (collapsed stacks, 100 Hz) of the relay and the worker for one phase."""
    if not args.profile:
        return []
    Path(args.profile).mkdir(parents=True, exist_ok=True)
    spy = py_spy()
    return [subprocess.Popen([spy, "record", "--pid", str(components[name][0]), "--duration", str(int(seconds)),
                              "--rate", "100", "--format", "raw", "--nonblocking",
                              "-o", str(Path(args.profile) / f"{phase}-{name}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name in ("relay", "worker")]


def cpu_of(components: dict[str, list[int]]) -> dict[str, float]:
    out = {k: sum(cpu_seconds(pid) for pid in pids) for k, pids in components.items()}
    out["webhook"] = sum(os.times()[:2])  # this process: the webhook (it only waits otherwise)
    return out


async def chain(server_url: str, bootstrap: str, args: argparse.Namespace, workers: int = 1,
                cpu_cap: float = 0.0) -> dict[str, Any]:
    """One chain run: relay + ``workers`` workers (each capped at ``cpu_cap`` of a core when > 0), the idle window,
    then each rate of ``--rates`` for ``--seconds``."""
    hook = await FirstPostWebhook().__aenter__()
    rates = [float(r) for r in args.rates.split(",") if r]
    totals = [int(r * args.seconds) for r in rates]
    url = await new_mysql_database(server_url, "chain")
    tag = uuid.uuid4().hex[:8]
    settings, engine = await prepare(url, hook, range(1, sum(totals) + 1), tag)
    env = env_for(url, bootstrap, tag)
    env["SMARTFLOW_RELAY__SERVICES"] = "[]"  # the whole catalog: all 8 outbox tables, as deployed
    env["SMARTFLOW_RELAY__TABLE_LEASE_SECONDS"] = "10"  # the default (the test kit's env shortens it to 3 s)
    env.update(dict(kv.split("=", 1) for kv in args.env))
    LOGS.mkdir(parents=True, exist_ok=True)
    relay = spawn_relay(env, LOGS / f"chain-relay-{tag}.log")
    logs = [LOGS / f"chain-worker-{tag}-{w}.log" for w in range(workers)]
    procs = [spawn_worker(wenv, log) for wenv, log in zip(worker_envs(env, tag, workers, False), logs)]
    capper = CpuCap(cpu_cap, tag) if cpu_cap > 0 else None
    out: dict[str, Any] = {"rates": {}, "logs": str(LOGS), "tag": tag, "workers": workers, "cpu_cap": cpu_cap}
    try:
        if capper:
            for proc in procs:
                capper.cap(proc.pid)
        await asyncio.gather(*(wait_worker_ready(log, 120) for log in logs))
        if workers > 1:
            out["assignments"] = await wait_assigned(logs, 90)
        components = chain_components(relay, procs, url, bootstrap)
        if args.idle_seconds:
            before, t0 = cpu_of(components), time.monotonic()
            spies = start_profiles(args, components, "idle", args.idle_seconds)
            await asyncio.sleep(args.idle_seconds)
            for spy in spies:
                spy.wait()
            after, elapsed = cpu_of(components), time.monotonic() - t0
            out["idle"] = {k: 100 * (after[k] - before[k]) / elapsed for k in before}
        else:
            await asyncio.sleep(2)
        first_user = 1
        for rate, total in zip(rates, totals):
            print(f"chain at {rate:g} triggers/s for {args.seconds:g} s ...", flush=True)
            result_file = LOGS / f"chain-load-{tag}-{rate:g}.json"
            before, statements_before = cpu_of(components), await server_statements(engine)
            load = spawn(["bench/chain_bench.py", "--load", url, settings.services[AS_SERVICE].topic, str(rate),
                          str(args.seconds), str(first_user), str(result_file), args.load_via], {**env, "SMARTFLOW_LOG_LEVEL": "warning"},
                         LOGS / f"chain-load-{tag}.log")
            spies = start_profiles(args, components, f"rate{rate:g}", args.seconds)
            rss = {k: [rss_mib(components[k][0])] for k in ("worker", "relay")}
            next_sample = time.monotonic() + RSS_EVERY_SECONDS
            while load.poll() is None:
                await asyncio.sleep(0.1)
                if time.monotonic() >= next_sample:
                    next_sample += RSS_EVERY_SECONDS
                    for k in rss:
                        rss[k].append(rss_mib(components[k][0]))
            for spy in spies:
                spy.wait()
            if load.returncode != 0:
                raise SystemExit(f"the load process failed (exit {load.returncode}): see {LOGS}/chain-load-{tag}.log")
            users = range(first_user, first_user + total)
            deadline = time.monotonic() + max(30.0, args.seconds * 3)
            while sum(1 for u in users if u in hook.first) < total and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            after, statements_after = cpu_of(components), await server_statements(engine)
            for k in rss:
                rss[k].append(rss_mib(components[k][0]))
            loaded = json.loads(result_file.read_text())
            committed = {int(u): t for u, t in loaded["committed"].items()}
            lat = [(hook.first[u] - committed[u]) * 1000 for u in users if u in hook.first and u in committed]
            delivered = [u for u in users if u in hook.first]
            span = (max(hook.first[u] for u in delivered) - min(committed.values())) if delivered else float("nan")
            cpu = {k: 1000 * (after[k] - before[k]) / max(1, len(delivered)) for k in before}
            cpu["load"] = 1000 * loaded["cpu_seconds"] / max(1, total)  # its writes, not its start-up
            hops = await hop_latencies(engine, {str(u) for u in users})
            out["rates"][rate] = {"offered": loaded["offered"], "committed": len(committed), "hops": hops,
                                  "delivered": len(delivered), "delivered_s": len(delivered) / span,
                                  "dupes": sum(1 for u in users if hook.per_user.get(u, 0) > 1),
                                  **percentiles(lat), "cpu": cpu,
                                  "statements": (statements_after - statements_before) / max(1, len(delivered)),
                                  "rss": rss}
            first_user += total
            await asyncio.sleep(1)
        out["sent_db"] = await count_sent(engine)
    finally:
        for proc in procs:
            terminate(proc)
        terminate(relay)
        if capper:
            capper.close()
        await engine.dispose()
        await hook.__aexit__(None, None, None)
    return out


SCALE_OUT_PARTITIONS = 4
"""``--scale-out`` topics get 4 partitions (unless ``--env`` sets them): 2 workers hold 2 each; with the default 3
one worker would hold 2 of 3 and bound the ratio at 1.5x."""

RSS_EVERY_SECONDS = 10.0
"""Resident memory of the worker and the relay is sampled this often during a phase (and at its end)."""


def rss_mib(pid: int) -> float:
    """A process's resident set (``VmRSS``) in MiB; NaN once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


NOTIFICATION_TABLE = outbox_table("notification_outbox_messages")
LOAD_STATEMENTS = 4  # per trigger: START TRANSACTION (sqlalchemy: ROLLBACK on return), 2 INSERTs, COMMIT


async def server_statements(engine: Any) -> int:
    """MariaDB's count of statements clients sent (``Questions``), all clients, this one's reads included."""
    async with engine.connect() as conn:
        return int((await conn.execute(sa.text("SHOW GLOBAL STATUS LIKE 'Questions'"))).one()[1])


async def hop_latencies(engine: Any, keys: set[str]) -> dict[str, float]:
    """p50 of each hop from the rows' own timestamps (ms, DB clock): trigger row committed -> published by the
    relay -> consumed by the worker; notification row created -> published -> consumed (its POST done)."""
    out: dict[str, float] = {}
    for label, table in (("trigger", AS_TABLE), ("notification", NOTIFICATION_TABLE)):
        async with engine.connect() as conn:
            rows = [r for r in (await conn.execute(sa.select(
                table.c.message_key, table.c.created_at, table.c.published_at, table.c.consumed_at))).all()
                if r.message_key in keys]
        for hop, a, b in (("relay", "created_at", "published_at"), ("worker", "published_at", "consumed_at")):
            values = [(getattr(r, b) - getattr(r, a)).total_seconds() * 1000 for r in rows
                      if getattr(r, a) is not None and getattr(r, b) is not None]
            out[f"{label} {hop}"] = percentiles(values, (50,))["p50"]
    return out


# -- relay on Go-shaped rows --------------------------------------------------------------------------------------


def go_outbox_rows(topic: str, first: int, n: int) -> list[dict[str, Any]]:
    """n ``active_schedule.triggered`` outbox rows exactly as the Go API writes them, users first..first+n-1."""
    now, requested = clock.db_now(), clock.now()
    return [upstream_trigger_rows(topic, u, u, requested, now)[1] for u in range(first, first + n)]


def go_fill(keys: int | None = None):  # type: ignore[no-untyped-def]
    """A relay_bench ``Fill`` writing Go-shaped rows; ``keys``: reuse that many message keys (None = one per row)."""
    async def fill(engine: Any, table: sa.Table, topic: str, n: int) -> None:
        for chunk in range(0, n, 5000):
            rows = go_outbox_rows(topic, chunk + 1, min(5000, n - chunk))
            if keys:
                for i, row in enumerate(rows):
                    row["message_key"] = str((chunk + i) % keys)
            async with engine.begin() as conn:
                await conn.execute(sa.insert(table), rows)
    return fill


def go_messages(topic: str, n: int) -> list[relay_bench.Message]:
    """The Kafka messages the relay sends for :func:`go_outbox_rows` (envelope, key and headers alike)."""
    out = []
    for i, row in enumerate(go_outbox_rows(topic, 1, n)):
        shell = OutboxEventShell.parse(row["payload"])
        value = KafkaEnvelope.from_shell(i + 1, shell, AS_SERVICE).to_json_bytes()
        headers = [("event_id", shell.event_id.encode()), ("event_type", shell.event_type.encode()),
                   ("event_version", shell.event_version.encode()), ("service_name", AS_SERVICE.encode()),
                   ("trace_id", json.loads(shell.payload)["trace_id"].encode())]
        out.append((row["message_key"].encode(), value, headers))
    return out


def relay_settings(url: str, bootstrap: str, topic: str, services: list[str] | None) -> config.Settings:
    """Settings for the in-process relay: ``services`` None = all 8 tables (the default deployment)."""
    settings = config.load_settings(database_url=url, kafka_bootstrap=bootstrap,
                                    services={AS_SERVICE: {"topic": topic}, "notification": {"topic": topic + ".n"}},
                                    relay={"services": services or [], "metrics_port": 0})
    config.set_settings(settings)
    return settings


async def relay_comparison(server_url: str, bootstrap: str, args: argparse.Namespace) -> dict[str, Any]:
    async def fresh(url: str) -> Any:
        engine = create_engine(config.get_settings())
        async with engine.begin() as conn:
            for table in (AS_TABLE, relay_bench.TABLE):
                await conn.run_sync(lambda c, t=table: t.drop(c, checkfirst=True))
        await upgrade_schema(engine)
        return engine

    server_url = await new_mysql_database(server_url, "relay")
    tag = uuid.uuid4().hex[:6]
    topic = f"bench.{tag}.active-scheduler"
    settings = relay_settings(server_url, bootstrap, topic, None)
    from outbox_relay.relay import routes_for
    await ensure_topics(settings, sorted({r.topic for r in routes_for(settings)} | {topic + ".raw", topic + ".rawb"}),
                        3, 10)
    messages = go_messages(topic, args.rows)
    res: dict[str, Any] = {"envelope_bytes": sum(len(v) for _, v, _ in messages) / len(messages)}
    print(f"relay: raw producer, {args.rows} Go-shaped messages ...", flush=True)
    res["raw_msgs_s"] = await relay_bench.raw_producer(bootstrap, topic + ".raw", args.rows, messages)
    res["raw_batch_msgs_s"] = await relay_bench.raw_producer_batches(bootstrap, topic + ".rawb", args.rows, messages)
    del messages
    print("relay: project relay on all 8 tables ...", flush=True)
    res["relay_rows_s"], res["relay_stmts_per_row"], res["relay_cpu_us"] = await relay_bench.relay_drain(
        settings, args.rows, go_fill(), AS_TABLE, AS_SERVICE, fresh)
    print(f"relay: upstream-style per-row relay, {args.baseline_rows} rows ...", flush=True)
    res["baseline_rows_s"] = await relay_bench.baseline(settings, args.baseline_rows, go_fill(), AS_TABLE, AS_SERVICE,
                                                        fresh)
    if args.relay_variants:
        variants = {
            "relay_bench load (notification rows, 500 keys), 1 table": (["notification"], None, "notification"),
            "relay_bench load, all 8 tables": (None, None, "notification"),
            "Go rows, one key per row, 1 table": ([AS_SERVICE], go_fill(), AS_SERVICE),
            "Go rows, 500 keys, all 8 tables": (None, go_fill(500), AS_SERVICE),
            "Go rows, one key per row, all 8 tables (again, last)": (None, go_fill(), AS_SERVICE),
        }
        res["variants"] = {}
        for name, (services, fill, service) in variants.items():
            print(f"relay variant: {name} ...", flush=True)
            vs = relay_settings(server_url, bootstrap, topic, services)
            settings = vs
            table = AS_TABLE if service == AS_SERVICE else relay_bench.TABLE
            res["variants"][name] = await relay_bench.relay_drain(vs, args.rows, fill or bulk_fill, table, service, fresh)
    return res


# -- report -------------------------------------------------------------------------------------------------------


def report(args: argparse.Namespace, chain_res: dict[str, Any] | None, relay_res: dict[str, Any] | None) -> None:
    print(f"\nmachine: {machine()} (shared with other work: compare ratios within this run)")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if chain_res:
        print(f"\nwhole chain: relay (all 8 tables) + 1 worker, MariaDB, Tansu, instant webhook, load from a separate "
              f"process (via {args.load_via}), {args.seconds:g} s per rate, one user per trigger"
              + (f", env {' '.join(args.env)}" if args.env else ""))
        if "idle" in chain_res:
            idle = chain_res["idle"]
            print(f"\nidle {args.idle_seconds:g} s after the worker is ready, % of one core: " + ", ".join(
                f"{k} {idle[k]:.1f} %" for k in ("relay", "worker", "broker", "mariadb", "webhook")))
        print("\n| offered/s | delivered/s | delivered | p50 ms | p95 ms | p99 ms | users POSTed twice | "
              "CPU ms/trigger: worker / relay / MariaDB / broker / load / webhook | SQL statements/trigger (relay + "
              "worker) |\n|---|---|---|---|---|---|---|---|---|")
        for rate, r in chain_res["rates"].items():
            cpu = " / ".join(f"{r['cpu'][k]:.2f}" for k in ("worker", "relay", "mariadb", "broker", "load", "webhook"))
            print(f"| {r['offered']:.0f} | {r['delivered_s']:.0f} | {r['delivered']}/{r['committed']} | "
                  f"{r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | {r['dupes']} | {cpu} | "
                  f"{r['statements'] - LOAD_STATEMENTS:.1f} |")
        print("\nRSS MiB during each phase (start -> end, peak): " + "; ".join(
            f"{rate:g}/s: " + ", ".join(f"{k} {v[0]:.0f} -> {v[-1]:.0f} ({max(v):.0f})" for k, v in r["rss"].items())
            for rate, r in chain_res["rates"].items()))
        for rate, r in chain_res["rates"].items():
            if len(r["rss"]["worker"]) > 13:  # phases over ~2 min: one sample per minute
                step = int(60 / RSS_EVERY_SECONDS)
                for k, v in r["rss"].items():
                    print(f"RSS MiB {k} at {rate:g}/s, per minute: " + " ".join(f"{x:.0f}" for x in v[::step]))
        print("\np50 per hop (ms, row timestamps): " + "; ".join(
            f"{rate:g}/s: " + ", ".join(f"{k} {v:.0f}" for k, v in r["hops"].items())
            for rate, r in chain_res["rates"].items()))
    if relay_res:
        r = relay_res
        print(f"\nrelay on {args.rows:,} Go-shaped rows (active_schedule.triggered, one key per row, envelope "
              f"{r['envelope_bytes']:.0f} B avg), relay on all 8 tables, batch 500, linger 5 ms, acks=all")
        print("\n| raw producer msg/s (send / batch API) | relay rows/s | relay CPU us/row | relay/raw (send / batch) |"
              " per-row relay rows/s | relay/per-row | SQL stmts/row |\n|---|---|---|---|---|---|---|")
        print(f"| {r['raw_msgs_s']:,.0f} / {r['raw_batch_msgs_s']:,.0f} | {r['relay_rows_s']:,.0f} | "
              f"{r['relay_cpu_us']:.0f} | {r['relay_rows_s'] / r['raw_msgs_s']:.2f}x / "
              f"{r['relay_rows_s'] / r['raw_batch_msgs_s']:.2f}x | {r['baseline_rows_s']:,.0f} | "
              f"{r['relay_rows_s'] / r['baseline_rows_s']:.0f}x | {r['relay_stmts_per_row']:.3f} |")
        if "variants" in r:
            print("\n| relay load | rows/s | relay CPU us/row | vs Go rows on 8 tables | SQL stmts/row |\n|---|---|---|---|---|")
            print(f"| Go rows, one key per row, all 8 tables (above) | {r['relay_rows_s']:,.0f} | "
                  f"{r['relay_cpu_us']:.0f} | 1.00x | {r['relay_stmts_per_row']:.3f} |")
            for name, (rows_s, stmts, cpu) in r["variants"].items():
                print(f"| {name} | {rows_s:,.0f} | {cpu:.0f} | {rows_s / r['relay_rows_s']:.2f}x | {stmts:.3f} |")


def report_scale_out(args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    print(f"\nmachine: {machine()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"\nscale-out: relay + 1 or 2 workers, each worker capped at {args.scale_out:g} of a core (cgroup), "
          f"{args.seconds:g} s per rate" + (f", env {' '.join(args.env)}" if args.env else ""))
    for run in runs:
        for i, assigned in enumerate(run.get("assignments", [])):
            print(f"  {run['workers']} workers: worker {i} holds {assigned}")
    print("\n| offered/s | workers | delivered/s | vs 1 worker | delivered | p50 ms | p99 ms | users POSTed twice | "
          "CPU ms/trigger: workers / relay / MariaDB / broker |\n|---|---|---|---|---|---|---|---|---|")
    for rate in runs[0]["rates"]:
        one = runs[0]["rates"][rate]["delivered_s"]
        for run in runs:
            r = run["rates"][rate]
            cpu = " / ".join(f"{r['cpu'][k]:.2f}" for k in ("worker", "relay", "mariadb", "broker"))
            print(f"| {r['offered']:.0f} | {run['workers']} | {r['delivered_s']:.0f} | {r['delivered_s'] / one:.2f}x | "
                  f"{r['delivered']}/{r['committed']} | {r['p50']:.0f} | {r['p99']:.0f} | {r['dupes']} | {cpu} |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="50,200,1000", help="offered triggers/s, in order (empty: no sweep)")
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per rate")
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="idle CPU window before the sweep (0: off)")
    parser.add_argument("--rows", type=int, default=100_000, help="relay comparison backlog")
    parser.add_argument("--baseline-rows", type=int, default=2_000)
    parser.add_argument("--relay-variants", action="store_true", help="also drain the loads isolating the Go shape")
    parser.add_argument("--profile", default="", help="directory for py-spy collapsed stacks of relay and worker")
    parser.add_argument("--skip-chain", action="store_true")
    parser.add_argument("--skip-relay", action="store_true")
    parser.add_argument("--load-via", choices=("driver", "sqlalchemy"), default="driver",
                        help="how the load process writes (driver: aiomysql as Go's database/sql; see load_main)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for relay and worker (repeatable)")
    parser.add_argument("--scale-out", type=float, default=0.0, metavar="FRACTION",
                        help="instead of the sweep: the --rates phases with 1 and then 2 workers, each capped at "
                        "FRACTION of a core (cgroup, root), so the workers and not the box are the limit")
    args = parser.parse_args()
    if args.profile:
        py_spy()  # fail before minutes of setup, not at the first phase
    (ROOT / "var").mkdir(exist_ok=True)
    chain_res = relay_res = None
    with tansu() as bootstrap, mariadb() as url:
        if args.scale_out:
            for key in ("SMARTFLOW_WORKER__TOPIC_PARTITIONS", "SMARTFLOW_RELAY__TOPIC_PARTITIONS"):
                if not any(kv.startswith(key + "=") for kv in args.env):
                    args.env.append(f"{key}={SCALE_OUT_PARTITIONS}")  # 2 workers x 2 partitions of each topic
            runs = [await chain(url, bootstrap, args, workers=n, cpu_cap=args.scale_out) for n in (1, 2)]
            report_scale_out(args, runs)
            return
        if not args.skip_chain and (args.rates or args.idle_seconds):
            chain_res = await chain(url, bootstrap, args)
        if not args.skip_relay:
            relay_res = await relay_comparison(url, bootstrap, args)
    report(args, chain_res, relay_res)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        _, _, url, topic, rate, seconds, first, out, via = sys.argv
        asyncio.run(load_main(url, topic, float(rate), float(seconds), int(first), out, via))
    else:
        asyncio.run(main())
