"""The sync twins are what the generator makes of their async sources, and expose the
same API: same public names, same signatures (async spelling mapped to sync), every
public method documented in one convention."""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest

from snapstore import AsyncPostgresBackend, AsyncWakeupListener, PostgresBackend, WakeupListener
from snapstore._async_to_sync import NAMES, ROOT, SOURCES, _check_sync, _marked_lines, generate

PAIRS = [(AsyncPostgresBackend, PostgresBackend), (AsyncWakeupListener, WakeupListener)]
DUNDERS = {"__aenter__": "__enter__", "__aexit__": "__exit__"}
_WORD = re.compile(r"\b(" + "|".join(sorted(NAMES, key=len, reverse=True)) + r")\b")


def public(cls: type) -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(cls).items()
        if not name.startswith("_") or name in DUNDERS.values() or name in DUNDERS
    }


def as_sync(annotation: object) -> str:
    """An annotation of the async source as the generated twin spells it."""
    return _WORD.sub(lambda m: NAMES[m[1]], str(annotation))


def function(value: Any) -> Any:
    if isinstance(value, classmethod | staticmethod):
        return value.__func__
    if isinstance(value, property):
        return value.fget
    return value


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_generated_modules_are_current(source: str) -> None:
    on_disk = (ROOT / SOURCES[source]).read_text(encoding="utf-8")
    assert on_disk == generate(source, SOURCES[source]), "run `make sync`"


@pytest.mark.parametrize(("async_cls", "sync_cls"), PAIRS, ids=lambda c: c.__name__)
def test_twins_expose_the_same_names_with_matching_signatures(
    async_cls: type, sync_cls: type
) -> None:
    async_api, sync_api = public(async_cls), public(sync_cls)
    assert {DUNDERS.get(n, n) for n in async_api} == set(sync_api)
    for name, value in async_api.items():
        twin = sync_api[DUNDERS.get(name, name)]
        assert type(value) is type(twin), name
        if isinstance(value, property):
            mine_get, their_get = function(value), function(twin)
            assert as_sync(inspect.signature(mine_get).return_annotation) == str(
                inspect.signature(their_get).return_annotation
            ), name
            continue
        mine, theirs = inspect.signature(function(value)), inspect.signature(function(twin))
        assert not inspect.iscoroutinefunction(function(twin)), name
        assert list(mine.parameters) == list(theirs.parameters), name
        for param, other in zip(mine.parameters.values(), theirs.parameters.values(), strict=True):
            assert param.kind == other.kind, (name, param.name)
            assert param.default == other.default, (name, param.name)
            assert as_sync(param.annotation) == str(other.annotation), (name, param.name)
        assert as_sync(mine.return_annotation) == str(theirs.return_annotation), name


def summary(doc: str) -> str:
    return inspect.cleandoc(doc).split("\n\n")[0]


@pytest.mark.parametrize("cls", [c for pair in PAIRS for c in pair], ids=lambda c: c.__name__)
def test_every_public_method_has_a_docstring_in_one_convention(cls: type) -> None:
    """A summary sentence of its own (not a pointer such as "See ..."), ending in a
    full stop, then details if any."""
    for name, value in public(cls).items():
        if name in DUNDERS or name in DUNDERS.values():
            continue
        doc = function(value).__doc__
        assert doc, f"{cls.__name__}.{name} has no docstring"
        first = summary(doc)
        assert not first.startswith("See "), f"{cls.__name__}.{name}: {first!r}"
        assert first[0].isupper() or first[0] in "`", f"{cls.__name__}.{name}: {first!r}"
        assert first.endswith((".", ".)")), f"{cls.__name__}.{name}: {first!r}"
        assert "(async)" not in doc, f"{cls.__name__}.{name}"
        assert "(sync)" not in doc, f"{cls.__name__}.{name}"


def test_markers_apply_to_the_line_tokenize_counts() -> None:
    """A string holding U+2028 (a line break for str.splitlines, not for Python) must
    not shift which line a marker drops."""
    text = 'a = "p\u2028q"\nb = 1\nc = 2  # async-only\n'
    assert _marked_lines(text) == 'a = "p\u2028q"\nb = 1\n'
    assert _marked_lines("x = await f()  # sync: x = g()\n") == "x = g()\n"


def test_output_that_still_names_an_async_construct_is_refused() -> None:
    with pytest.raises(SystemExit, match="asyncio"):
        _check_sync("import asyncio\nasyncio.sleep(1)\n", "src.py")
    _check_sync('"""asyncio in a docstring is prose."""\nx = 1\n', "src.py")
