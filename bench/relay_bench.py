"""Relay benchmark: raw producer vs relay vs upstream-style per-row baseline, latency at fixed load, memory.

    .venv/bin/python bench/relay_bench.py [--rows 20000] [--db mariadb,sqlite] [--latency-rate 200]

Everything in one run on one Tansu broker and one database (MariaDB started privately, SQLite file under var/):
1. raw aiokafka producer msgs/s for the same envelopes, keys and headers (acks=all, linger 5 ms), once with
   ``send()`` per message and once with the batch API the relay uses (one ``BatchBuilder`` per partition);
2. relay rows/s from a pre-filled backlog of N rows until all are marked published, and SQL statements per row;
3. an upstream-style baseline: scan 100 due rows, then per row reload + send_and_wait + UPDATE, sequentially;
4. commit-to-publish latency at a fixed offered load (rows committed one per transaction at R rows/s; measured
   to the moment a consumer receives the message, and to ``published_at``);
5. relay RSS (peak) draining a 10k and a 100k backlog, as separate processes.
Targets (issue 3): relay >= 0.5x raw producer on MariaDB, >= 20x baseline, p99 < 100 ms at 200 rows/s, flat RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from bench.common import (  # noqa: E402
    ROOT, EVENT, StatementCounter, bulk_fill, machine, mariadb, percentiles, rss_mb, settings_for, sqlite_url, tansu,
)
from outbox_relay.producer import ensure_topics  # noqa: E402
from outbox_relay.relay import Relay  # noqa: E402
from smartflow_streams.contracts.envelope import KafkaEnvelope, OutboxEventShell  # noqa: E402
from smartflow_streams.db.engine import create_engine, session_factory  # noqa: E402
from smartflow_streams.db.models import outbox_table  # noqa: E402
from smartflow_streams.db.schema import upgrade_schema  # noqa: E402
from smartflow_streams.outbox.repository import OutboxRepository  # noqa: E402

TABLE = outbox_table("notification_outbox_messages")
Fill = Callable[[Any, sa.Table, str, int], Awaitable[None]]
"""``fill(engine, table, topic, n)``: write n pending rows."""
Fresh = Callable[[str], Awaitable[Any]]
"""``fresh(url)``: an engine on an empty, upgraded schema."""


async def fresh_db(url: str):  # type: ignore[no-untyped-def]
    engine = create_engine(__import__("config").get_settings())
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: TABLE.drop(c, checkfirst=True))
    await upgrade_schema(engine)
    return engine


async def count_published(engine, table: sa.Table = TABLE) -> int:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).where(table.c.status == "published"))).scalar())


Message = tuple[bytes, bytes, list[tuple[str, bytes]]]
"""(key, envelope, headers) of one Kafka message, as the relay sends it."""


def notification_messages(n: int) -> list[Message]:
    """The relay_bench load as messages: ``notification.feishu.requested`` envelopes, 500 keys."""
    headers = [("event_id", b"x"), ("event_type", EVENT.encode()), ("event_version", b"1"),
               ("service_name", b"notification")]
    return [(str(i % 500).encode(), KafkaEnvelope.from_shell(i + 1, OutboxEventShell.parse(_shell(i)),
                                                             "notification").to_json_bytes(), headers)
            for i in range(n)]


async def _raw_setup(bootstrap: str) -> AIOKafkaProducer:
    """A started producer with the relay's settings."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=1_048_576)
    await producer.start()
    return producer


async def raw_producer(bootstrap: str, topic: str, n: int, messages: list[Message] | None = None) -> float:
    """msgs/s of ``send()`` per message for ``messages`` (default: :func:`notification_messages`)."""
    messages = messages if messages is not None else notification_messages(n)
    producer = await _raw_setup(bootstrap)
    try:
        started = time.perf_counter()
        futures = []
        for key, value, headers in messages:
            futures.append(await producer.send(topic, value, key=key, headers=headers))
        await asyncio.gather(*futures)
        return len(messages) / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def raw_producer_batches(bootstrap: str, topic: str, n: int, messages: list[Message] | None = None) -> float:
    """The same messages through aiokafka's batch API (one BatchBuilder per partition, as the relay sends)."""
    from outbox_relay.producer import partition_for

    messages = messages if messages is not None else notification_messages(n)
    producer = await _raw_setup(bootstrap)
    try:
        partitions = sorted(await producer.partitions_for(topic))
        started = time.perf_counter()
        futures = []
        for chunk in range(0, len(messages), 500):  # the relay's batch size
            builders: dict[int, object] = {}
            for key, value, headers in messages[chunk:chunk + 500]:
                p = partition_for(key, partitions)
                builder = builders.get(p)
                if builder is None or builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
                    if builder is not None:
                        builder.close()
                        futures.append(await producer.send_batch(builder, topic, partition=p))
                    builder = builders[p] = producer.create_batch()
                    builder.append(timestamp=None, key=key, value=value, headers=headers)
            for p, builder in builders.items():
                builder.close()
                futures.append(await producer.send_batch(builder, topic, partition=p))
        await asyncio.gather(*futures)
        return len(messages) / (time.perf_counter() - started)
    finally:
        await producer.stop()


