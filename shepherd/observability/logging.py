"""Log setup: human-readable lines by default, one JSON object per line with --log-json."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from typing import Any

import orjson

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

# C0 and C1 controls, DEL, and the Unicode line/paragraph separators: anything a terminal or a log
# viewer may take as a line break or an escape sequence.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape, so one record stays one line."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                                               else f"\\u{ord(m.group()):04x}"), text)


class _PerSecond:
    """A second's date and time as `render(second)` writes it, kept until a record of another second
    (an access line per request made strftime a visible cost). One tuple, replaced whole, so that two
    threads formatting at once (handlers share a formatter) never pair one second with another's text."""

    def __init__(self, render: Callable[[int], str]) -> None:
        self._render = render
        self._cached: tuple[int, str] = (-1, "")

    def __call__(self, second: int) -> str:
        cached = self._cached
        if cached[0] != second:
            cached = self._cached = (second, self._render(second))
        return cached[1]


class TextFormatter(logging.Formatter):
    """The human-readable line. Paths, model names and other client-supplied values reach log
    messages, so the message is escaped: a CR/LF in them cannot forge a second line. (Tracebacks,
    which the gateway itself writes, keep their lines.)"""

    def __init__(self, fmt: str | None = None) -> None:
        super().__init__(fmt)
        self._second = _PerSecond(lambda second: time.strftime(self.default_time_format, self.converter(second)))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """logging's own `2026-12-04 19:53:29,697`, the date and time formatted once per second."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return f"{self._second(int(record.created))},{int(record.msecs):03d}"  # logging's default_msec_format

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        message = record.message
        record.message = escape_controls(message)
        try:
            return super().formatMessage(record)
        finally:
            record.message = message


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = _PerSecond(lambda second: datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))

    def timestamp(self, created: float) -> str:
        """`datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")`, with the date and
        time formatted once per second; the fraction is rounded to microseconds first, as datetime does."""
        second = int(created)
        micros = round((created - second) * 1e6)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        return f"{self._second(second)}.{micros // 1000:03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": self.timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():  # fields passed with `extra=`
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup_logging(level: str = "info", json: bool = False, log_dir: str | None = None) -> None:
    """Log to stderr, and with `log_dir` also to `<log_dir>/shepherd.log` (rotated at 100 MiB, 5 kept)."""
    formatter: logging.Formatter = JsonFormatter() if json else TextFormatter(
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        handlers.append(RotatingFileHandler(os.path.join(log_dir, "shepherd.log"), maxBytes=100 * 1024 * 1024,
                                            backupCount=5, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
    # No format the gateway writes names the caller's source line, thread or process; without these,
    # logging skips a stack walk and three lookups per record (logging's documented optimisations).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(logging.WARNING if level == "warn" else level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
