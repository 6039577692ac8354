"""Versioned, checksummed schema migrations from the numbered files in sql/: the
files, their checksums and the statements of a run (`snapstore.migrate_async` runs
them). No I/O here.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Final

from psycopg import sql as pgsql

from snapstore.errors import MigrationError
from snapstore.sql_catalog import bind_schema, quote_schema, sql_dir, validate_schema

_FILE: Final = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
LOCK_SQL: Final = b"SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0))"
EXISTS_SQL: Final = b"SELECT to_regclass(%(table)s) IS NOT NULL"
APPLIED_SQL: Final = "SELECT version, checksum FROM @schema@.migrations ORDER BY version"
RECORD_SQL: Final = (
    "INSERT INTO @schema@.migrations (version, name, checksum) "
    "VALUES (%(version)s, %(name)s, %(checksum)s)"
)
BOOTSTRAP_SQL: Final = """CREATE SCHEMA IF NOT EXISTS @schema@;
CREATE TABLE IF NOT EXISTS @schema@.migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);"""


@dataclass(frozen=True)
class Migration:
    """One numbered file. The checksum covers the file text before schema binding."""

    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@functools.cache
def load_migrations() -> tuple[Migration, ...]:
    """All migration files, in version order."""
    found = []
    for entry in sql_dir().iterdir():
        match = _FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    return tuple(found)


def pending(applied: dict[int, str], migrations: tuple[Migration, ...]) -> list[Migration]:
    """The migrations still to apply; refuse edited files or a schema from the future."""
    known = {m.version: m for m in migrations}
    for version, checksum in applied.items():
        migration = known.get(version)
        if migration is None:
            raise MigrationError(
                f"schema has migration {version}, unknown to this snapstore version; upgrade it"
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"migration {version}_{migration.name} was changed after it was applied "
                f"(checksum {checksum[:12]} in the database, {migration.checksum[:12]} here)"
            )
    return [m for m in migrations if m.version not in applied]


class MigrationPlan:
    """The statements of a migration run for one schema (shared by sync and async)."""

    def __init__(self, schema: str) -> None:
        self.schema = validate_schema(schema)
        self.lock_params = {"key": f"snapstore:{schema}"}
        self.exists_params = {"table": f"{quote_schema(schema)}.migrations"}
        self.bootstrap = bind_schema(BOOTSTRAP_SQL, schema).encode()
        self.applied = bind_schema(APPLIED_SQL, schema).encode()
        self.record = bind_schema(RECORD_SQL, schema).encode()

    def ddl(self, migration: Migration) -> bytes:
        return bind_schema(migration.text, self.schema).encode()

    @staticmethod
    def record_params(migration: Migration) -> dict[str, object]:
        return {
            "version": migration.version,
            "name": migration.name,
            "checksum": migration.checksum,
        }


def print_sql(schema: str) -> str:
    """The full DDL a fresh install runs for ``schema`` (for review or manual apply).

    Each migration is followed by the row that records it, so a schema installed by
    hand is one `migrate` recognises as current instead of re-applying it.
    """
    plan = MigrationPlan(schema)
    parts = [plan.bootstrap.decode()]
    for m in load_migrations():
        parts.append(f"-- migration {m.version:04d}_{m.name} (sha256 {m.checksum})")
        parts.append(plan.ddl(m).decode())
        record = pgsql.SQL(
            "INSERT INTO {}.migrations (version, name, checksum) VALUES ({}, {}, {});"
        ).format(
            pgsql.Identifier(plan.schema),
            pgsql.Literal(m.version),
            pgsql.Literal(m.name),
            pgsql.Literal(m.checksum),
        )
        parts.append(record.as_string())
    return "\n\n".join(parts) + "\n"


def applied_versions(rows: list[tuple[Any, ...]]) -> dict[int, str]:
    """The ``migrations`` table's rows as {version: checksum}."""
    return {int(v): str(c) for v, c in rows}
