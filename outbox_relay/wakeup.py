"""Idle tables share one probe: a table with nothing due parks here instead of polling its own table.

Why: a relay serves every outbox table (8 in the catalog), and a table polling on its own costs a pool checkout
(pre-ping), a SELECT and a rollback per poll: 3 round trips, ~0.5 ms of relay CPU. Eight tables polling every
50 ms kept an idle relay at 12-38 % of a core and, under load on one table, took CPU from the busy one (the relay
moved Go-shaped rows ~2.5x slower with all 8 tables configured than with one; ``bench/chain_bench.py
--relay-variants``). Here one statement on one held connection answers for every parked table::

    SELECT EXISTS(SELECT 1 FROM t1 WHERE <due>), EXISTS(SELECT 1 FROM t2 WHERE <due>), ...

Invariants and limits:
- ``<due>`` is exactly the relay's claim condition (``status='pending' AND next_retry_at <= now``, index
  ``idx_outbox_claim``), so a parked table is woken for every row its own read would find; nothing is lost: a
  woken table reads as before, and a probe error wakes every parked table (their own reads then fail and back off
  as before).
- Latency: the probe runs 5 ms after a table parks, doubling while nothing is due up to ``relay.idle_poll_max_ms``
  (50 ms): a row committed into a relay that was busy within ``relay.idle_deep_after_seconds`` (2 s) goes out
  within ~50 ms plus one read. After that long with nothing due the probe slows to ``relay.idle_deep_poll_ms``
  (250 ms, ~4 statements/s): the first row after a quiet period waits up to that long, the next ones ~50 ms. A
  table parking after a read brings the next probe forward to 5 ms after it, never later than planned.
- A parked table also wakes after ``timeout`` (the caller passes its lease-renewal interval, ~3.3 s by default) so
  the table lease is renewed while idle and a standby relay does not take over an idle table.
- MySQL/MariaDB: the probe runs on the relay's held autocommit connection (:mod:`outbox_relay.reader`, shared
  with the tables' claim reads: no transaction stays open, no pool checkout or rollback round trip: one round
  trip per probe); it is dropped on any error and opened again on the next read. SQLite: a pooled connection per
  probe (the engine opens every SQLite transaction with a write lock, which must not be held).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox_relay.reader import HeldReader
from smartflow_streams.core import clock

log = logging.getLogger("outbox_relay")

PROBE_TIMEOUT_SECONDS = 10.0
"""A probe not answered by then counts as failed: every parked table wakes and reads for itself."""

DueCondition = Callable[[sa.BindParameter[Any]], sa.ColumnElement[bool]]
"""Builds a table's due condition for a ``now`` bind parameter (the probe statement is built once per table set)."""


class DueWatcher:
    """Wakes parked tables when their table has due rows; one probe statement for all of them."""

    def __init__(self, engine: AsyncEngine, min_interval_ms: float, max_interval_ms: float,
                 deep_interval_ms: float | None = None, deep_after_seconds: float = 2.0,
                 reader: HeldReader | None = None) -> None:
        self.engine = engine
        self.reader = reader or HeldReader(engine)  # the relay shares its one with the tables' claim reads
        self.min_interval = max(0.0, min_interval_ms) / 1000
        self.max_interval = max(self.min_interval, max_interval_ms / 1000)
        self.deep_interval = max(self.max_interval, (deep_interval_ms or max_interval_ms) / 1000)
        self.deep_after = deep_after_seconds
        self._quiet_since = 0.0  # loop time of the last wake-up or fresh park
        self._parked: dict[str, tuple[sa.Table, DueCondition, asyncio.Event]] = {}
        self._arrived = asyncio.Event()
        self._fresh = False  # a table parked right after a read that found nothing: probe within min_interval
        self._task: asyncio.Task[None] | None = None
        self._statements: dict[tuple[str, ...], sa.Select[Any]] = {}  # per set of parked tables (<= 2**tables)
        self.probes = 0  # statements sent (benchmarks and tests read it)

    async def wait_due(self, table: sa.Table, due: DueCondition, timeout: float, stop: asyncio.Event,
                       just_read: bool = True) -> bool:
        """Park until ``table`` has a due row (True), ``timeout`` seconds pass or ``stop`` is set (False).

        ``just_read``: the table has just read and found nothing (rows may be committed right after): the next
        probe comes within 5 ms. False (parking again after a timeout): the probe keeps its idle pace."""
        if stop.is_set():
            return False
        woken = asyncio.Event()
        self._parked[table.name] = (table, due, woken)
        if just_read:
            self._quiet_since = asyncio.get_running_loop().time()
            self._fresh = True
        self._arrived.set()  # always: the probe loop may be waiting for a first parked table
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        waits = [asyncio.ensure_future(woken.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            return woken.is_set()
        finally:
            for w in waits:
                w.cancel()
            if self._parked.get(table.name, (None, None, None))[2] is woken:
                del self._parked[table.name]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.reader.drop()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.min_interval
        while True:
            while not self._parked:
                self._arrived.clear()
                await self._arrived.wait()
            if self._fresh:
                delay = self.min_interval
            deadline = loop.time() + delay
            while (remaining := deadline - loop.time()) > 0:
                if self._fresh:
                    # a table just parked after a read: rows may have been committed since; probe soon, never later
                    self._fresh = False
                    delay = self.min_interval
                    deadline = min(deadline, loop.time() + delay)
                    continue
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            parked = sorted(self._parked.items())  # one statement per set of tables, whatever the order they parked
            if not parked:
                continue
            try:
                flags = await asyncio.wait_for(self._probe([(table, due) for _, (table, due, _) in parked]),
                                               PROBE_TIMEOUT_SECONDS)
            except Exception as exc:  # noqa: BLE001 - the tables' own reads report and back off
                log.debug("relay idle probe failed: %s: %s", type(exc).__name__, exc)
                await self.reader.drop()  # (a timed-out probe was cancelled mid-read: already dropped)
                flags = [True] * len(parked)
            woke = False
            for (name, (_, _, event)), due_now in zip(parked, flags):
                if due_now:
                    event.set()
                    self._parked.pop(name, None)
                    woke = True
            if woke:
                self._quiet_since = loop.time()
            quiet = loop.time() - self._quiet_since >= self.deep_after
            delay = self.min_interval if woke else min(max(delay * 2, 0.001),
                                                       self.deep_interval if quiet else self.max_interval)

    async def _probe(self, tables: list[tuple[sa.Table, DueCondition]]) -> list[bool]:
        key = tuple(t.name for t, _ in tables)
        stmt = self._statements.get(key)
        if stmt is None:
            now = sa.bindparam("now", type_=sa.DateTime())
            stmt = self._statements[key] = sa.select(*(
                sa.exists(sa.select(t.c.id).where(due(now))).label(f"d{i}") for i, (t, due) in enumerate(tables)))
        self.probes += 1
        return [bool(v) for v in (await self.reader.rows(stmt, {"now": clock.db_now()}))[0]]
