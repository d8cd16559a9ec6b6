"""Reading one queue message of the downstream contract (docs/messages.md) into what the store needs.

Anything that is not a valid message of contract version 1 becomes a :class:`Poison` with the reason
and the text as received, so that one bad message never stops the queue.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, cast

import simdjson
from isal import isal_zlib

from shared.messages import CONTRACT_VERSION

_GZIP_WBITS = 31
#: ``\u0000`` as a JSON escape (not ``\\u0000``, an escaped backslash followed by text).
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_ISAL_ERROR = cast("type[Exception]", isal_zlib.error)  # its stubs call it an instance
_MAX_RAW_IN_POISON = 1_000_000  # characters of an undecodable message kept in the poison table


@dataclass(frozen=True)
class Rows:
    """A ``rows`` message; ``body`` is its JSON as received (PostgreSQL parses it once, at publish).

    ``sample`` is its first row, re-serialised: only its keys and value types are used.
    """

    tenant: str
    drop: str
    table: str
    seq: int
    first_row: int
    row_count: int
    body: bytes
    sample: bytes
    raw: str


@dataclass(frozen=True)
class Complete:
    """A ``complete`` message: the drop has ``messages`` rows messages holding ``rows`` rows."""

    tenant: str
    drop: str
    table: str
    messages: int
    rows: int
    run_id: str | None
    extraction_id: str | None
    request_start: str | None
    request_end: str | None
    raw: str


@dataclass(frozen=True)
class Failed:
    """A ``failed`` message: discard the drop's rows (a reprocess may send them again later)."""

    tenant: str
    drop: str
    table: str
    reason: str
    raw: str


@dataclass(frozen=True)
class Poison:
    """A message that cannot be used; it is recorded with the reason and the raw text, then acknowledged."""

    reason: str
    raw: str
    drop: str | None = None
    seq: int | None = None


Parsed = Rows | Complete | Failed | Poison


def _raw_text(payload: str | bytes) -> str:
    if isinstance(payload, str):
        return payload[:_MAX_RAW_IN_POISON]
    if payload[:2] == b"\x1f\x8b":
        return "base64:" + base64.b64encode(payload[: _MAX_RAW_IN_POISON // 2]).decode("ascii")
    return payload[:_MAX_RAW_IN_POISON].decode("utf-8", errors="replace")


def _json_bytes(payload: str | bytes) -> bytes:
    """The message's JSON, from any encoding: queue text (json, base64, gzip-base64) or the bytes a
    Functions queue trigger hands over after its own Base64 step (JSON or gzip)."""
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    if data[:2] != b"\x1f\x8b" and not data.lstrip().startswith(b"{"):
        data = base64.b64decode(data, validate=True)
    if data[:2] == b"\x1f\x8b":
        data = isal_zlib.decompress(data, _GZIP_WBITS)
    return data


def _text(doc: Any, key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"field {key!r} must be a non-empty string")
    return value


def _count(doc: Any, key: str) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"field {key!r} must be a whole number >= 0")
    return value


def _optional(doc: Any, key: str) -> str | None:
    value = doc.get(key)
    return value if isinstance(value, str) and value else None


def parse(payload: str | bytes, parser: simdjson.Parser | None = None) -> Parsed:
    """Decode and validate one message; never raises for bad input (it returns :class:`Poison`)."""
    raw = _raw_text(payload)
    try:
        data = _json_bytes(payload)
    except (binascii.Error, ValueError, _ISAL_ERROR) as exc:
        return Poison(f"undecodable message: {type(exc).__name__}: {exc}", raw)
    # simdjson validates without building Python objects for the rows; the body goes to PostgreSQL as it
    # is, so every value keeps its spelling (a re-serialised float could differ).
    parser = parser or simdjson.Parser()
    try:
        doc: Any = parser.parse(data)
    except (ValueError, RuntimeError):
        # simdjson refuses some valid JSON (an integer beyond 64 bits): the standard parser decides.
        try:
            doc = json.loads(data)
        except ValueError as exc:
            return Poison(f"not JSON: {exc}", raw)
    if not isinstance(doc, (simdjson.Object, dict)):
        return Poison("a message must be a JSON object", raw)
    drop_value, seq_value = doc.get("drop"), doc.get("seq")
    drop = drop_value if isinstance(drop_value, str) else None
    seq = seq_value if isinstance(seq_value, int) else None
    try:
        return _validated(doc, data, raw)
    except (ValueError, KeyError) as exc:
        return Poison(str(exc), raw, drop, seq)


def _sample(row: Any) -> bytes:
    """The first row as compact JSON (any JSON object; a non-object row samples as ``{}``)."""
    if isinstance(row, simdjson.Object):
        mini: bytes | str = row.mini  # bytes at run time, str in the stubs
        return mini if isinstance(mini, bytes) else mini.encode("utf-8")
    if isinstance(row, dict):
        return json.dumps(row, separators=(",", ":")).encode("utf-8")
    return b"{}"


def _validated(doc: Any, data: bytes, raw: str) -> Parsed:
    version = doc.get("v")
    if version != CONTRACT_VERSION:
        raise ValueError(f"unknown contract version {version!r} (this consumer reads version {CONTRACT_VERSION})")
    kind = doc.get("type")
    tenant, drop, table = _text(doc, "tenant"), _text(doc, "drop"), _text(doc, "table")
    if kind == "rows":
        rows = doc.get("rows")
        if not isinstance(rows, (simdjson.Array, list)):
            raise ValueError("field 'rows' must be an array")
        row_count = _count(doc, "row_count")
        if len(rows) != row_count:
            raise ValueError(f"row_count is {row_count} but the message holds {len(rows)} rows")
        if b"\\u0000" in data and _NUL_ESCAPE.search(data):
            # PostgreSQL's JSONB cannot hold U+0000: refuse the message now, not at publish.
            raise ValueError("a value holds \\u0000, which PostgreSQL's JSONB refuses")
        sample = _sample(rows[0]) if row_count else b"{}"
        return Rows(tenant, drop, table, _count(doc, "seq"), _count(doc, "first_row"), row_count, data, sample, raw)
    if kind == "complete":
        messages = _count(doc, "messages")
        if doc.get("seq") != messages:
            raise ValueError(f"a complete message's seq must equal messages ({messages})")
        return Complete(
            tenant,
            drop,
            table,
            messages,
            _count(doc, "rows"),
            _optional(doc, "run_id"),
            _optional(doc, "extraction_result_id"),
            _optional(doc, "request_start"),
            _optional(doc, "request_end"),
            raw,
        )
    if kind == "failed":
        code = _optional(doc, "code") or "failed"
        return Failed(tenant, drop, table, f"{code}: {_optional(doc, 'reason') or ''}".strip(), raw)
    raise ValueError(f"unknown message type {kind!r}")
