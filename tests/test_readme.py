"""The README's examples run as written: its Python blocks in order, in one namespace,
then its CLI examples through the installed script, against the test database in the
default schema (`snapstore`), as a reader would run them."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client import REGISTRY

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"```(python|sh)\n(.*?)```\n", re.S)
SCRIPT = Path(sys.executable).parent / "snapstore"


def blocks(kind: str) -> list[str]:
    return [code for lang, code in BLOCK.findall(README.read_text()) if lang == kind]


@pytest.fixture
def default_schema(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The schema the README uses (snapstore), made here and dropped after; a server
    where it already exists is left alone."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        taken = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'snapstore'").fetchone()
        if taken:
            pytest.skip("schema 'snapstore' already exists on this server: not touching it")
        monkeypatch.setenv("SNAPSTORE_DSN", dsn)
        try:
            yield "snapstore"
        finally:
            conn.execute("DROP SCHEMA IF EXISTS snapstore CASCADE")


def test_the_readme_examples_run_as_written(default_schema: str) -> None:
    namespace: dict[str, object] = {"__name__": "readme"}
    collectors = set(REGISTRY._collector_to_names)
    try:
        for number, code in enumerate(blocks("python"), 1):
            try:
                exec(
                    compile(code, f"README.md python block {number}", "exec", dont_inherit=True),
                    namespace,
                )
            except Exception as exc:
                raise AssertionError(f"README python block {number} failed: {exc!r}") from exc
    finally:
        for collector in set(REGISTRY._collector_to_names) - collectors:  # the metrics block's
            REGISTRY.unregister(collector)
    (cli,) = [code for code in blocks("sh") if code.startswith("snapstore ")]
    for line in cli.splitlines():
        command = shlex.split(line, comments=True)
        assert command[0] == "snapstore"
        done = subprocess.run(
            [str(SCRIPT), *command[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ.copy(),
        )
        allowed = {0, 3} if command[1] == "check" else {0}  # 3: check found a problem
        assert done.returncode in allowed, f"{line!r}: {done.stderr}"
