"""A one-line progress bar for long transfers (dump, pull, migrate).

Drawn on a terminal only: a pipe or a file gets nothing, so scripts and logs
stay clean. Redrawn at most ten times a second, so that a caller may report
every block it moves.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

REDRAW_SECONDS = 0.1
BAR_WIDTH = 24


def terminal_stream(quiet: bool = False) -> TextIO | None:
    """stderr if it is a terminal and the user did not ask for --quiet."""
    if quiet:
        return None
    try:
        return sys.stderr if sys.stderr.isatty() else None
    except ValueError:      # stderr closed
        return None


class Progress:
    """Bytes done out of a total, with the rate; silent when ``stream`` is None."""

    def __init__(self, label: str, total: int, stream: TextIO | None) -> None:
        self.label = label
        self.total = max(total, 0)
        self.stream = stream
        self.done_bytes = 0
        self.started = time.monotonic()
        self._drawn_at = 0.0
        self._finished = False

    def add(self, nbytes: int) -> None:
        self.done_bytes += nbytes
        if self.stream is None:
            return
        now = time.monotonic()
        if now - self._drawn_at >= REDRAW_SECONDS:
            self._drawn_at = now
            self._draw(now)

    def _rate(self, now: float) -> str:
        elapsed = now - self.started
        # Too early to tell: the first chunk alone gives a meaningless rate.
        if elapsed < 0.2 and not self._finished:
            return "     - MB/s"
        return f"{self.done_bytes / max(elapsed, 1e-6) / 1e6:7.1f} MB/s"

    def line(self, now: float) -> str:
        """The bar as it reads at ``now`` (without the carriage return)."""
        rate = self._rate(now)
        done_mb, total_mb = self.done_bytes / 1e6, self.total / 1e6
        if self.total:
            frac = min(self.done_bytes / self.total, 1.0)
            filled = int(frac * BAR_WIDTH)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            return (f"{self.label:<10} [{bar}] {done_mb:9.1f}/{total_mb:.1f} MB "
                    f"{frac * 100:3.0f}%  {rate}")
        return f"{self.label:<10} {done_mb:9.1f} MB  {rate}"

    def _draw(self, now: float) -> None:
        assert self.stream is not None
        # \r and clear to the end of the line: the bar is redrawn in place.
        self.stream.write("\r" + self.line(now) + "\x1b[K")
        self.stream.flush()

    def finish(self) -> None:
        """Draw the final state and end the line (once)."""
        if self.stream is None or self._finished:
            return
        self._finished = True
        self._draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        # On failure too: the error message must start on a line of its own.
        self.finish()
