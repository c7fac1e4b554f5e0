"""End-to-end pipeline benchmark: trigger -> relay -> worker (preview + notification) -> webhook POST.

    .venv/bin/python bench/pipeline_bench.py [--events 2000] [--loads 50,200,1000] [--db mariadb]

One Tansu broker, one database (private MariaDB, or SQLite), a local instant webhook (in this process), real relay
and `faust worker` processes, rate limiter off. Measures:
1. worker throughput: a backlog of N triggers for N distinct users drained by 1 worker with handlers one event at a
   time (``worker.batched_handlers=false``), by 1 worker, by 2 workers and by 2 workers one per service (events/s
   from the first worker ready to the last notification `sent`; each event = one trigger workflow + one
   notification claim/POST/outcome), with the CPU milliseconds each component (workers, relay, MariaDB, broker,
   this process: load generator + webhook) spent per event;
2. end-to-end latency at fixed offered loads: trigger outbox row committed -> trigger handler done (its row
   `consumed_at`) and -> webhook `sent_at`, p50/p95/p99, 1 worker (and, for ``--split-loads``, 2 workers one per
   service);
3. peak RSS of the relay and of a worker during (1);
4. ``--memory 10000,100000``: peak RSS of the relay and of one worker over ``--memory-seconds`` (60) after the worker
   is ready, with that many triggers pending (bulk-inserted upstream rows): memory must not grow with the backlog.
Targets (issue 6): >= 1,000 events/s per worker, p99 < 250 ms at 200 events/s, RSS flat from 10k to 100k.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository root: bench.common, tests.kit

import sqlalchemy as sa  # noqa: E402

import config  # noqa: E402
from bench.common import (  # noqa: E402
    cpu_seconds, machine, mariadb, new_mysql_database, percentiles, pids_named, rss_mb, sqlite_url, tansu,
)
from smartflow_streams.core import clock  # noqa: E402
from smartflow_streams.db.engine import create_engine, session_factory  # noqa: E402
from smartflow_streams.db.models import notification_records, outbox_table, user_notification_channels  # noqa: E402
from smartflow_streams.db.schema import upgrade_schema  # noqa: E402
from smartflow_streams.cli.embedded import free_port  # noqa: E402
from smartflow_streams.scheduler.triggers import TriggerRequest, create_trigger  # noqa: E402
from tests.kit.feishu import FakeFeishu  # noqa: E402
from tests.kit.support import (  # noqa: E402
    spawn_relay, spawn_worker, terminate, upstream_trigger_rows, wait_worker_ready, worker_env,
)
from smartflow_streams.db.models import active_schedule_triggers  # noqa: E402

AS_TABLE = outbox_table("active_scheduler_outbox_messages")
LOGS = ROOT / "var" / "bench-logs"
MAX_IN_FLIGHT = 16  # --max-in-flight


Webhook = FakeFeishu  # used with count_only=True: answers success at once, keeps nothing


async def fresh_database(base_url: str) -> str:
    return sqlite_url() if base_url.startswith("sqlite") else await new_mysql_database(base_url, "bench")


async def prepare(url: str, hook: Webhook, users: range, tag: str) -> tuple[config.Settings, object]:
    # the same per-run topics as the relay/worker env (rows carry the topic they were written for, as upstream)
    settings = config.load_settings(database_url=url, services={
        "notification": {"topic": f"t.{tag}.notification"}, "active-scheduler": {"topic": f"t.{tag}.active-scheduler"}})
    config.set_settings(settings)
    engine = create_engine(settings)
    await upgrade_schema(engine)
    now = clock.db_now()
    rows = [dict(user_id=u, channel="feishu_webhook", enabled=True, auth_type="none", bearer_token="", webhook_kind="flow",
                 webhook_url=f"http://127.0.0.1:{hook.port}/flow/api/trigger-webhook/bench-{u}",
                 created_at=now, updated_at=now) for u in users]
    async with engine.begin() as conn:
        for i in range(0, len(rows), 2000):
            await conn.execute(sa.insert(user_notification_channels), rows[i:i + 2000])
    return settings, engine


async def add_triggers(engine, settings, users: list[int], per_tx: int = 200) -> None:  # type: ignore[no-untyped-def]
    sessions = session_factory(engine)
    for i in range(0, len(users), per_tx):
        async with sessions() as s, s.begin():
            for u in users[i:i + per_tx]:
                await create_trigger(s, TriggerRequest(user_id=u, trigger_type="important_urgent_task",
                                                       source="api_trigger", target_type="task_pool", target_id=u),
                                     settings)


async def count_sent(engine) -> int:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).where(
            notification_records.c.status == "sent"))).scalar())


def env_for(url: str, bootstrap: str, tag: str) -> dict[str, str]:
    return worker_env(url, bootstrap, tag, free_port(), SMARTFLOW_RELAY__REPUBLISH_AFTER_SECONDS="600",
                      SMARTFLOW_RELAY__LEASE_SECONDS="30", SMARTFLOW_LOG_LEVEL="warning",
                      SMARTFLOW_NOTIFICATION__RETRY_SCAN_EVERY_SECONDS="5",
                      SMARTFLOW_WORKER__MAX_IN_FLIGHT=str(MAX_IN_FLIGHT))


async def throughput(base_url: str, bootstrap: str, hook: Webhook, n: int, workers: int,
                     split: bool = False, batched: bool = True, extra_env: dict[str, str] | None = None
                     ) -> dict[str, float]:
    """``workers`` processes consuming both services, or (``split``) one per service, as production should run;
    ``batched=False``: handlers one event at a time. Also the CPU each component spent per event."""
    url = await fresh_database(base_url)
    users = list(range(1, n + 1))
    tag = uuid.uuid4().hex[:8]
    settings, engine = await prepare(url, hook, range(1, n + 1), tag)
    await add_triggers(engine, settings, users)
    env = env_for(url, bootstrap, tag)
    env["SMARTFLOW_WORKER__BATCHED_HANDLERS"] = "true" if batched else "false"
    env.update(extra_env or {})
    LOGS.mkdir(parents=True, exist_ok=True)
    relay = spawn_relay(env, LOGS / f"relay-{tag}.log")
    procs = [spawn_worker(wenv, LOGS / f"worker-{tag}-{w}.log")
             for w, wenv in enumerate(worker_envs(env, tag, workers, split))]
    peak_worker = peak_relay = 0.0
    try:
        await asyncio.gather(*(wait_worker_ready(LOGS / f"worker-{tag}-{w}.log", 90) for w in range(workers)))
        start_sent = await count_sent(engine)
        components = {"worker": [p.pid for p in procs], "relay": [relay.pid], "mariadb": pids_named("mariadbd"),
                      "broker": pids_named("tansu")}
        cpu_before = {k: sum(cpu_seconds(pid) for pid in pids) for k, pids in components.items()}
        bench_before = sum(os.times()[:2])
        started = time.perf_counter()
        while (sent := await count_sent(engine)) < n:
            peak_worker = max([peak_worker] + [rss_mb(p.pid)[1] for p in procs])
            peak_relay = max(peak_relay, rss_mb(relay.pid)[1])
            await asyncio.sleep(0.2)
            if time.perf_counter() - started > 300:
                raise TimeoutError(f"only {sent}/{n} sent after 300 s (logs: {LOGS})")
        elapsed = time.perf_counter() - started
        cpu = {k: sum(cpu_seconds(pid) for pid in pids) - cpu_before[k] for k, pids in components.items()}
        cpu["bench"] = sum(os.times()[:2]) - bench_before  # load generator + the webhook server
    finally:
        for p in procs:
            terminate(p)
        terminate(relay)
        await engine.dispose()
    events = n - start_sent
    out = {"events_s": events / elapsed, "already_sent_at_ready": float(start_sent),
           "worker_rss_mb": peak_worker, "relay_rss_mb": peak_relay}
    out.update({f"cpu_ms_{k}": 1000 * v / events for k, v in cpu.items()})
    return out


async def memory(base_url: str, bootstrap: str, hook: Webhook, backlog: int, seconds: float) -> dict[str, float]:
    url = await fresh_database(base_url)
    tag = uuid.uuid4().hex[:8]
    settings, engine = await prepare(url, hook, range(1, backlog + 1), tag)
    now = clock.db_now()
    topic = settings.services["active-scheduler"].topic
    for start in range(1, backlog + 1, 5000):
        rows = [upstream_trigger_rows(topic, u, u, clock.now(), now) for u in range(start, min(start + 5000, backlog + 1))]
        async with engine.begin() as conn:
            await conn.execute(sa.insert(active_schedule_triggers), [t for t, _ in rows])
            await conn.execute(sa.insert(AS_TABLE), [o for _, o in rows])
    env = env_for(url, bootstrap, tag)
    relay = spawn_relay(env, LOGS / f"relay-{tag}.log")
    worker = spawn_worker(env, LOGS / f"worker-{tag}.log")
    peak_worker = peak_relay = 0.0
    try:
        await wait_worker_ready(LOGS / f"worker-{tag}.log", 120)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            peak_worker = max(peak_worker, rss_mb(worker.pid)[1])
            peak_relay = max(peak_relay, rss_mb(relay.pid)[1])
            await asyncio.sleep(0.5)
        done = await count_sent(engine)
    finally:
        terminate(worker)
        terminate(relay)
        await engine.dispose()
    return {"worker_rss_mb": peak_worker, "relay_rss_mb": peak_relay, "sent": float(done)}


def worker_envs(env: dict[str, str], tag: str, workers: int, split: bool) -> list[dict[str, str]]:
    """Environments of ``workers`` worker processes; ``split``: one per service, each in its own per-run group
    (Faust tables' changelogs are named after the group), as production should run."""
    envs = []
    for w in range(workers):
        wenv = {**env, "SMARTFLOW_WORKER__WEB_PORT": str(free_port()),
                "SMARTFLOW_WORKER__DATADIR": f"/tmp/sf-bench-{tag}-{w}"}
        if split:
            service = ["active-scheduler", "notification"][w % 2]
            wenv["SMARTFLOW_WORKER__SERVICES"] = f'["{service}"]'
            wenv[f"SMARTFLOW_SERVICES__{service.upper().replace('-', '_')}__GROUP_ID"] = f"sf-{tag}-{service}"
        envs.append(wenv)
    return envs


async def latency(base_url: str, bootstrap: str, hook: Webhook, rate: float, seconds: float,
                  split: bool = False) -> dict[str, float]:
    """``split``: two workers, one per service (production layout); else one worker for both services."""
    url = await fresh_database(base_url)
    total = int(rate * seconds)
    tag = uuid.uuid4().hex[:8]
    settings, engine = await prepare(url, hook, range(1, total + 1), tag)
    env = env_for(url, bootstrap, tag)
    relay = spawn_relay(env, LOGS / f"relay-{tag}.log")
    envs = worker_envs(env, tag, 2 if split else 1, split)
    workers = [spawn_worker(wenv, LOGS / f"worker-{tag}-{w}.log") for w, wenv in enumerate(envs)]
    sessions = session_factory(engine)
    try:
        await asyncio.gather(*(wait_worker_ready(LOGS / f"worker-{tag}-{w}.log", 90) for w in range(len(envs))))
        await asyncio.sleep(2)
        inserting = asyncio.Semaphore(16)  # one producer transaction per trigger, up to 16 in flight

        async def insert(user_id: int) -> None:
            async with inserting, sessions() as s, s.begin():
                await create_trigger(s, TriggerRequest(user_id=user_id, trigger_type="important_urgent_task",
                                                       source="api_trigger", target_type="task_pool",
                                                       target_id=user_id), settings)

        tasks = []
        start = time.monotonic()
        for i in range(total):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(insert(i + 1)))
        await asyncio.gather(*tasks)
        offered = total / (time.monotonic() - start)
        deadline = time.monotonic() + 120
        while await count_sent(engine) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        async with engine.connect() as conn:
            handler = [(c - m).total_seconds() * 1000 for m, c in (await conn.execute(
                sa.select(AS_TABLE.c.created_at, AS_TABLE.c.consumed_at).where(AS_TABLE.c.status == "consumed")))]
            sent = [(r.sent_at - r.created_at).total_seconds() * 1000 for r in (await conn.execute(sa.text(
                "SELECT t.created_at AS created_at, n.sent_at AS sent_at FROM active_schedule_triggers t "
                "JOIN notification_records n ON n.trigger_id = t.id WHERE n.status = 'sent'"))).all()]
    finally:
        for worker in workers:
            terminate(worker)
        terminate(relay)
        await engine.dispose()
    out = {f"handler_{k}": v for k, v in percentiles(handler).items()}
    out.update({f"sent_{k}": v for k, v in percentiles(sent).items()})
    out["offered"] = offered
    out["done"] = float(len(sent))
    out["total"] = float(total)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--loads", default="50,200,1000")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--split-loads", default="200",
                        help="offered loads also measured with two workers, one per service (empty: none)")
    parser.add_argument("--db", default="mariadb", choices=["mariadb", "sqlite"])
    parser.add_argument("--max-in-flight", type=int, default=16, help="worker.max_in_flight")
    parser.add_argument("--memory", default="", help="backlogs for the RSS check, e.g. 10000,100000 (off by default)")
    parser.add_argument("--memory-seconds", type=float, default=60.0)
    parser.add_argument("--only-memory", action="store_true", help="skip the throughput and latency parts")
    args = parser.parse_args()
    global MAX_IN_FLIGHT
    MAX_IN_FLIGHT = args.max_in_flight
    results: dict[str, dict[str, float]] = {}
    async with FakeFeishu(count_only=True) as hook:
        with tansu() as bootstrap:
            if args.db == "mariadb":
                with mariadb() as url:
                    await run_all(url, bootstrap, hook, args, results)
            else:
                await run_all("sqlite", bootstrap, hook, args, results)
    print(f"\nmachine: {machine()}")
    print(f"settings: db={args.db}, broker Tansu memory:// (Faust producer_max_batch_size=1, as Tansu needs), "
          f"rate limiter off, instant local webhook, 3 partitions, agents take batches of <= 200 events, "
          f"worker.max_in_flight={MAX_IN_FLIGHT} keys concurrently per agent")
    if not args.only_memory:
        one = results["1 worker"]
        print("\n| workers | events/s | vs 1 batched worker | CPU ms per event: worker(s) / relay / MariaDB / broker / "
              "bench+webhook | worker peak RSS MiB | relay peak RSS MiB |\n|---|---|---|---|---|---|")
        for name, label in (("one by one", "1, handlers one event at a time"), ("1 worker", "1"),
                            ("2 workers", "2"), ("split", "2, one per service"),
                            ("producer batching", "1, Faust changelog producer batching on (Apache Kafka setting)")):
            r = results[name]
            cpu = " / ".join(f"{r['cpu_ms_' + k]:.2f}" for k in ("worker", "relay", "mariadb", "broker", "bench"))
            print(f"| {label} | {r['events_s']:,.0f} | {r['events_s'] / one['events_s']:.2f}x | {cpu} | "
                  f"{r['worker_rss_mb']:.0f} | {r['relay_rss_mb']:.0f} |")
        print(f"\none batched worker's CPU per event: {one['cpu_ms_worker']:.2f} ms -> at most "
              f"{1000 / one['cpu_ms_worker']:,.0f} events/s per worker with a core to itself")
        print("\n| offered events/s | achieved | commit->handler done p50/p95/p99 ms | commit->webhook sent p50/p95/p99 ms |"
              " delivered |\n|---|---|---|---|---|")
        rows = [(load, results[f"load {load}"]) for load in args.loads.split(",")]
        rows += [(f"{load}, 2 workers one per service", results[f"split load {load}"])
                 for load in filter(None, args.split_loads.split(","))]
        for load, r in rows:
            print(f"| {load} | {r['offered']:.0f} | {r['handler_p50']:.0f} / {r['handler_p95']:.0f} / "
                  f"{r['handler_p99']:.0f} | {r['sent_p50']:.0f} / {r['sent_p95']:.0f} / {r['sent_p99']:.0f} | "
                  f"{r['done']:.0f}/{r['total']:.0f} |")
    if args.memory:
        print(f"\n| pending triggers | worker peak RSS MiB | relay peak RSS MiB | sent in the {args.memory_seconds:.0f} s |"
              "\n|---|---|---|---|")
        for backlog in args.memory.split(","):
            r = results[f"memory {backlog}"]
            print(f"| {int(backlog):,} | {r['worker_rss_mb']:.0f} | {r['relay_rss_mb']:.0f} | {r['sent']:.0f} |")


