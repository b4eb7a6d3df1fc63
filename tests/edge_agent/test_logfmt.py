"""One log schema for the platform: the agent's formatter (it may not import services/) writes exactly
what the services' formatter writes, for the same record."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import pytest

from vpp_common.logs import KeyValueFormatter as ServiceFormatter
from vpp_common.logs import KvLogger
from vpp_edge.logfmt import KeyValueFormatter as AgentFormatter
from vpp_edge.logfmt import kv

# 2026-12-01T12:00:00.123Z in seconds since the epoch (UTC).
CREATED = 1796126400.123
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# key=value, value bare (no space, '=' or '"') or double-quoted with backslash escapes.
PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\\n\r\t]|\\[\\"nrt])*"|[^\s="]+)(?: |$)')
UNESCAPE = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}


def parse(line: str) -> list[tuple[str, str]]:
    """A logfmt reader: the line must be nothing but key=value pairs; values unescaped."""
    pairs: list[tuple[str, str]] = []
    pos = 0
    while pos < len(line):
        match = PAIR.match(line, pos)
        assert match, f"not key=value at {pos}: {line[pos:]!r}"
        key, value = match.groups()
        if value.startswith('"'):
            value = re.sub(r"\\(.)", lambda m: UNESCAPE[m.group(1)], value[1:-1])
        pairs.append((key, value))
        pos = match.end()
    return pairs


def record(
    event: str, fields: dict[str, Any] | None = None, level: int = logging.INFO, exc: bool = False
) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError('bad "value"\nsecond line')
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("vpp_edge.uplink", level, __file__, 1, event, None, exc_info)
    rec.created = CREATED
    rec.msecs = 123.0
    if fields is not None:
        rec.__dict__.update(kv(**fields))
    return rec


CASES: list[tuple[str, logging.LogRecord]] = [
    ("bare", record("agent_stopped")),
    ("fields", record("gateway_stream_down", {"target": "gw:50051", "reason": "UNAVAILABLE: connection refused"})),
    ("numbers", record("device_ready", {"soc_pct": 51.5, "capacity_kwh": 10, "ok": True, "none": None})),
    (
        "quoting",
        record("x", {"empty": "", "eq": "a=b", "quote": 'say "hi"', "tab": "a\tb", "cr": "a\rb", "nl": "a\nb"}),
    ),
    ("backslash", record("x", {"plain": "C:\\dir", "quoted": "C:\\my dir"})),
    ("library message", record("Connection to node 1 failed: [Errno 111]", level=logging.WARNING)),
    ("traceback", record("command_handler_failed", {"command_id": "c-1"}, level=logging.ERROR, exc=True)),
]


@pytest.mark.parametrize("rec", [r for _, r in CASES], ids=[i for i, _ in CASES])
def test_agent_and_services_write_the_same_line(rec: logging.LogRecord) -> None:
    line = AgentFormatter().format(rec)
    assert line == ServiceFormatter().format(rec)
    assert "\n" not in line and "\r" not in line
    pairs = parse(line)
    keys = [k for k, _ in pairs]
    assert keys[:4] == ["ts", "level", "logger", "event"]
    assert pairs[0] == ("ts", "2026-12-01T12:00:00.123Z") and TS.match(pairs[0][1])
    assert pairs[1] == ("level", rec.levelname) and pairs[2] == ("logger", rec.name)
    assert pairs[3] == ("event", rec.getMessage())
    # Every field comes back as str(value), in order; the traceback last.
    fields = rec.__dict__.get("fields", {})
    assert pairs[4 : 4 + len(fields)] == [(k, str(v)) for k, v in fields.items()]
    if rec.exc_info:
        assert keys[-1] == "exc" and pairs[-1][1].endswith('ValueError: bad "value"\nsecond line')
    else:
        assert len(pairs) == 4 + len(fields)


def test_schema_of_one_line() -> None:
    line = AgentFormatter().format(CASES[1][1])
    assert line == (
        "ts=2026-12-01T12:00:00.123Z level=INFO logger=vpp_edge.uplink event=gateway_stream_down "
        'target=gw:50051 reason="UNAVAILABLE: connection refused"'
    )
    quoting = AgentFormatter().format(CASES[3][1])
    assert quoting.endswith(
        'event=x empty="" eq="a=b" quote="say \\"hi\\"" tab="a\\tb" cr="a\\rb" nl="a\\nb"'
    )
    assert AgentFormatter().format(CASES[4][1]).endswith('plain=C:\\dir quoted="C:\\\\my dir"')
    traceback = AgentFormatter().format(CASES[6][1])
    assert ' command_id=c-1 exc="Traceback (most recent call last):\\n' in traceback
    assert traceback.endswith('ValueError: bad \\"value\\"\\nsecond line"')


def test_services_logger_and_agent_kv_carry_fields_the_same_way(caplog: pytest.LogCaptureFixture) -> None:
    """KvLogger's keyword fields and the agent's ``extra=kv(...)`` land on the same record attribute."""
    with caplog.at_level(logging.INFO):
        KvLogger(logging.getLogger("svc"), {}).info("site_connected", site_id="home-01", n=2)
        logging.getLogger("agent").info("site_connected", extra=kv(site_id="home-01", n=2))
    service_rec, agent_rec = caplog.records
    for rec in (service_rec, agent_rec):
        rec.created, rec.msecs, rec.name = CREATED, 123.0, "x"
    assert ServiceFormatter().format(service_rec) == AgentFormatter().format(agent_rec) == (
        "ts=2026-12-01T12:00:00.123Z level=INFO logger=x event=site_connected site_id=home-01 n=2"
    )
