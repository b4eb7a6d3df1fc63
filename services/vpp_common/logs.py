"""Structured logging: one line per event, ``key=value`` fields, never f-strings into the message."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = getattr(record, "fields", {})
        parts = [f"ts={ts}.{int(record.msecs):03d}Z", f"level={record.levelname}", f"logger={record.name}"]
        parts.append(f"event={_quote(record.getMessage())}")
        parts.extend(f"{k}={_quote(v)}" for k, v in fields.items())
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def _quote(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
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


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python is chatty at INFO about every (re)connect.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))
