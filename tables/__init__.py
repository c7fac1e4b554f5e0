"""Faust tables: accelerators in front of the database, never the source of truth.

- :class:`tables.dedupe.DedupeWindows`: notification dedupe keys seen with a terminal status in the last 30 min.
- :class:`tables.consumption.ConsumptionTable`: per (service, outbox id) what this worker group consumed or
  dead-lettered, and per (service, partition) counters.

Both may be lost or rebuilt at any time (memory store + changelog): a miss only costs one database read, because
every decision is taken again under a row lock in the database.
"""
