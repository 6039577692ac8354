"""Argument types shared by the bench's two command lines (``python -m bench`` and
``python -m bench.scale``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable


def choices(allowed: Iterable[str]) -> Callable[[str], tuple[str, ...]]:
    """A comma-separated list of names from ``allowed`` (at least one)."""
    known = tuple(allowed)

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(x.strip() for x in text.split(",") if x.strip())
        unknown = [x for x in items if x not in known]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(known)} (got {text!r})")
        return items

    return parse
