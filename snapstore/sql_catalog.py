"""Loading the SQL files and binding them to a schema.

Schema names come from configuration, so they are validated against a strict
pattern and quoted before being spliced in; everything else is a bound parameter.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, Final, NamedTuple

from snapstore.errors import ConfigurationError

SCHEMA_PATTERN: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
SCHEMA_TOKEN: Final = "@schema@"
DEFAULT_SCHEMA: Final = "snapstore"
# No space is needed on either side of these. Next to another operator character the
# lexer still splits them right: "a=-1" is "a", "=", "-1", since an operator name may
# not end in + or -.
_TIGHT: Final = frozenset(",()=<>")
_SECTION: Final = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)
_PARAM: Final = re.compile(r"%\(([a-z_]+)\)[sb]")


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
    """Every named statement of sql/queries/*.sql; a name may appear only once. A section
    named ``part_<x>`` is no statement but a shared piece of them: ``@part_<x>@`` in a
    statement (or in another part) stands for its text."""
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
    pieces = {f"@{name}@": found.pop(name) for name in list(found) if name.startswith("part_")}
    for name, body in found.items():
        for _ in range(len(pieces)):  # a part may hold parts: expand until none is left
            for token, piece in pieces.items():
                body = body.replace(token, piece)
        if "@part_" in body:
            raise RuntimeError(f"statement {name!r} names an unknown part")
        found[name] = body
    return found


class Positional(NamedTuple):
    """A statement with PostgreSQL's own ``$n`` placeholders and the parameter name each
    stands for: run on a `psycopg.RawCursor`, psycopg has nothing left to parse."""

    sql: bytes
    names: tuple[str, ...]

    def args(self, params: Mapping[str, Any] | None) -> list[Any] | None:
        """The positional arguments for named ``params``."""
        return None if params is None else self.values(params)

    def values(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]


def positional(body: str) -> Positional:
    """``body`` with every ``%(name)s`` / ``%(name)b`` replaced by ``$n`` (one number per
    name). psycopg parses a named statement on every execution once it is longer than
    it caches (4 kB, which a long schema name pushes the save statement past); this
    form is never parsed, so the length does not matter. The binary marker need not
    survive: an unspecified format picks the binary dumper where one exists, as ours do.
    """
    names: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"${names.setdefault(match[1], len(names) + 1)}"

    text = _PARAM.sub(number, body)
    if "%" in text:
        raise RuntimeError(f"unconverted % in statement: {body[:80]!r}")
    return Positional(text.encode(), tuple(names))


class Queries:
    """The named statements of sql/queries/*.sql bound to one schema, as bytes (and in
    `positional` form, for the hot path)."""

    def __init__(self, schema: str) -> None:
        self.schema = validate_schema(schema)
        bound = {name: bind_schema(body, schema) for name, body in _raw_queries().items()}
        self._by_name = {name: body.encode() for name, body in bound.items()}
        self._positional = {name: positional(body) for name, body in bound.items()}

    def __getitem__(self, name: str) -> bytes:
        return self._by_name[name]

    def positional(self, name: str) -> Positional:
        return self._positional[name]

    def names(self) -> list[str]:
        return sorted(self._by_name)


@functools.cache
def queries_for(schema: str) -> Queries:
    """Cached `Queries` per schema name."""
    return Queries(schema)
