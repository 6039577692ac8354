"""What both peer scripts need, imported by them from the repository (stdlib only: they
run under a throwaway venv's python, which has neither snapstore nor the bench's
dependencies)."""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Callable


def logger(peer: str) -> Callable[[str], None]:
    """A progress line printer for ``peer``, on stderr (stdout carries the JSON)."""

    def log(msg: str) -> None:
        print(f"[{peer}] {msg}", file=sys.stderr, flush=True)

    return log


def require_loopback(host: object) -> None:
    """Refuse any server that is not on this machine: the bench sends real load.
    ``host``: the conninfo's host (psycopg's ``conninfo_to_dict(dsn).get("host")``)."""
    hosts = str(host or os.environ.get("PGHOST") or "")
    for name in filter(None, hosts.split(",")):
        if name.startswith("/") or name == "localhost":
            continue
        try:
            if ipaddress.ip_address(name).is_loopback:
                continue
        except ValueError:
            pass
        raise SystemExit(f"refusing non-loopback host {name!r}")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)
