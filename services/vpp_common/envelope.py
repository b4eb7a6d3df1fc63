"""Wrap payloads in the one Kafka Envelope and take them out again, refusing anything malformed."""

from __future__ import annotations

import time
import uuid

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from vpp.v1 import envelope_pb2

SCHEMA_VERSION = 1

_PAYLOAD_FIELD_BY_TYPE: dict[str, str] = {
    field.message_type.full_name: field.name
    for field in envelope_pb2.Envelope.DESCRIPTOR.oneofs_by_name["payload"].fields
}


class MalformedRecord(ValueError):
    """A record that cannot be processed; ``reason`` is a short label for metrics and the DLQ header."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def now_timestamp() -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


def wrap(payload: Message, *, source: str, site_id: str = "", message_id: str | None = None) -> envelope_pb2.Envelope:
    field = _PAYLOAD_FIELD_BY_TYPE.get(payload.DESCRIPTOR.full_name)
    if field is None:
        raise TypeError(f"{payload.DESCRIPTOR.full_name} is not an Envelope payload")
    env = envelope_pb2.Envelope(
        schema_version=SCHEMA_VERSION,
        message_id=message_id or uuid.uuid4().hex,
        site_id=site_id,
        source=source,
    )
    env.produced_at.CopyFrom(now_timestamp())
    getattr(env, field).CopyFrom(payload)
    return env


_SMALL_VARINTS = [bytes((n,)) for n in range(128)]
_TAGS: dict[int, bytes] = {}


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    if value < 128:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One length-delimited field (a sub-message, bytes or string) as it is on the wire."""
    tag = _TAGS.get(field_number)
    if tag is None:
        tag = _TAGS[field_number] = varint(field_number << 3 | 2)
    return tag + varint(len(payload)) + payload


def wrap_serialized(payload_field: str, payload: bytes, *, source: str, message_id: str | None = None) -> bytes:
    """An Envelope's bytes around an already serialized payload, without parsing or copying it.

    Protobuf parses concatenated encodings as one message, so the envelope's own fields followed by
    the payload's field are exactly what ``wrap(...).SerializeToString()`` would give. The gateway
    uses it to build batch records straight from the bytes of each sample.
    """
    field = envelope_pb2.Envelope.DESCRIPTOR.fields_by_name[payload_field]
    head = envelope_pb2.Envelope(
        schema_version=SCHEMA_VERSION, message_id=message_id or uuid.uuid4().hex, source=source
    )
    head.produced_at.CopyFrom(now_timestamp())
    return head.SerializeToString() + length_delimited(field.number, payload)


def unwrap(raw: bytes | None, expected_payload: str | None = None) -> envelope_pb2.Envelope:
    """Parse a record value; ``expected_payload`` is the oneof field name the topic carries."""
    if not raw:
        raise MalformedRecord("empty", "record has no value")
    env = envelope_pb2.Envelope()
    try:
        env.ParseFromString(raw)
    except DecodeError as exc:
        raise MalformedRecord("decode_error", str(exc)) from exc
    if env.schema_version != SCHEMA_VERSION:
        raise MalformedRecord("schema_version", f"got {env.schema_version}, this build reads {SCHEMA_VERSION}")
    kind = env.WhichOneof("payload")
    if kind is None:
        raise MalformedRecord("no_payload", "envelope carries no payload")
    if expected_payload is not None and kind != expected_payload:
        raise MalformedRecord("wrong_payload", f"expected {expected_payload}, got {kind}")
    if not env.message_id:
        raise MalformedRecord("no_message_id", "envelope has no message_id")
    return env
