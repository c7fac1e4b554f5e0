"""Cost of ``worker.verify_messages`` (each message checked against its outbox row) on real MariaDB, side by side.

Batches of ``--batch`` (100) ``active_schedule.triggered`` events (Go-shaped rows written by ``create_trigger``)
go through the worker's dispatcher, alternating verify off / on over ``--rounds`` (5) rounds on fresh events
(the order flips every round); prints the median wall time per batch and per event of both, the ratio, the
statements per batch, and the verification step alone (classify + one SELECT + compare) timed on each batch.

    .venv/bin/python -m bench.verify_bench [--batch 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from types import SimpleNamespace

import sqlalchemy as sa

import config
from bench.common import StatementCounter, mariadb, new_mysql_database
from smartflow_streams.contracts.envelope import KafkaEnvelope, OutboxEventShell
from smartflow_streams.db.engine import create_engine
from smartflow_streams.db.schema import upgrade_schema
from smartflow_streams.outbox.repository import OutboxRepository
from smartflow_streams.scheduler.triggers import TriggerRequest, create_trigger

TRIGGER = "active_schedule.triggered"


class _Event:
    def __init__(self, value: bytes, key: bytes, offset: int) -> None:
        self.value = value
        self.message = SimpleNamespace(topic="t", partition=0, key=key, offset=offset)


async def _events(runtime, first_user: int, count: int) -> list[_Event]:
    async with runtime.sessions() as s, s.begin():
        for u in range(first_user, first_user + count):
            await create_trigger(s, TriggerRequest(user_id=u, trigger_type="important_urgent_task",
                                                   source="api_trigger", target_type="task_pool", target_id=u),
                                 runtime.settings)
    repo = OutboxRepository.for_event(TRIGGER)
    async with runtime.sessions() as s:
        rows = (await s.execute(sa.select(repo.table).where(repo.table.c.status == "pending")
                                .order_by(repo.table.c.id))).mappings().all()
    return [_Event(KafkaEnvelope.from_shell(r["id"], OutboxEventShell.parse(r["payload"]), "active-scheduler")
                   .to_json_bytes(), r["message_key"].encode(), n) for n, r in enumerate(rows)]


async def _main(args: argparse.Namespace) -> None:
    from agents.dispatch import Dispatcher
    from smartflow_streams.startup.runtime import WorkerRuntime

    with mariadb() as server:
        url = await new_mysql_database(server, "bench_verify")
        engine = create_engine(config.load_settings(database_url=url))
        await upgrade_schema(engine)
        await engine.dispose()
        settings = config.load_settings(database_url=url)
        config.set_settings(settings)
        runtime = WorkerRuntime(settings)
        counter = StatementCounter(runtime.engine)
        times: dict[bool, list[float]] = {False: [], True: []}
        statements: dict[bool, list[int]] = {False: [], True: []}
        user = 1
        try:
            step: list[float] = []
            for n in range(args.rounds):
                for verify in ((False, True) if n % 2 == 0 else (True, False)):
                    events = await _events(runtime, user, args.batch)
                    user += args.batch
                    settings.worker.verify_messages = verify
                    dispatcher = Dispatcher(runtime)
                    counter.count = 0
                    started = time.perf_counter()
                    outcomes = await dispatcher.handle_batch("active-scheduler", events)
                    times[verify].append(time.perf_counter() - started)
                    statements[verify].append(counter.count)
                    assert outcomes == ["consumed"] * len(events), outcomes[:5]
                    verdicts = [dispatcher._classify("active-scheduler", e.value) for e in events]
                    started = time.perf_counter()
                    await dispatcher._verify("active-scheduler", verdicts)  # the rows exist: read-only
                    step.append(time.perf_counter() - started)
        finally:
            await runtime.close()
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"batches of {args.batch} active_schedule.triggered events, {args.rounds} rounds alternating, MariaDB")
    print(f"{'verify_messages':<16} {'ms/batch':>9} {'ms/event':>9} {'statements/batch':>17}")
    for name, value, verify in (("off", off, False), ("on", on, True)):
        print(f"{name:<16} {value * 1000:9.1f} {value * 1000 / args.batch:9.3f} "
              f"{statistics.median(statements[verify]):17.0f}")
    print(f"ratio on/off: {on / off:.3f} ({(on - off) * 1000 / args.batch:+.3f} ms per event; noise on a shared "
          "machine can exceed the difference)")
    alone = statistics.median(step)
    print(f"verification step alone: {alone * 1000:.2f} ms per batch of {args.batch} "
          f"({alone * 1e6 / args.batch:.0f} us per event), {alone / off:.1%} of a batch without it")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(_main(parser.parse_args()))
