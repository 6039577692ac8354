"""Loading the SQL files and binding them to a schema.

Schema names come from configuration, so they are validated against a strict
pattern and quoted before being spliced in; everything else is a bound parameter.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Final

from snapstore.errors import ConfigurationError

SCHEMA_PATTERN: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
SCHEMA_TOKEN: Final = "@schema@"
DEFAULT_SCHEMA: Final = "snapstore"
_SECTION: Final = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


def validate_schema(name: str) -> str:
    """Return ``name`` if it is a safe schema name, else raise `ConfigurationError`."""
    if not isinstance(name, str) or not SCHEMA_PATTERN.fullmatch(name):
        raise ConfigurationError(f"schema name {name!r} must match [a-z_][a-z0-9_]{{0,62}}")
    if name.startswith("pg_"):
        raise ConfigurationError(f"schema name {name!r} is reserved by PostgreSQL")
    return name


def quote_schema(name: str) -> str:
    """The validated name as a quoted SQL identifier."""
    return '"' + validate_schema(name) + '"'


def bind_schema(text: str, schema: str) -> str:
    """Replace the schema token in a SQL text with the quoted schema name."""
    return text.replace(SCHEMA_TOKEN, quote_schema(schema))


def wakeup_channel(schema: str) -> str:
    """The NOTIFY channel of a schema (PostgreSQL keeps at most 63 bytes of it)."""
    return ("snapstore_wakeup:" + validate_schema(schema))[:63]


def sql_dir() -> Traversable:
    """The sql/ folder: inside the wheel, or at the top of a source checkout."""
    packaged = resources.files("snapstore") / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "sql"


def compact(body: str) -> str:
    """A statement without comment lines and indentation.

    The files stay commented for readers; the wire gets the short form, which
    also keeps the big statements under psycopg's cached-parse size limit.
    Only whole-line comments go (a trailing one stays), which is safe because no
    statement here has a string literal spanning lines.
    """
    lines = (line.strip() for line in body.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("--"))


@functools.cache
def _raw_queries() -> dict[str, str]:
    """Every named statement of sql/queries/*.sql; a name may appear only once."""
    found: dict[str, str] = {}
    folder = sql_dir() / "queries"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        parts = _SECTION.split(entry.read_text(encoding="utf-8"))
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in found:
                raise RuntimeError(f"statement {name!r} is defined twice in sql/queries/")
            found[name] = compact(body)
    return found


class Queries:
    """The named statements of sql/queries/*.sql bound to one schema, as bytes."""

    def __init__(self, schema: str) -> None:
        self.schema = validate_schema(schema)
        self._by_name = {
            name: bind_schema(body, schema).encode() for name, body in _raw_queries().items()
        }

    def __getitem__(self, name: str) -> bytes:
        return self._by_name[name]

    def names(self) -> list[str]:
        return sorted(self._by_name)


@functools.cache
def queries_for(schema: str) -> Queries:
    """Cached `Queries` per schema name."""
    return Queries(schema)
