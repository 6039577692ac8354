"""Generate the sync modules from their async sources: ``make sync`` writes them,
``make lint`` (``--check``) fails when one is stale.

The async code is the one source, so an operation is written once. The transform
works on tokens, not on an AST, so comments and layout survive; ruff then formats
the result and sorts its imports. What it does, and all it does:

* drops ``await`` and the ``async`` of ``async def`` / ``async with`` / ``async for``;
* renames names by `NAMES` (``AsyncConnectionPool`` -> ``ConnectionPool``...), in code
  and, word by word, in strings and comments, where `TEXTS` also rewords the few
  phrases that name the flavour;
* a line ending in ``# sync: <code>`` becomes ``<code>``; one ending in
  ``# async-only`` is dropped. They cover the few lines that truly differ.

Anything else that cannot run both ways (events vs threads) lives in hand-written
pairs (`snapstore.group_commit`, `snapstore.wakeup.waiting`) that the sources name
by their async spelling.
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent

SOURCES: Final = {
    "snapstore/runner_async.py": "snapstore/runner.py",
    "snapstore/migrate_async.py": "snapstore/migrate.py",
    "snapstore/backend_async.py": "snapstore/backend.py",
    "snapstore/wakeup/listener_async.py": "snapstore/wakeup/listener.py",
    "snapstore/memory_async.py": "snapstore/memory.py",
}
"""Async source -> generated sync module, relative to the checkout."""

NAMES: Final = {
    "AsyncConnection": "Connection",
    "AsyncConnectionPool": "ConnectionPool",
    "AsyncCursor": "Cursor",
    "AsyncEvent": "Event",
    "AsyncGroupCommitter": "GroupCommitter",
    "AsyncMemoryBackend": "MemoryBackend",
    "AsyncMailbox": "Mailbox",
    "AsyncPostgresBackend": "PostgresBackend",
    "AsyncRawCursor": "RawCursor",
    "AsyncRunner": "Runner",
    "AsyncWakeupListener": "WakeupListener",
    "AsyncWorker": "Worker",
    "ASYNC_STOP_CHECK_INTERVAL": "STOP_CHECK_INTERVAL",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "aclosing": "closing",
    "aresolve": "resolve",
    "asleep": "sleep",
    "backend_async": "backend",
    "listener_async": "listener",
    "memory_async": "memory",
    "migrate_async": "migrate",
    "runner_async": "runner",
}

TEXTS: Final = {
    "for asyncio": "for threads",
    "a background task": "a background thread",
    "Share one per event loop.": "Thread-safe: share one per process.",
}
"""Phrases of docstrings and comments that say which flavour they describe."""

HEADER: Final = (
    "# Generated from {source} by snapstore/_async_to_sync.py: do not edit.\n"
    "# Change the async source, then run `make sync`.\n"
)
_SYNC_LINE: Final = re.compile(r"#\s*sync:\s?(?P<code>.*)$")
_ASYNC_ONLY: Final = re.compile(r"#\s*async-only\s*$")
_WORDS: Final = re.compile(r"\b(" + "|".join(sorted(NAMES, key=len, reverse=True)) + r")\b")
_TEXT_KEYWORDS: Final = re.compile(r"\b(?:await|async) (?=\S)")
_DROPPED_BEFORE: Final = frozenset({"def", "with", "for"})


# Text kinds whose words are renamed; FSTRING_MIDDLE is the literal text of an
# f-string on Python 3.12+ (one STRING token before), so both read the same.
_TEXT_TOKENS: Final = frozenset(
    {tokenize.STRING, tokenize.COMMENT, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
)
_ASYNC_LEFTOVER: Final = re.compile(r"^(?:asyncio|Async[A-Z]\w*|anext|aiter|__a\w+__)$")


def _tokens(text: str) -> list[tokenize.TokenInfo]:
    return list(tokenize.generate_tokens(io.StringIO(text).readline))


def _lines(text: str) -> list[str]:
    """Physical lines as tokenize counts them (``str.splitlines`` also breaks on
    characters such as U+2028 that may sit inside a string)."""
    return io.StringIO(text).readlines()


def _marked_lines(text: str) -> str:
    """Apply the ``# sync:`` and ``# async-only`` markers, line by line."""
    lines = _lines(text)
    dropped: set[int] = set()
    for token in _tokens(text):
        if token.type != tokenize.COMMENT:
            continue
        row = token.start[0] - 1
        line = lines[row]
        if _ASYNC_ONLY.search(token.string):
            dropped.add(row)
        elif found := _SYNC_LINE.search(token.string):
            indent = line[: len(line) - len(line.lstrip())]
            lines[row] = f"{indent}{found['code']}\n" if found["code"] else ""
    return "".join(line for i, line in enumerate(lines) if i not in dropped)


def _in_text(text: str) -> str:
    """Words of strings and comments: the same renames, no await/async, `TEXTS`."""
    for phrase, replacement in TEXTS.items():
        text = text.replace(phrase, replacement)
    return _TEXT_KEYWORDS.sub("", _WORDS.sub(lambda m: NAMES[m[1]], text))


def _rewritten(text: str) -> str:
    """Token edits: keywords dropped, names renamed (comments and layout kept)."""
    lines = _lines(text)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    tokens = _tokens(text)
    out: list[str] = []
    position = 0
    for i, token in enumerate(tokens):
        start = offsets[token.start[0] - 1] + token.start[1]
        end = offsets[token.end[0] - 1] + token.end[1]
        if start < position:
            continue
        out.append(text[position:start])
        position = end
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        if token.type == tokenize.NAME and (
            token.string == "await"
            or (token.string == "async" and following and following.string in _DROPPED_BEFORE)
        ):
            if following is not None:  # the space after the keyword goes too
                position = offsets[following.start[0] - 1] + following.start[1]
        elif token.type == tokenize.NAME:
            out.append(NAMES.get(token.string, token.string))
        elif token.type in _TEXT_TOKENS:
            out.append(_in_text(token.string))
        else:
            out.append(token.string)
    out.append(text[position:])
    return "".join(out)


def _ruff(args: list[str], text: str, filename: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", filename, "-"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if done.returncode != 0 and not done.stdout:
        raise SystemExit(f"ruff failed on generated {filename}:\n{done.stderr}")
    return done.stdout


def _check_sync(code: str, source: str) -> None:
    """Refuse output that still names an async construct: it would build coroutines
    nobody awaits. Map the name in `NAMES` or move the code into a hand-written pair."""
    left = {t.string for t in _tokens(code) if t.type == tokenize.NAME}
    found = sorted(name for name in left if _ASYNC_LEFTOVER.match(name))
    if found:
        raise SystemExit(f"{source}: no sync spelling for {', '.join(found)}")


def generate(source: str, target: str) -> str:
    """The sync module for ``source``, exactly as it must be on disk."""
    text = (ROOT / source).read_text(encoding="utf-8")
    code = HEADER.format(source=source) + _rewritten(_marked_lines(text))
    _check_sync(code, source)
    code = _ruff(["check", "--fix-only", "--select", "I,F401", "--quiet"], code, target)
    return _ruff(["format", "--quiet"], code, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for source, target in SOURCES.items():
        wanted = generate(source, target)
        path = ROOT / target
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == wanted:
            continue
        if args.check:
            stale.append(target)
        else:
            path.write_text(wanted, encoding="utf-8")
            print(f"wrote {target}")
    if stale:
        print(f"stale generated files (run `make sync`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
