"""Logging for the daemon: one record per line on stderr, text or JSON; rate-limited facts.

``text`` is ``asctime level logger: message``. Under systemd's journal (``JOURNAL_STREAM``
in the environment) the time is left out, since the journal stamps every line itself
and two timestamps per line only disagree. ``json`` is one object per line for log
shippers: ``ts`` (ISO 8601 UTC, milliseconds; kept under the journal too, because it is
machine-read), ``level``, ``logger``, ``msg``, then the structured fields a caller passes
as ``extra={"fields": {...}}`` (call events pass ``call_id``, ``direction``, ``edge``,
``gateway``, ``code``, ``answer_s``), and ``exc`` with the traceback when there is one.

Peers' bytes reach log lines (a Call-ID, a peer's text in a drop reason), and RFC 3261
grammar aside, a Call-ID can carry NUL or ESC: ``text`` escapes C0 control characters and
DEL in the message as ``\\xNN`` (no terminal escape sequence, no NUL, no forged second
line reaches the log); ``json`` gets the same from ``json.dumps``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any, Literal, get_args

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "LogFormat",
    "RateLimitedLogger",
    "TextFormatter",
    "is_journal",
    "make_formatter",
    "setup_logging",
]

#: The values of ``[log] format`` and ``sipedge run --log-format`` (config reads them here).
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_TEXT_UNDER_JOURNAL = "%(levelname)s %(name)s: %(message)s"


#: C0 controls and DEL → ``\xNN`` (str.translate table).
_ESCAPE_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


class TextFormatter(logging.Formatter):
    """``logging.Formatter`` whose message part never carries a control character.

    Only the formatted message is escaped: a traceback appended after it keeps its lines.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(_ESCAPE_CONTROLS)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``msg``, fields, ``exc``.

    The structured fields of ``extra={"fields": {...}}`` are merged at the top level; they
    never replace the four keys every line has. Values JSON cannot encode are written as
    their ``str()`` (an ``Endpoint`` as ``udp:127.0.0.1:5060``).
    """

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, Any] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                out.setdefault(str(key), value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # json.dumps escapes newlines inside strings, so a record stays one line.
        return json.dumps(out, default=str)


def is_journal(environ: Mapping[str, str], stream: IO[str] | None) -> bool:
    """True when ``stream`` is the journal stream systemd named in ``JOURNAL_STREAM``.

    systemd.exec(5): ``JOURNAL_STREAM`` is ``device:inode`` of the stream connected to the
    journal; a child whose stderr was redirected elsewhere inherits the variable, so it
    only counts when ``stream`` is that very file. A stream without a descriptor (tests'
    StringIO) counts when the variable is set.
    """
    value = environ.get("JOURNAL_STREAM")
    if not value:
        return False
    if stream is None:
        return True
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return True
    dev, _, ino = value.partition(":")
    return dev == str(info.st_dev) and ino == str(info.st_ino)


def make_formatter(fmt: str, environ: Mapping[str, str] = os.environ,
                   stream: IO[str] | None = None) -> logging.Formatter:
    """The formatter for ``fmt``, ``text`` or ``json``.

    Args:
        fmt: one of :data:`LOG_FORMATS`.
        environ: where to look for ``JOURNAL_STREAM`` (set by systemd when stderr goes to
            the journal); ``text`` then omits the time.
        stream: the stream the records go to (checked against ``JOURNAL_STREAM``).

    Returns:
        A ``logging.Formatter``.

    Raises:
        ValueError: ``fmt`` is not a known format.
    """
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        journal = is_journal(environ, stream)
        return TextFormatter(_TEXT_UNDER_JOURNAL if journal else _TEXT)
    raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(LOG_FORMATS)}")


class _Tagged(logging.Filter):
    """Prefix each record's logger name with a worker's tag (``w1/sipedge``)."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.tag):
            record.name = f"{self.tag}/{record.name}"
        return True


#: The worker tag of this process, once set (kept when a reload rebuilds the handler).
_tag: list[str] = []


def setup_logging(level: str, fmt: str = "text", tag: str | None = None) -> None:
    """Send every record at ``level`` or above to stderr, one per line, as ``fmt``.

    Args:
        level: ``debug``, ``info``, ``warning``, ``error`` or ``critical``.
        fmt: ``text`` or ``json`` (see the module docstring).
        tag: a worker's name (``w0``, ``w1``…), put before every logger name so the
            lines of several workers sharing one journal tell which one wrote them; once
            given, later calls keep it.

    Raises:
        ValueError: unknown ``level`` or ``fmt``.
    """
    if tag is not None:
        _tag[:] = [tag]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(fmt, os.environ, sys.stderr))
    if _tag:
        handler.addFilter(_Tagged(_tag[0]))
    root = logging.getLogger()
    root.setLevel(level.upper())
    root.handlers[:] = [handler]


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
