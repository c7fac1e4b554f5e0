"""Schema command: create missing tables, add missing columns and indexes, in place, idempotently.

Works on an existing upstream database (tables made by GORM): nothing is dropped, renamed or retyped, rows are
kept; only our nullable/defaulted columns (``claim_token``, ``send_token``, ...) and missing indexes are added.
Running it twice changes nothing the second time (:func:`upgrade_schema` returns the list of changes made).

On a database the Go services made, the complete list of changes is: ``claim_token`` and the ``idx_outbox_claim``
index on each outbox table, ``notification_records.send_token``, ``user_notification_channels.webhook_kind`` /
``sign_secret`` / ``msg_type``, and our own three tables (``outbox_relay_leases``, ``outbox_admin_audit``,
``outbox_dead_messages``). An index is "present" when an index with the same columns exists, whatever its name.

A column added to an existing table is always added NULL-able (a NOT NULL column without a default cannot be added
to a table with rows on SQLite, and MySQL would fill it with zero values); fresh tables get the exact definition.

One rename, of our own legacy only: ``active_schedule_previews`` made by smartflow-streams before it used the
Go key column had ``id`` where the Go table has ``preview_id``; when ``id`` exists and ``preview_id`` does not, the
column is renamed (SQLite >= 3.25, MariaDB >= 10.5, MySQL >= 8.0). A Go-made table always has ``preview_id``,
so this never touches it.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import CreateColumn

from smartflow_streams.catalog import RouteRegistry, registry as default_registry
from smartflow_streams.db import models

log = logging.getLogger(__name__)


def outbox_table_names(reg: RouteRegistry | None = None) -> list[str]:
    reg = reg or default_registry
    names: list[str] = []
    for service in reg.services():
        table = reg.service_route(service).table
        if table not in names:
            names.append(table)
    return names


def _index_name(dialect: str, name: str, table: str, per_table: bool) -> str:
    # MySQL index names are per table (upstream reuses them); SQLite's are global to the database.
    return f"{name}__{table}" if per_table and dialect == "sqlite" else name


async def upgrade_schema(engine: AsyncEngine, reg: RouteRegistry | None = None) -> list[str]:
    """Bring the database up to the current schema; returns a human-readable list of changes made."""
    tables: list[tuple[sa.Table, list[tuple[str, tuple[str, ...], bool]], bool]] = []
    for name in outbox_table_names(reg):
        tables.append((models.outbox_table(name), models.OUTBOX_INDEXES, True))
    for name, indexes in models.FIXED_TABLE_INDEXES.items():
        tables.append((models.metadata.tables[name], indexes, False))
    async with engine.begin() as conn:
        changes: list[str] = []
        for table, indexes, per_table in tables:
            changes += await _upgrade_table(conn, table, indexes, per_table)
    for change in changes:
        log.info("schema: %s", change)
    return changes


async def _upgrade_table(
    conn: AsyncConnection, table: sa.Table, indexes: list[tuple[str, tuple[str, ...], bool]], per_table: bool
) -> list[str]:
    dialect = conn.dialect.name
    existing = await conn.run_sync(lambda c: sa.inspect(c).has_table(table.name))
    changes: list[str] = []
    if not existing:
        await conn.run_sync(lambda c: table.create(c))
        changes.append(f"created table {table.name}")
        present_cols: set[str] = {c.name for c in table.columns}
        present_idx: set[tuple[str, ...]] = set()
    else:
        present_cols = set(await conn.run_sync(lambda c: [col["name"] for col in sa.inspect(c).get_columns(table.name)]))
        changes += await _rename_legacy_columns(conn, table.name, present_cols)
        present_idx = set(await conn.run_sync(lambda c: _index_columns(c, table.name)))
    for column in table.columns:
        if column.name in present_cols:
            continue
        if not column.nullable and column.server_default is None and not column.primary_key:
            column = column._copy()
            column.nullable = True
        ddl = CreateColumn(column).compile(dialect=conn.dialect)
        await conn.exec_driver_sql(f"ALTER TABLE {_quote(conn, table.name)} ADD COLUMN {ddl}")
        changes.append(f"added column {table.name}.{column.name}")
    for name, cols, unique in indexes:
        if tuple(cols) in present_idx:
            continue
        idx_name = _index_name(dialect, name, table.name, per_table)
        quoted_cols = ", ".join(_quote(conn, c) for c in cols)
        kind = "UNIQUE INDEX" if unique else "INDEX"
        await conn.exec_driver_sql(
            f"CREATE {kind} {_quote(conn, idx_name)} ON {_quote(conn, table.name)} ({quoted_cols})"
        )
        changes.append(f"created index {idx_name} on {table.name}")
    return changes


LEGACY_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {"active_schedule_previews": (("id", "preview_id"),)}
"""Our own earlier column names, renamed to the Go name when only the old one exists (module docstring)."""


async def _rename_legacy_columns(conn: AsyncConnection, table: str, present_cols: set[str]) -> list[str]:
    changes: list[str] = []
    for old, new in LEGACY_RENAMES.get(table, ()):
        if old in present_cols and new not in present_cols:
            await conn.exec_driver_sql(
                f"ALTER TABLE {_quote(conn, table)} RENAME COLUMN {_quote(conn, old)} TO {_quote(conn, new)}")
            present_cols.discard(old)
            present_cols.add(new)
            changes.append(f"renamed column {table}.{old} to {new}")
    return changes


def _index_columns(sync_conn: sa.Connection, table: str) -> list[tuple[str, ...]]:
    insp = sa.inspect(sync_conn)
    found = [tuple(ix["column_names"]) for ix in insp.get_indexes(table)]
    found += [tuple(uc["column_names"]) for uc in insp.get_unique_constraints(table)]
    pk = insp.get_pk_constraint(table).get("constrained_columns") or []
    if pk:
        found.append(tuple(pk))
    return found


def _quote(conn: AsyncConnection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)
