"""A dependency-free progress line on stderr.

On a terminal it redraws one line with ``\\r``; when stderr is a file or a
pipe (CI logs, the smoke test) it prints one line per phase instead, so logs
stay readable.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 24


class Progress:
    """Tracks phases of a run: ``with progress.phase(label, seconds, status): ...``."""

    def __init__(self, total_phases: int, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total = max(total_phases, 1)
        self.done = 0
        self.interactive = self.stream.isatty()
        self._last = 0

    def phase(self, label: str, seconds: float, status: Callable[[], str]) -> _Phase:
        return _Phase(self, label, seconds, status)

    def _line(self, label: str, fraction: float, status: str) -> str:
        filled = int(BAR_WIDTH * min(max(fraction, 0.0), 1.0))
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        shown = min(max(fraction, 0.0), 1.0)
        return f"[{self.done + 1}/{self.total}] {label:<28} [{bar}] {shown:4.0%} {status}"

    def write(self, text: str, *, final: bool) -> None:
        if self.interactive:
            # Pad over the previous line instead of using terminal escapes.
            padded = text.ljust(self._last)
            self._last = 0 if final else len(text)
            self.stream.write("\r" + padded + ("\n" if final else ""))
        elif final:
            self.stream.write(text + "\n")
        self.stream.flush()


class _Phase:
    """One timed phase; a background thread redraws the line while it runs."""

    def __init__(
        self, owner: Progress, label: str, seconds: float, status: Callable[[], str]
    ) -> None:
        self.owner = owner
        self.label = label
        self.seconds = max(seconds, 1e-6)
        self.status = status
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-progress", daemon=True)
        self._start = 0.0

    def _fraction(self) -> float:
        return (time.monotonic() - self._start) / self.seconds

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            self.owner.write(
                self.owner._line(self.label, self._fraction(), self.status()), final=False
            )

    def __enter__(self) -> _Phase:
        self._start = time.monotonic()
        if self.owner.interactive:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        elapsed = time.monotonic() - self._start
        line = self.owner._line(self.label, 1.0, f"{self.status()} ({elapsed:.1f}s)")
        self.owner.write(line, final=True)
        self.owner.done += 1
