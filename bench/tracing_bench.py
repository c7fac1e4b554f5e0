"""What tracing costs the relay per batch, off and on, measured side by side in one run.

For each 500-row batch of Go-shaped notification rows (SQLite file, rows read by the relay's own claim): the
relay's work before publishing (claim + build the messages) plus the tracing hook, in three variants run in
alternation: ``baseline`` (no hook at all), ``off`` (the shipped code path with tracing off: one ``active()``
test per batch) and ``on`` (tracing on, spans made and ended, exporter ``none``: the cost of the spans and the
extra SELECT of stored contexts, not of exporting them). Also counts SQL statements per batch for each variant.

    .venv/bin/python -m bench.tracing_bench [--rows 500] [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import config
from bench.common import StatementCounter, bulk_fill, machine, sqlite_url
from outbox_relay.relay import TableRelay
from smartflow_streams.core import tracing
from smartflow_streams.catalog import registry
from smartflow_streams.db.engine import create_engine
from smartflow_streams.db.schema import upgrade_schema


async def one_batch(relay: TableRelay, variant: str, rows: int) -> float:
    started = time.perf_counter()
    claim = await relay.repo.claim_due(relay.engine, limit=rows, lease_seconds=30, exclusive=True)
    messages, _poison = relay._build(claim.rows)
    if variant != "baseline" and tracing.active():  # exactly the hook of TableRelay.step
        spans = await tracing.start_publish_spans(relay.engine, relay.repo.table, "notification", claim.rows,
                                                  messages)
        tracing.end_publish_spans(spans, {})
    assert len(messages) == rows
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    url = sqlite_url()
    settings = config.load_settings(database_url=url, tracing={"enabled": True, "exporter": "none"})
    config.set_settings(settings)
    engine = create_engine(settings)
    await upgrade_schema(engine)
    route = registry.service_route("notification")
    relay = TableRelay(route, engine, None, settings, "bench", asyncio.Event())  # type: ignore[arg-type]
    await bulk_fill(engine, relay.repo.table, route.topic, args.rows)  # the same rows stay due: read every round
    counter = StatementCounter(engine)
    times: dict[str, list[float]] = {"baseline": [], "off": [], "on": []}
    statements: dict[str, int] = {}
    for round_ in range(args.rounds + 2):
        for variant in ("baseline", "off", "on"):
            if variant == "on":
                tracing.configure(settings, "bench")
            else:
                tracing.shutdown()
            before = counter.count
            seconds = await one_batch(relay, variant, args.rows)
            statements[variant] = counter.count - before
            if round_ >= 2:  # warm-up rounds are not counted
                times[variant].append(seconds)
    tracing.shutdown()
    await engine.dispose()
    print(f"machine: {machine()}")
    print(f"relay work per {args.rows}-row batch (claim + build + tracing hook), median of {args.rounds} rounds:")
    base = statistics.median(times["baseline"])
    for variant, values in times.items():
        med = statistics.median(values)
        print(f"  {variant:8} {med * 1000:8.2f} ms  {med / args.rows * 1e6:7.1f} us/row  x{med / base:5.2f}  "
              f"{statements[variant]} SQL statement(s)")


if __name__ == "__main__":
    asyncio.run(main())