def _shell(i: int) -> str:
    from bench.common import shell_json

    return shell_json(i)


async def relay_drain(settings, n: int, fill: Fill | None = None, table: sa.Table = TABLE,
                      service: str = "notification", fresh: Fresh | None = None
                      ) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    """Rows/s, statements/row and this process's (the relay's) CPU microseconds per row for the relay draining a pre-filled backlog of n rows of ``table`` (written by
    ``fill``, default :func:`bench.common.bulk_fill`; ``fresh`` makes the empty database, default :func:`fresh_db`)."""
    engine = await (fresh or fresh_db)(settings.database_url)
    await (fill or bulk_fill)(engine, table, settings.services[service].topic, n)
    relay_engine = create_engine(settings, pool_size=4)
    counter = StatementCounter(relay_engine)
    relay = Relay(settings, relay_engine)
    await relay.publisher.ready()
    started, cpu_before = time.perf_counter(), sum(os.times()[:2])
    task = asyncio.create_task(relay.run())
    # Poll the relay's own counter (rows whose mark committed), not the database: a COUNT every few ms would
    # compete with the relay for the same database. The database count is checked once at the end.
    while sum(t.stats.published for t in relay.tables) < n:
        await asyncio.sleep(0.005)
    elapsed, cpu = time.perf_counter() - started, sum(os.times()[:2]) - cpu_before
    relay.stop.set()
    await task
    assert await count_published(engine, table) == n
    statements = counter.count
    await relay_engine.dispose()
    await engine.dispose()
    return n / elapsed, statements / n, 1e6 * cpu / n


async def baseline(settings, n: int, fill: Fill | None = None, table: sa.Table = TABLE,
                   service: str = "notification", fresh: Fresh | None = None) -> float:  # type: ignore[no-untyped-def]
    """Upstream dispatch loop (docs/upstream.md#relay-loop): scan 100 due rows, then per row: reload, parse, send and wait, mark."""
    TABLE = table  # noqa: N806 - the loop below reads the table under test
    engine = await (fresh or fresh_db)(settings.database_url)
    topic = settings.services[service].topic
    await (fill or bulk_fill)(engine, TABLE, topic, n)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    sessions = session_factory(engine)
    done = 0
    started = time.perf_counter()
    try:
        while done < n:
            async with sessions() as s:
                ids = (await s.execute(sa.select(TABLE.c.id).where(TABLE.c.status == "pending")
                                       .order_by(TABLE.c.next_retry_at, TABLE.c.id).limit(100))).scalars().all()
            for row_id in ids:
                async with sessions() as s, s.begin():
                    row = (await s.execute(sa.select(TABLE).where(TABLE.c.id == row_id))).mappings().one()
                envelope = KafkaEnvelope.from_shell(row_id, OutboxEventShell.parse(row["payload"]), service)
                await asyncio.wait_for(producer.send_and_wait(topic, envelope.to_json_bytes(),
                                                              key=row["message_key"].encode()), 10)
                async with sessions() as s, s.begin():
                    await s.execute(sa.update(TABLE).where(TABLE.c.id == row_id, TABLE.c.status.not_in(
                        ("consumed", "dead"))).values(status="published"))
                done += 1
    finally:
        await producer.stop()
        await engine.dispose()
    return n / (time.perf_counter() - started)


async def latency(settings, rate: float, seconds: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    engine = await fresh_db(settings.database_url)
    topic = settings.services["notification"].topic
    relay_engine = create_engine(settings, pool_size=4)
    relay = Relay(settings, relay_engine)
    task = asyncio.create_task(relay.run())
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest", fetch_max_wait_ms=5)
    await consumer.start()
    received: dict[int, float] = {}

    async def consume() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=50)
            t = time.time()
            for records in batch.values():
                for r in records:
                    received.setdefault(json.loads(r.value)["outbox_id"], t)

    consumer_task = asyncio.create_task(consume())
    await asyncio.sleep(1.0)  # relay warm (producer connected, lease held)
    repo = OutboxRepository.for_service("notification")
    sessions = session_factory(engine)
    committed: dict[int, float] = {}
    total = int(rate * seconds)
    start = time.monotonic()
    for i in range(total):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        async with sessions() as s, s.begin():
            oid = await repo.enqueue(s, EVENT, {"i": i}, message_key=str(i % 50), event_version="1")
        committed[oid] = time.time()
    deadline = time.monotonic() + 15
    while len(received) < total and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    consumer_task.cancel()
    await asyncio.gather(consumer_task, return_exceptions=True)
    await consumer.stop()
    relay.stop.set()
    await task
    async with engine.connect() as conn:
        db_lat = [(p - c).total_seconds() * 1000 for p, c in (await conn.execute(
            sa.select(TABLE.c.published_at, TABLE.c.created_at).where(TABLE.c.status == "published"))).all()]
    await relay_engine.dispose()
    await engine.dispose()
    lat = [(received[o] - committed[o]) * 1000 for o in committed if o in received]
    out = {f"kafka_{k}": v for k, v in percentiles(lat).items()}
    out.update({f"db_{k}": v for k, v in percentiles(db_lat).items()})
    out["missing"] = float(total - len(lat))
    return out


