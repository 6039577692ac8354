"""Peer-reference benchmarks: other PostgreSQL-backed tools measured on snapstore's server.

The peers (PgQueuer, LangGraph's PostgresSaver) must never become project dependencies, so
each one is installed into its own throwaway virtualenv under ``.venv-peers/<name>`` and its
script runs there as a subprocess that prints one JSON object. Nothing here imports a peer.

    from bench.peers import run_peer
    result = run_peer("pgqueuer", dsn, seconds=10, concurrency=8, backlog=10_000)
    result = run_peer("langgraph", dsn, seconds=10, concurrency=8, mode="step")

Both calls return ``{"error": "..."}`` instead of raising when the install or the run fails
(no network, no server), so the main benchmark can report why a reference is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "PEERS",
    "PeerError",
    "PeerSpec",
    "ensure_venv",
    "peer_command",
    "run_peer",
    "venv_python",
]

HERE = Path(__file__).resolve().parent
#: ``<repo>/.venv-peers``; the lead adds ``.venv-peers/`` to .gitignore.
VENV_ROOT = HERE.parent.parent / ".venv-peers"
#: Written inside a venv once its install succeeded; a changed requirement reinstalls.
STAMP = ".peer-requirements"
INSTALL_TIMEOUT_S = 900.0
#: Setup (a 1M-row backlog, schema install) comes on top of the measured window.
RUN_SETUP_ALLOWANCE_S = 600.0


class PeerError(RuntimeError):
    """A peer could not be installed or run; the message says why."""


@dataclass(frozen=True)
class PeerSpec:
    """What a peer needs: its pinned requirements and the script that measures it."""

    requirements: tuple[str, ...]
    script: str
    summary: str


PEERS: Mapping[str, PeerSpec] = {
    "pgqueuer": PeerSpec(
        requirements=("pgqueuer==1.6.0", "psycopg[binary]>=3.2"),
        script="pgqueuer_dequeue.py",
        summary="PgQueuer dequeue throughput (QueueManager, psycopg driver) at a backlog",
    ),
    "langgraph": PeerSpec(
        requirements=("langgraph-checkpoint-postgres==3.2.0", "psycopg[binary]>=3.2"),
        script="langgraph_put.py",
        summary="LangGraph PostgresSaver put (and put_writes) throughput, one saver per thread",
    ),
}


def _as_list(requirement: str | Sequence[str]) -> list[str]:
    return [requirement] if isinstance(requirement, str) else list(requirement)


def venv_python(venv: Path) -> Path:
    """The interpreter of a venv made by :func:`ensure_venv`."""
    return venv / "bin" / "python"


def _tail(text: str | bytes | None, limit: int = 2000) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text.strip()[-limit:]


def ensure_venv(
    name: str,
    requirement: str | Sequence[str] | None = None,
    *,
    root: Path | None = None,
    python: str | None = None,
) -> Path:
    """Create (or reuse) ``<root>/<name>`` and pip-install ``requirement`` into it.

    ``requirement`` defaults to the pinned set in :data:`PEERS`. A venv whose stamp lists the
    same requirements is reused without asking the registry again. Raises :class:`PeerError`.
    """
    if requirement is None:
        if name not in PEERS:
            raise PeerError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
        requirement = PEERS[name].requirements
    reqs = _as_list(requirement)
    venv = (root or VENV_ROOT) / name
    stamp = venv / STAMP
    wanted = "\n".join(reqs) + "\n"
    py = venv_python(venv)
    if py.exists() and stamp.exists() and stamp.read_text() == wanted:
        return venv
    base = python or getattr(sys, "_base_executable", None) or sys.executable
    try:
        if not py.exists():
            venv.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [base, "-m", "venv", str(venv)],
                check=True,
                capture_output=True,
                timeout=120,
            )
        stamp.unlink(missing_ok=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *reqs],
            check=True,
            capture_output=True,
            timeout=INSTALL_TIMEOUT_S,
            env=_clean_env(),
        )
    except subprocess.CalledProcessError as exc:
        raise PeerError(f"installing {reqs} into {venv} failed: {_tail(exc.stderr)}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PeerError(f"installing {reqs} into {venv} failed: {exc}") from exc
    stamp.write_text(wanted)
    return venv


def _clean_env() -> dict[str, str]:
    """The caller's environment minus what would leak the project venv into the peer's."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _option_args(options: Mapping[str, Any]) -> list[str]:
    """``backlog=10_000`` -> ``--backlog 10000``; booleans -> ``--flag`` / ``--no-flag``."""
    args: list[str] = []
    for key, value in options.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


def peer_command(name: str, venv: Path, dsn: str, **options: Any) -> list[str]:
    """The command line that runs peer ``name``'s script with its venv's interpreter."""
    spec = PEERS[name]
    return [str(venv_python(venv)), str(HERE / spec.script), "--dsn", dsn, *_option_args(options)]


def run_peer(
    name: str,
    dsn: str,
    *,
    timeout: float | None = None,
    venv_root: Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Install peer ``name`` if needed, run its script against ``dsn``, return its JSON.

    ``options`` become the script's flags (``seconds``, ``concurrency``, ``backlog``, ...).
    Never raises for an install or run failure: the result is then ``{"error": ...}``.
    """
    if name not in PEERS:
        return {"peer": name, "error": f"unknown peer {name!r}; known: {', '.join(PEERS)}"}
    spec = PEERS[name]
    base: dict[str, Any] = {"peer": name, "requirements": list(spec.requirements)}
    try:
        venv = ensure_venv(name, spec.requirements, root=venv_root)
    except PeerError as exc:
        return {**base, "error": str(exc)}
    seconds = float(options.get("seconds", 10)) * int(options.get("windows", 1))
    limit = timeout if timeout is not None else RUN_SETUP_ALLOWANCE_S + 3 * seconds
    cmd = peer_command(name, venv, dsn, **options)
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=limit, env=_clean_env(), check=False
        )
    except subprocess.TimeoutExpired as exc:
        return {**base, "error": f"timed out after {limit:.0f} s: {_tail(exc.stderr)}"}
    except OSError as exc:
        return {**base, "error": f"could not start {cmd[0]}: {exc}"}
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if not isinstance(result, dict):
        why = f"exit {proc.returncode}, no JSON on stdout"
        return {**base, "error": f"{why}: {_tail(proc.stderr)}"}
    if proc.returncode != 0 and "error" not in result:
        result["error"] = f"exit {proc.returncode}: {_tail(proc.stderr)}"
    return {**base, **result}