async def run_all(url: str, bootstrap: str, hook: Webhook, args: argparse.Namespace,
                  results: dict[str, dict[str, float]]) -> None:
    if not args.only_memory:
        print("throughput, 1 worker, handlers one event at a time ...", flush=True)
        results["one by one"] = await throughput(url, bootstrap, hook, args.events, 1, batched=False)
    if not args.only_memory:
        print("throughput, 1 worker, Faust producer batching on ...", flush=True)
        results["producer batching"] = await throughput(
            url, bootstrap, hook, args.events, 1, extra_env={"SMARTFLOW_FAUST__PRODUCER_MAX_BATCH_SIZE": "16384"})
    for workers in () if args.only_memory else (1, 2):
        print(f"throughput, {workers} worker(s) ...", flush=True)
        results[f"{workers} worker{'s' if workers > 1 else ''}"] = await throughput(url, bootstrap, hook, args.events,
                                                                                   workers)
    if not args.only_memory:
        print("throughput, 2 workers, one per service ...", flush=True)
        results["split"] = await throughput(url, bootstrap, hook, args.events, 2, split=True)
    for load in [] if args.only_memory else args.loads.split(","):
        print(f"latency at {load} events/s ...", flush=True)
        results[f"load {load}"] = await latency(url, bootstrap, hook, float(load), args.latency_seconds)
    for load in [] if args.only_memory else filter(None, args.split_loads.split(",")):
        print(f"latency at {load} events/s, one worker per service ...", flush=True)
        results[f"split load {load}"] = await latency(url, bootstrap, hook, float(load), args.latency_seconds,
                                                      split=True)
    for backlog in filter(None, args.memory.split(",")):
        print(f"memory with {backlog} pending triggers ...", flush=True)
        results[f"memory {backlog}"] = await memory(url, bootstrap, hook, int(backlog), args.memory_seconds)


if __name__ == "__main__":
    asyncio.run(main())
