"""``python -m bench.peers NAME --dsn DSN [script flags]``: install the peer, run it, print JSON.

Flags after the peer name other than ``--dsn`` and ``--install-only`` go to the peer's script as
they are (see ``<venv python> bench/peers/<script> --help``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from bench.peers import PEERS, PeerError, ensure_venv, peer_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description="Peer-reference benchmarks run from throwaway venvs in .venv-peers/.",
        epilog="; ".join(f"{name}: {spec.summary}" for name, spec in PEERS.items()),
    )
    parser.add_argument("peer", choices=sorted(PEERS))
    parser.add_argument("--dsn", default=os.environ.get("SNAPSTORE_DSN"))
    parser.add_argument("--install-only", action="store_true", help="create the venv, then stop")
    args, rest = parser.parse_known_args(argv)
    try:
        venv = ensure_venv(args.peer)
    except PeerError as exc:
        print(json.dumps({"peer": args.peer, "error": str(exc)}))
        return 1
    if args.install_only:
        print(json.dumps({"peer": args.peer, "venv": str(venv)}))
        return 0
    if not args.dsn:
        parser.error("--dsn (or SNAPSTORE_DSN) is required")
    # Stream the script's progress (stderr) and JSON (stdout) straight through.
    return subprocess.call([*peer_command(args.peer, venv, args.dsn), *rest])


if __name__ == "__main__":
    sys.exit(main())
