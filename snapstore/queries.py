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
# No space is needed on either side of these. Next to another operator character the
# lexer still splits them right: "a=-1" is "a", "=", "-1", since an operator name may
# not end in + or -.
_TIGHT: Final = frozenset(",()=<>")
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
    """A statement as sent: no comments, whitespace collapsed, none around , ( ) = < >.

    The files stay commented and laid out for readers; the wire gets the short
    form, which keeps the big statements under psycopg's cached-parse size
    limit. String literals are copied untouched (a doubled '' inside one reads
    as two adjacent literals, which copies the same text); the named statements
    use no E'' or dollar quoting, which this scanner does not know.
    """
    tokens: list[str] = []
    i, n = 0, len(body)
    while i < n:
        if body[i] == "'":
            end = body.index("'", i + 1) + 1
            tokens.append(body[i:end])
            i = end
        elif body.startswith("--", i):
            end = body.find("\n", i)
            i = n if end < 0 else end
        elif body[i].isspace():
            while i < n and body[i].isspace():
                i += 1
            if tokens[-1:] != [" "]:  # a comment between two runs leaves one space
                tokens.append(" ")
        else:
            tokens.append(body[i])
            i += 1
    kept = [
        t
        for k, t in enumerate(tokens)
        if t != " "
        or not (0 < k < len(tokens) - 1)
        or not (tokens[k - 1][-1] in _TIGHT or tokens[k + 1][0] in _TIGHT)
    ]
    return "".join(kept).strip()


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
