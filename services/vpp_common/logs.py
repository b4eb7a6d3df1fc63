"""Structured logging: one line per event, ``key=value`` fields, never f-strings into the message."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

# Characters that make a value need quotes, and the escapes used inside quotes.
_NEEDS_QUOTES = frozenset(' ="\t\n\r')
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


class KeyValueFormatter(logging.Formatter):
    r"""The platform's log line; the edge agent's ``vpp_edge.logfmt`` writes the same::

        ts=2026-12-01T12:00:00.123Z level=INFO logger=gateway.servicer event=site_connected site_id=home-01

    ``ts`` (UTC, milliseconds, ``Z``), ``level``, ``logger``, ``event`` (a snake_case event name; a
    library's own message, quoted, for records we do not write), then the record's fields in the order
    given, then ``exc=`` with the traceback if there is one. A value is ``str(value)``, double-quoted
    when it is empty or holds a space, ``=``, ``"``, tab, CR or newline; inside quotes ``\``, ``"``,
    newline, CR and tab are written ``\\``, ``\"``, ``\n``, ``\r``, ``\t``. One record, one line.
    """

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = getattr(record, "fields", None)
        parts = [f"ts={ts}.{int(record.msecs):03d}Z", f"level={record.levelname}", f"logger={record.name}"]
        parts.append(f"event={_quote(record.getMessage())}")
        if isinstance(fields, dict):
            parts.extend(f"{k}={_quote(v)}" for k, v in fields.items())
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def _quote(value: Any) -> str:
    text = str(value)
    if not text or not _NEEDS_QUOTES.isdisjoint(text):
        return '"' + text.translate(_ESCAPES) + '"'
    return text


class KvLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """``log.info("event", site_id=...)``: keyword arguments become fields."""

    def _emit(self, level: int, event: str, exc_info: bool, **fields: Any) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, event, extra={"fields": fields}, exc_info=exc_info)

    def debug(self, event: str, *args: Any, **fields: Any) -> None:  # type: ignore[override]
        self._emit(logging.DEBUG, event, False, **fields)

    def info(self, event: str, *args: Any, **fields: Any) -> None:  # type: ignore[override]
        self._emit(logging.INFO, event, False, **fields)

    def warning(self, event: str, *args: Any, **fields: Any) -> None:  # type: ignore[override]
        self._emit(logging.WARNING, event, False, **fields)

    def error(self, event: str, *args: Any, **fields: Any) -> None:  # type: ignore[override]
        self._emit(logging.ERROR, event, False, **fields)

    def exception(self, event: str, *args: Any, **fields: Any) -> None:  # type: ignore[override]
        self._emit(logging.ERROR, event, True, **fields)


def get_logger(name: str) -> KvLogger:
    return KvLogger(logging.getLogger(name), {})


class RepeatFilter(logging.Filter):
    """At most one record per logger and level every ``window_s``: a client library retrying every
    100 ms during a broker outage must not bury everything else (our own retry lines stay)."""

    def __init__(self, window_s: float = 10.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._last: dict[tuple[str, int], float] = {}
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno)
        last = self._last.get(key)
        if last is not None and record.created - last < self.window_s:
            self.suppressed += 1
            return False
        self._last[key] = record.created
        return True


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python is chatty at INFO about every (re)connect, logs each produce retry, and warns when its
    # own IO loop is slow (which a busy 2-core machine makes it): keep its warnings, one per 10 s.
    kafka_log = logging.getLogger("kafka")
    kafka_log.setLevel(max(logging.WARNING, logging.getLevelName(level)))
    kafka_log.filters[:] = []
    for name in ("kafka.producer.sender", "kafka.net.selector", "kafka.conn", "kafka.client_async", "kafka.cluster"):
        child = logging.getLogger(name)
        child.filters[:] = [RepeatFilter()]
