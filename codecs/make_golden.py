"""Write the golden vectors in codecs/golden/ from tests/golden_cases.py.

Run by hand from the repository root, only after adding a case or a codec::

    .venv/bin/python codecs/make_golden.py          # writes missing files only
    .venv/bin/python codecs/make_golden.py --force  # also overwrites differing ones

An existing file whose bytes differ is refused without ``--force`` (exit 1):
a golden blob that changes is a wire-format change, and data already stored
would no longer match it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, so the repository root (holding the tests package) is not on sys.path.
sys.path.insert(0, str(ROOT))

from tests.golden_cases import golden_files  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--force", action="store_true", help="overwrite existing golden files (format change!)"
    )
    args = parser.parse_args(argv)
    refused = 0
    for path, blob in sorted(golden_files().items()):
        name = path.relative_to(ROOT)
        if path.exists():
            if path.read_bytes() == blob:
                continue
            if not args.force:
                print(f"refusing to overwrite {name}: it differs (format drift?)", file=sys.stderr)
                refused += 1
                continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        print(f"wrote {name} ({len(blob)} bytes)")
    return 1 if refused else 0


if __name__ == "__main__":
    raise SystemExit(main())
