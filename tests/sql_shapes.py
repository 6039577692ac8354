"""The statement shapes a distributed planner (Citus) cannot route, found by reading the
SQL text (issue #13: what failed or became multi-shard 2PC on a Citus cluster).

A lexical check over the compacted statements (no comments, string literals blanked):
it knows the few shapes below, not SQL in general, and errs on the side of refusing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

CLOCK: Final = re.compile(
    r"\b(now|clock_timestamp|statement_timestamp|transaction_timestamp)\(\)|"
    r"\bcurrent_timestamp\b",
    re.IGNORECASE,
)
TABLE: Final = re.compile(r"@schema@\.(\w+)(?:\s+AS\s+(\w+))?")
LOCK: Final = re.compile(r"\bFOR (UPDATE|NO KEY UPDATE|SHARE|KEY SHARE)\b")
MODIFYING_CTE: Final = re.compile(
    r"\bAS\s*(?:NOT\s+)?(?:MATERIALIZED\s*)?\(\s*(INSERT|UPDATE|DELETE)\b"
)
KEY_VALUE: Final = r"(?:%\(\w+\)s(?:::text)?|p_\w+|v_\w+)"


def _blank_literals(sql: str) -> str:
    return re.sub(r"'[^']*'", "''", sql)


def _closing(sql: str, opening: int) -> int:
    """The index of the parenthesis closing the one at ``opening``."""
    depth = 0
    for i in range(opening, len(sql)):
        if sql[i] == "(":
            depth += 1
        elif sql[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced parentheses: {sql[opening : opening + 60]!r}")


def _case_spans(sql: str) -> Iterator[tuple[int, int]]:
    """(start, end) of every CASE ... END, nested ones included."""
    words = list(re.finditer(r"\b(CASE|END)\b", sql))
    stack: list[int] = []
    for word in words:
        if word[1] == "CASE":
            stack.append(word.start())
        elif stack:
            yield stack.pop(), word.end()


def _conflict_where(sql: str) -> Iterator[str]:
    """The WHERE of every ON CONFLICT ... DO UPDATE, up to RETURNING or the end of its
    statement (its closing parenthesis when it sits in a CTE)."""
    for match in re.finditer(r"\bON CONFLICT\b", sql):
        depth, end = 0, len(sql)
        for i in range(match.end(), len(sql)):
            if sql[i] == "(":
                depth += 1
            elif sql[i] == ")":
                if depth == 0:
                    end = i
                    break
                depth -= 1
            elif sql[i] == ";" and depth == 0:
                end = i
                break
        clause = re.split(r"\bRETURNING\b", sql[match.end() : end])[0]
        update = clause.partition("DO UPDATE SET")[2]
        where = re.split(r"\bWHERE\b", update, maxsplit=1)
        if len(where) == 2:
            yield where[1]


def _query_level(sql: str, at: int) -> str:
    """The text of the innermost parenthesised query holding position ``at`` (the whole
    statement at the top), nested parentheses included."""
    depth, start = 0, 0
    for i in range(at - 1, -1, -1):
        if sql[i] == ")":
            depth += 1
        elif sql[i] == "(":
            if depth == 0:
                start = i + 1
                break
            depth -= 1
    end = _closing(sql, start - 1) if start else len(sql)
    return sql[start:end]


def _keyed(text: str, alias: str | None) -> bool:
    """Whether ``text`` filters the table ``alias`` (or an unaliased one) by an equality
    on instance_id with a parameter."""
    prefix = rf"\b{re.escape(alias)}\." if alias else r"(?<![\w.])"
    return re.search(rf"{prefix}instance_id\s*=\s*{KEY_VALUE}", text) is not None


def unroutable(sql: str, *, keyed: bool) -> list[str]:
    """What a distributed planner could not route in one statement ``sql``. ``keyed``:
    the statement works on one instance, so every table it reads or writes must be
    filtered by ``instance_id = <parameter>`` (an INSERT by carrying it as a value)."""
    text = _blank_literals(sql)
    found: list[str] = []
    for start, end in _case_spans(text):
        if CLOCK.search(text[start:end]):
            found.append("the clock read inside CASE")
        if not re.match(r"CASE\s+WHEN\b", text[start:end]):
            found.append("a simple CASE x WHEN (mis-deparsed to the workers)")
    for match in re.finditer(r"\bCOALESCE\(", text):
        if CLOCK.search(text[match.end() : _closing(text, match.end() - 1)]):
            found.append("the clock read inside COALESCE")
    if any(CLOCK.search(where) for where in _conflict_where(text)):
        found.append("the clock read inside ON CONFLICT ... WHERE")
    tables = {m[1] for m in TABLE.finditer(text)}
    if MODIFYING_CTE.search(text) and len(tables) > 1:
        found.append(f"a data-modifying CTE in a statement over {sorted(tables)}")
    if "pg_notify(" in text and tables:
        found.append("pg_notify in a statement that reads a table (it would fire on a worker)")
    for match in LOCK.finditer(text):
        if not _keyed(_query_level(text, match.start()), None) and not re.search(
            rf"\w\.instance_id\s*=\s*{KEY_VALUE}", _query_level(text, match.start())
        ):
            found.append(f"FOR {match[1]} not keyed by instance_id (a multi-shard lock)")
    for match in re.finditer(r"\bEXISTS\s*\(", text):
        if "unnest(" in _query_level(text, match.start()):
            found.append("a correlated EXISTS beside unnest()")
    if keyed:
        for match in TABLE.finditer(text):
            table, alias = match[1], match[2]
            if text[: match.start()].endswith("INSERT INTO "):
                if not re.search(rf"\b(VALUES|SELECT)\b.*{KEY_VALUE}", text[match.end() :]):
                    found.append(f"an INSERT into {table} not carrying the instance id")
                continue
            if text[match.end() : match.end() + 1] == "(":  # a function: by its first argument
                if not re.match(rf"\({KEY_VALUE}", text[match.end() :]):
                    found.append(f"{table}() not called with the instance id first")
                continue
            if not _keyed(text, alias) and not (alias is None and _keyed(text, None)):
                found.append(f"{table} read or written without instance_id = <parameter>")
    return sorted(set(found))


def function_statements(ddl: str) -> Iterator[tuple[str, str]]:
    """(function name, statement) for each statement in the PL/pgSQL bodies of ``ddl``
    (comments already stripped)."""
    for match in re.finditer(
        r"CREATE (?:OR REPLACE )?FUNCTION @schema@\.(\w+)\(.*?\$\$(.*?)\$\$", ddl, re.S
    ):
        name, body = match[1], match[2]
        body = re.sub(r"\b(DECLARE|BEGIN)\b|\bEND(?: IF| LOOP)?;", ";", body)
        for statement in body.split(";"):
            statement = " ".join(statement.split())
            if re.search(r"\b(SELECT|INSERT|UPDATE|DELETE|PERFORM)\b", statement):
                yield name, statement
