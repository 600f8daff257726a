"""A progress bar on stderr for long runs (many sentences, slow backends), without a dependency.

    [##########..........]  40/80 sentences  12 s, ~12 s left

It redraws one line with carriage returns, at most a few times a second, and ends it with a
newline when the work is done (or when :meth:`ProgressBar.close` is called early).
"""

from __future__ import annotations

import sys
import time

__all__ = ["ProgressBar", "stderr_is_terminal"]

#: Characters of the bar itself.
BAR_WIDTH = 20
#: Least time between two redraws: a fast run should not spend its time writing to stderr.
REDRAW_S = 0.2


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):      # replaced or closed stream
        return False


class ProgressBar:
    """``done`` of ``total`` items (``unit`` names them) on stderr.

    ``enabled``: True draws it, False not, None draws it only when stderr is a terminal."""

    def __init__(self, total: int, unit: str, enabled: bool | None = None):
        self.total, self.unit = total, unit
        self.enabled = stderr_is_terminal() if enabled is None else bool(enabled)
        self.enabled = self.enabled and total > 0
        self.done = 0
        self.t0 = time.monotonic()
        self._drawn = None           # time of the last redraw
        self._open = False           # a line without its newline yet

    def line(self, now: float) -> str:
        filled = BAR_WIDTH * self.done // self.total
        elapsed = now - self.t0
        text = (f"  [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
                f"{self.done:>{len(str(self.total))}}/{self.total} {self.unit}  {elapsed:.0f} s")
        if 0 < self.done < self.total:
            text += f", ~{elapsed * (self.total - self.done) / self.done:.0f} s left"
        return text

    def update(self, done: int) -> None:
        self.done = done
        if not self.enabled:
            return
        now = time.monotonic()
        last = done >= self.total
        if not last and self._drawn is not None and now - self._drawn < REDRAW_S:
            return
        self._drawn = now
        sys.stderr.write("\r" + self.line(now) + ("\n" if last else ""))
        sys.stderr.flush()
        self._open = not last

    def close(self) -> None:
        """End a line left part-way (a run that stopped early)."""
        if self._open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._open = False
