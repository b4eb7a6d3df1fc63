"""Structured key=value logging, so log lines can be grepped and parsed without regexes.

The agent must not import the platform's services, so it has its own formatter; it writes exactly what
``vpp_common.logs.KeyValueFormatter`` writes (tests/edge_agent/test_logfmt.py compares the two).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

# Characters that make a value need quotes, and the escapes used inside quotes.
_NEEDS_QUOTES = frozenset(' ="\t\n\r')
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def kv(**fields: Any) -> dict[str, Any]:
    """``extra=`` payload: ``log.warning("gateway_stream_down", extra=kv(target=t, reason=r))``."""
    return {"fields": fields}


def _quote(value: Any) -> str:
    text = str(value)
    if not text or not _NEEDS_QUOTES.isdisjoint(text):
        return '"' + text.translate(_ESCAPES) + '"'
    return text


class KeyValueFormatter(logging.Formatter):
    r"""The platform's log line, as the services write it::

        ts=2026-12-01T12:00:00.123Z level=INFO logger=vpp_edge.uplink event=gateway_connected gateway_id=gw-1

    ``ts`` (UTC, milliseconds, ``Z``), ``level``, ``logger``, ``event`` (a snake_case event name; a
    library's own message, quoted, for records we do not write), then the record's fields in the order
    given, then ``exc=`` with the traceback if there is one. A value is ``str(value)``, double-quoted
    when it is empty or holds a space, ``=``, ``"``, tab, CR or newline; inside quotes ``\``, ``"``,
    newline, CR and tab are written ``\\``, ``\"``, ``\n``, ``\r``, ``\t``. One record, one line.
    """

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname}",
            f"logger={record.name}",
            f"event={_quote(record.getMessage())}",
        ]
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            parts.extend(f"{key}={_quote(value)}" for key, value in fields.items())
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(level: str) -> None:
    """Route all logging to stderr as key=value lines (stdout is reserved for PORT lines)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("grpc").setLevel(logging.WARNING)
