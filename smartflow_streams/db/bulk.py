"""Many rows, different values, one UPDATE: ``SET c = CASE id WHEN :i1 THEN :v1 ... END ... WHERE id IN (...)``.

Why: an executemany UPDATE is one statement and one round trip *per row* on MySQL/MariaDB (PyMySQL/aiomysql only
fold INSERT ... VALUES into one statement), each with its own driver work and a parse in the database. The
notification agent's outcome write and the trigger workflow's final UPDATE were one such statement per event
(``bench/chain_bench.py --profile`` at 200 triggers/s: ~5 % of the worker's CPU). Alternating A/B runs showed no
throughput change beyond run-to-run spread (docs/benchmarks.md, Whole chain): kept for the round trips it removes.

Invariants and limits:
- Same result as the executemany it replaces: each row ``id`` gets exactly its own values, under the same extra
  ``where`` guards (they must not depend on the row); ``rowcount`` is the number of rows matched (the MySQL dialect
  sets ``CLIENT_FOUND_ROWS``), as the sum of the executemany's per-row counts was. Rows are given once per id.
- A column whose value is equal for every row is one bound parameter, not a CASE.
- At most :data:`ROWS_PER_STATEMENT` (500) rows per statement, so a statement stays well under SQLite's 32,766
  bound parameters and MySQL's ``max_allowed_packet``; larger inputs are split (one statement per 500 rows).
- Values bind with the column's own type unless ``bind_types`` says otherwise (e.g. ``Text`` for JSON text that
  is already encoded: the MySQL JSON type would encode it again).
- Memory: a statement's shape depends on its row count, and SQLAlchemy's compiled cache (500 entries per engine)
  keeps every shape it saw with its first parameters: ~8 KiB per row (3 CASE columns; 1.7 MiB at 200 rows). Under
  varying batch sizes that cache grew a worker by ~8 MB a minute until full (the soak in docs/benchmarks.md, gc
  census of what outlived every window). :func:`update_rows` therefore runs statements over
  :data:`CACHED_ROWS_MAX` (8) rows without the cache (``compiled_cache=None``, per execution): compiling costs
  ~40-70 % more than a cache hit (4.2 vs 2.4 ms at 20 rows), and small batches, the common case at light load,
  stay cached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

ROWS_PER_STATEMENT = 500
CACHED_ROWS_MAX = 8


def update_by_id(table: sa.Table, rows: Sequence[Mapping[str, Any]], *, key: str = "id",
                 where: Sequence[sa.ColumnElement[bool]] = (),
                 bind_types: Mapping[str, sa.types.TypeEngine[Any]] | None = None) -> list[sa.Update]:
    """The UPDATE statements (one per :data:`ROWS_PER_STATEMENT` rows) giving each row ``row[key]`` the other
    values of its mapping; every mapping names the same columns. Run them in order in one transaction."""
    if not rows:
        return []
    columns = [c for c in rows[0] if c != key]
    for row in rows:
        if set(row) != {key, *columns}:
            raise ValueError(f"every row must name the same columns: {sorted(row)} vs {sorted([key, *columns])}")
    types = dict(bind_types or {})
    statements = []
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start:start + ROWS_PER_STATEMENT]
        ids = [row[key] for row in chunk]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{key} values must be unique within one update")
        id_column = table.c[key]
        values: dict[str, Any] = {}
        for name in columns:
            type_ = types.get(name, table.c[name].type)
            distinct = {_hashable(row[name]) for row in chunk}
            if len(distinct) == 1:
                values[name] = sa.bindparam(None, chunk[0][name], type_=type_)
            else:
                values[name] = sa.case(
                    *((id_column == sa.bindparam(None, row[key], type_=id_column.type),
                       sa.bindparam(None, row[name], type_=type_)) for row in chunk),
                    else_=table.c[name])
        statements.append(sa.update(table).where(id_column.in_(ids), *where).values(values))
    return statements


async def update_rows(executor: Any, table: sa.Table, rows: Sequence[Mapping[str, Any]], *, key: str = "id",
                      where: Sequence[sa.ColumnElement[bool]] = (),
                      bind_types: Mapping[str, sa.types.TypeEngine[Any]] | None = None) -> int:
    """Run :func:`update_by_id`'s statements on ``executor`` (an ``AsyncSession`` or ``AsyncConnection``, inside the
    caller's transaction); returns the rows matched. Statements over :data:`CACHED_ROWS_MAX` rows skip the
    compiled cache (module note)."""
    matched = 0
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start:start + ROWS_PER_STATEMENT]
        options = {"compiled_cache": None} if len(chunk) > CACHED_ROWS_MAX else {}
        for stmt in update_by_id(table, chunk, key=key, where=where, bind_types=bind_types):
            matched += int((await executor.execute(stmt, execution_options=options)).rowcount or 0)
    return matched


def _hashable(value: Any) -> Any:
    try:
        hash(value)
        return (type(value), value)
    except TypeError:
        return (type(value), repr(value))
