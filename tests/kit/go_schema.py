"""The Go services' tables as a test fixture: build a database the way they make it, list their columns.

``tests/fixtures/go_schema_mysql.sql`` is the Go services' DDL (GORM AutoMigrate on MySQL/MariaDB, 13 tables);
``tests/fixtures/go_schema_sqlite.sql`` is our column-for-column SQLite translation of it. :func:`make_go_database`
gives a fresh database holding exactly those tables (and nothing of ours) on either backend; the caller then runs
the schema command on it, as a user would.
"""

from __future__ import annotations

import pathlib
import re

import sqlalchemy as sa

from conftest import DB, make_database

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures"
MYSQL_DDL = FIXTURES / "go_schema_mysql.sql"
SQLITE_DDL = FIXTURES / "go_schema_sqlite.sql"


def _statements(path: pathlib.Path) -> list[str]:
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


def _parse_columns() -> dict[str, list[str]]:
    tables: dict[str, list[str]] = {}
    for stmt in _statements(MYSQL_DDL):
        head = re.match(r"CREATE TABLE `(\w+)` \(", stmt)
        assert head, stmt[:80]
        cols = re.findall(r"^\s*`(\w+)` ", stmt[head.end():], re.M)
        tables[head.group(1)] = cols
    return tables


GO_COLUMNS: dict[str, list[str]] = _parse_columns()
"""Every Go table -> its column names in DDL order (13 tables)."""

GO_OUTBOX_TABLES = [name for name in GO_COLUMNS if name.endswith("_outbox_messages")]


def go_select(table: sa.Table) -> sa.Select:
    """``SELECT <the Go model's columns>`` of ``table``: what a Go reader of the row sees."""
    return sa.select(*[sa.column(c) for c in GO_COLUMNS[table.name]]).select_from(sa.table(table.name))


async def create_go_tables(db: DB) -> None:
    """Create the 13 Go tables on ``db`` (empty database) from the fixture DDL of its backend."""
    path = SQLITE_DDL if db.kind == "sqlite" else MYSQL_DDL
    async with db.engine.begin() as conn:
        for stmt in _statements(path):
            await conn.exec_driver_sql(stmt)


async def make_go_database(kind: str, tmp_path: pathlib.Path, mariadb_url: str | None, **overrides: object) -> DB:
    """A new database (``sqlite`` file or MariaDB database) holding only the Go services' tables."""
    db = await make_database(kind, tmp_path, mariadb_url, **overrides)
    await create_go_tables(db)
    return db