async def relay_rss(settings, backlog: int) -> float:  # type: ignore[no-untyped-def]
    engine = await fresh_db(settings.database_url)
    await bulk_fill(engine, TABLE, settings.services["notification"].topic, backlog)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTFLOW_")}
    env.update({"SMARTFLOW_DATABASE_URL": settings.database_url, "SMARTFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                "SMARTFLOW_RELAY__SERVICES": '["notification"]', "SMARTFLOW_RELAY__METRICS_PORT": "0",
                "SMARTFLOW_SERVICES__NOTIFICATION__TOPIC": settings.services["notification"].topic,
                "SMARTFLOW_LOG_LEVEL": "warning"})
    proc = subprocess.Popen([sys.executable, "-m", "outbox_relay"], env=env, cwd=str(ROOT))
    peak = 0.0
    try:
        while await count_published(engine) < backlog:
            peak = max(peak, rss_mb(proc.pid)[1])
            await asyncio.sleep(0.1)
        peak = max(peak, rss_mb(proc.pid)[1])
    finally:
        proc.terminate()
        proc.wait(15)
        await engine.dispose()
    return peak


async def run_backend(kind: str, url: str, bootstrap: str, args: argparse.Namespace) -> dict[str, float]:
    topic = f"bench.{uuid.uuid4().hex[:6]}.notification"
    settings = settings_for(url, bootstrap, topic)
    await ensure_topics(settings, [topic], 3, 10)
    res: dict[str, float] = {}
    res["raw_msgs_s"] = await raw_producer(bootstrap, f"{topic}.raw", args.rows)
    await ensure_topics(settings, [f"{topic}.rawb"], 3, 10)
    res["raw_batch_msgs_s"] = await raw_producer_batches(bootstrap, f"{topic}.rawb", args.rows)
    res["relay_rows_s"], res["relay_stmts_per_row"], _ = await relay_drain(settings, args.rows)
    res["baseline_rows_s"] = await baseline(settings, args.baseline_rows)
    lat_topic = f"{topic}.latency"
    await ensure_topics(settings, [lat_topic], 3, 10)
    res.update(await latency(settings_for(url, bootstrap, lat_topic), args.latency_rate, args.latency_seconds))
    if not args.skip_memory:
        res["rss_10k_mb"] = await relay_rss(settings, 10_000)
        res["rss_100k_mb"] = await relay_rss(settings, 100_000)
    return res


def report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print(f"\nmachine: {machine()}")
    print(f"settings: rows={args.rows} baseline_rows={args.baseline_rows} relay batch=500 linger=5ms acks=all, "
          f"latency load={args.latency_rate:g} rows/s for {args.latency_seconds:g} s, broker Tansu memory://")
    print("\n| backend | raw producer msg/s (send / batch API) | relay rows/s | relay/raw (send / batch API) | "
          "baseline rows/s | relay/baseline | SQL stmts/row | commit->consumer p50/p95/p99 ms | "
          "commit->published p50/p99 ms | RSS 10k/100k MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, r in results.items():
        rss = f"{r['rss_10k_mb']:.0f} / {r['rss_100k_mb']:.0f}" if "rss_10k_mb" in r else "skipped"
        print(f"| {kind} | {r['raw_msgs_s']:,.0f} / {r['raw_batch_msgs_s']:,.0f} | {r['relay_rows_s']:,.0f} | "
              f"{r['relay_rows_s'] / r['raw_msgs_s']:.2f}x / {r['relay_rows_s'] / r['raw_batch_msgs_s']:.2f}x"
              f" | {r['baseline_rows_s']:,.0f} | {r['relay_rows_s'] / r['baseline_rows_s']:.0f}x | "
              f"{r['relay_stmts_per_row']:.3f} | {r['kafka_p50']:.1f} / {r['kafka_p95']:.1f} / {r['kafka_p99']:.1f}"
              f" | {r['db_p50']:.0f} / {r['db_p99']:.0f} | {rss} |")
        if r.get("missing"):
            print(f"  ! {kind}: {r['missing']:.0f} latency messages not received")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--baseline-rows", type=int, default=2_000)
    parser.add_argument("--db", default="mariadb,sqlite")
    parser.add_argument("--latency-rate", type=float, default=200.0)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    (ROOT / "var").mkdir(exist_ok=True)
    results: dict[str, dict[str, float]] = {}
    with tansu() as bootstrap:
        for kind in args.db.split(","):
            print(f"running {kind} ...", flush=True)
            if kind == "mariadb":
                with mariadb() as url:
                    results[kind] = await run_backend(kind, url, bootstrap, args)
            else:
                results[kind] = await run_backend(kind, sqlite_url(), bootstrap, args)
    report(results, args)


if __name__ == "__main__":
    asyncio.run(main())
