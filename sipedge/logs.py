"""Logging for the daemon: stderr lines for journald, rate-limited operator facts."""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["RateLimitedLogger", "setup_logging"]


def setup_logging(level: str) -> None:
    """Plain single-line records on stderr (systemd's journal adds time and unit)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RateLimitedLogger:
    """At most ``burst`` lines per ``key`` per ``period_s``; counts what it suppressed.

    A flood of bad packets costs counters, not a flood of log lines (house rule 6).
    """

    def __init__(self, logger: logging.Logger, period_s: float = 10.0, burst: int = 5) -> None:
        self.logger = logger
        self.period_s = period_s
        self.burst = burst
        self._windows: dict[str, tuple[float, int]] = {}
        self.suppressed = 0

    def log(self, level: int, key: str, msg: str, *args: object,
            exc_info: bool = False) -> None:
        """Log ``msg`` unless ``key`` already used its burst in this period."""
        if not self.logger.isEnabledFor(level):
            return
        now = time.monotonic()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self.period_s:
            if count > self.burst:
                self.logger.log(level, "%s: %d similar lines suppressed", key, count - self.burst)
            start, count = now, 0
        count += 1
        self._windows[key] = (start, count)
        if count <= self.burst:
            self.logger.log(level, msg, *args, exc_info=exc_info)
        else:
            self.suppressed += 1
        if len(self._windows) > 10000:
            self._windows.clear()
