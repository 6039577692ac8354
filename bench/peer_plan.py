"""The peer references of a `make bench` run: PgQueuer dequeue and LangGraph put.

Both run from throwaway venvs (`bench.peers`), on the run's server, in schemas named after
the run's prefix (``peer_<prefix>pgq``, ``peer_<prefix>lg``), with the shapes of the
snapstore figures they are held against:

- PgQueuer: ``WORKERS`` QueueManagers, batches of ``LIMIT`` (the dispatch workload's worker
  count and ``find_available_tasks`` limit), at the dispatch workload's backlogs (its 1k-row
  reference and its big backlog, 1M at the default size), refilled as consumed.
- LangGraph: one PostgresSaver per thread at the run's ``--concurrency``, on the issue's
  checkpoint shape (`bench.scale_shape`): a thread_id is ``STEPS`` steps over
  ``CHANNELS`` task outputs of ~``VALUE_BYTES`` B, each step one new output. Both modes
  run: ``put`` (the checkpoint alone) and ``step`` (``put_writes`` then ``put``,
  LangGraph's loop with one task per step). The verdict uses ``put``: with one task per
  step the next checkpoint already carries the task's output, so a put is the commit that
  holds what one snapstore save holds (new task output + position); ``step`` writes that
  output twice, which would flatter snapstore. snapstore is measured on the same shape
  right before and right after the two LangGraph runs (`run_langgraph`), so the figures
  compared are seconds apart, not minutes.

Each peer measures ``windows`` consecutive windows of ``seconds`` after its warm-up and
reports the median rate (and every window's), as snapstore's figures are medians too.

Every entry is the peer's JSON, or ``{"error": ...}`` with the reason (install failed, no
network, the run crashed); never an exception. Install time is measured separately
(``install_s``, 0 when the venv was reused) so it can be left out of the run's budget.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from bench import peers, scale_dispatch, scale_shape

# The flags of bench/peers/langgraph_put.py: the shape snapstore is measured on too.
LANGGRAPH_SHAPE: dict[str, Any] = {
    "channels": scale_shape.CHANNELS,
    "value_bytes": scale_shape.VALUE_BYTES,
    "steps": scale_shape.STEPS,
}
PEER_ENTRIES = ("pgqueuer_small", "pgqueuer_backlog", "langgraph_put", "langgraph_step")


def peer_schema(prefix: str, short: str) -> str:
    """A schema name the peer scripts accept (``peer_[a-z0-9_]+``), unique per prefix."""
    return "peer_" + re.sub(r"[^a-z0-9_]", "_", prefix.lower()) + short


class PeerRunner:
    """Installs each peer once (timed), then runs its measurements."""

    def __init__(self, dsn: str, prefix: str, seconds: float, windows: int = 1) -> None:
        self.dsn, self.prefix, self.seconds, self.windows = dsn, prefix, seconds, windows
        self.installs: dict[str, dict[str, Any]] = {}

    def install(self, name: str) -> dict[str, Any]:
        if name not in self.installs:
            began = time.perf_counter()
            try:
                venv = peers.ensure_venv(name)
                found: dict[str, Any] = {"venv": str(venv)}
            except peers.PeerError as exc:
                found = {"error": str(exc)}
            found["install_s"] = round(time.perf_counter() - began, 1)
            self.installs[name] = found
        return self.installs[name]

    def run(self, name: str, **options: Any) -> dict[str, Any]:
        installed = self.install(name)
        if "error" in installed:
            return {"peer": name, "error": installed["error"], "install_s": installed["install_s"]}
        began = time.perf_counter()
        found = peers.run_peer(
            name, self.dsn, seconds=self.seconds, windows=self.windows, **options
        )
        found["wall_s"] = round(time.perf_counter() - began, 1)
        found["install_s"] = installed["install_s"]
        return found

    def pgqueuer(self, backlog: int) -> dict[str, Any]:
        return self.run(
            "pgqueuer",
            concurrency=scale_dispatch.WORKERS,
            backlog=backlog,
            batch_size=scale_dispatch.LIMIT,
            schema=peer_schema(self.prefix, "pgq"),
        )

    def langgraph(self, mode: str, concurrency: int) -> dict[str, Any]:
        return self.run(
            "langgraph",
            concurrency=concurrency,
            mode=mode,
            schema=peer_schema(self.prefix, "lg"),
            **LANGGRAPH_SHAPE,
        )

    def snapstore_shape(self, label: str, concurrency: int, warmup: float) -> dict[str, Any]:
        """snapstore on LangGraph's shape, in windows like the peer's (never raises)."""
        return scale_shape.measure(
            self.dsn,
            self.prefix,
            label,
            threads=concurrency,
            windows=self.windows,
            seconds=self.seconds,
            warmup=warmup,
        )


def pgqueuer_backlogs(scale_size: str) -> dict[str, int]:
    """The backlogs the dispatch workload measures at: its small reference and its big one."""
    return {
        "pgqueuer_small": scale_dispatch.REFERENCE_DUE,
        "pgqueuer_backlog": scale_dispatch.BACKLOG[scale_size],
    }


def run_pgqueuer(
    runner: PeerRunner, scale_size: str, phase: Callable[[str], Any]
) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for key, backlog in pgqueuer_backlogs(scale_size).items():
        with phase(f"peer {key} ({backlog:,})"):
            found[key] = runner.pgqueuer(backlog)
    return found


def run_langgraph(
    runner: PeerRunner, concurrency: int, warmup: float, phase: Callable[[str], Any]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """LangGraph's put and step runs between two halves of snapstore on the same shape:
    (the peer runs, snapstore's pooled figure). Pooling a half from each side means a
    change in the machine's load during the peer runs falls on both stores."""
    found: dict[str, dict[str, Any]] = {}
    halves: dict[str, dict[str, Any]] = {}
    with phase("snapstore on the LangGraph shape, before"):
        halves["before"] = runner.snapstore_shape("before", concurrency, warmup)
    for mode in ("put", "step"):
        with phase(f"peer langgraph_{mode}"):
            found[f"langgraph_{mode}"] = runner.langgraph(mode, concurrency)
    with phase("snapstore on the LangGraph shape, after"):
        halves["after"] = runner.snapstore_shape("after", concurrency, warmup)
    return found, scale_shape.pooled(halves)
