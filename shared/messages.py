"""The downstream message contract and the one packer every sink shares.

A drop becomes a sequence of messages: ``rows`` messages numbered from 0, then one ``complete``
message whose ``seq`` equals the number of ``rows`` messages. Packing is deterministic (the same rows
and settings always give the same messages and sequence numbers), so a replay after a crash re-sends
identical messages and a consumer de-duplicating by ``(drop, seq)`` sees every row exactly once.
See ``docs/messages.md``.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate, islice
from typing import Any

from .bytepath import MAX_ROW_BYTES, keep_heap_warm
from .encodings import GZIP_LEVEL, GZIP_WBITS, decode_payload, message_encoding
from .errors import RowTooLarge

#: Azure Storage queue messages are limited to 64 KiB as stored (after any Base64).
QUEUE_MESSAGE_LIMIT = 64 * 1024
CONTRACT_VERSION = 1
#: Caps that keep memory flat and messages sane whatever the rows (rows of ``{}`` compress 500:1):
#: a message's uncompressed body holds at most its header plus ``MAX_ROW_BYTES`` (1 MiB) of rows,
#: and the compression-ratio estimate that sizes a gzip message never exceeds this. They are
#: constants, not settings: a resumed drop must pack exactly as its first attempt did.
MAX_COMPRESSION_RATIO = 64.0
#: At most this many rows in one message (never reached by real rows of a few hundred bytes; it
#: bounds the rows held in memory, and what a consumer handles per message, for rows like ``{}``).
MAX_ROWS_PER_MESSAGE = 20_000
_GZIP_WBITS = GZIP_WBITS  # older names; the encodings' home is shared/encodings.py
_GZIP_LEVEL = GZIP_LEVEL
_plus_one = (1).__add__  # a row's length plus its separator, without a Python-level call per row


@dataclass(frozen=True)
class Envelope:
    """What every message of a drop names."""

    tenant: str
    drop: str
    table: str


@dataclass(frozen=True)
class Message:
    """One encoded queue message (``payload`` is the text to put)."""

    seq: int
    first_row: int
    row_count: int
    payload: str
    final: bool = False


def encode_body(body: bytes, encoding: str) -> str:
    """Encode a message body for the queue with a registered encoding (shared/encodings.py)."""
    return message_encoding(encoding).encode(body)


def decode_message(payload: str | bytes) -> dict[str, Any]:
    """Decode a message of any of the three encodings (what a consumer does)."""
    data = decode_payload(payload.encode("utf-8") if isinstance(payload, str) else payload)
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("a message is a JSON object")
    return doc


class MessagePacker:
    """Turns batches of raw JSON rows into messages that fit the queue limit as stored."""

    def __init__(self, envelope: Envelope, encoding: str = "gzip-base64", limit: int = QUEUE_MESSAGE_LIMIT):
        self._codec = message_encoding(encoding)  # ValueError for an unknown one
        keep_heap_warm()  # compressing a message allocates several blocks of 100 KiB and more
        self.envelope = envelope
        self.encoding = encoding
        self.limit = limit
        # Bytes the JSON body may have so that its encoded form fits the limit.
        self._body_limit = self._codec.body_limit(limit)
        self._prefix = (
            '{"type":"rows","v":%d,"tenant":%s,"drop":%s,"table":%s,'
            % (
                CONTRACT_VERSION,
                json.dumps(envelope.tenant),
                json.dumps(envelope.drop),
                json.dumps(envelope.table),
            )
        ).encode("utf-8")
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._ratio = 4.0  # compression ratio estimate; evolves deterministically
        self.seq = 0
        self.rows = 0

    def _header(self, seq: int, first_row: int, count: int) -> bytes:
        return self._prefix + b'"seq":%d,"first_row":%d,"row_count":%d,"rows":[' % (seq, first_row, count)

    def _body(self, n: int) -> bytes:
        # One join, one copy of the rows: the header goes onto the first row, the tail onto the last.
        header = self._header(self.seq, self.rows, n)
        if n == 1:
            return header + self._pending[0] + b"]}"
        parts = self._pending[:n]
        parts[0] = header + parts[0]
        parts[-1] += b"]}"
        return b",".join(parts)

    def _raw_target(self) -> int:
        budget = self._body_limit - len(self._header(self.seq, self.rows, 10**9)) - 2
        if self._codec.compressed:
            return min(int(budget * self._ratio * 0.95), MAX_ROW_BYTES)
        return budget

    def _fit_raw(self) -> int:
        """How many pending rows fit a json/base64 message (greedy, by cumulative length)."""
        # The header is measured with the widest row count, not the number of rows pending: the
        # budget must not depend on how rows were batched, or a replay could pack differently.
        budget = self._body_limit - len(self._header(self.seq, self.rows, 10**9)) - 2
        cumulative = list(accumulate(map(_plus_one, map(len, islice(self._pending, MAX_ROWS_PER_MESSAGE)))))
        n = bisect_right(cumulative, budget + 1)  # the last row has no comma
        if n == 0:
            raise RowTooLarge(
                f"row {self.rows + 1} is {len(self._pending[0])} bytes, larger than one queue message"
                f" can carry in {self.encoding} ({self.limit} bytes as stored)"
            )
        return n

    def _cut(self) -> Message:
        if not self._codec.compressed:
            n = self._fit_raw()
            return self._take(n, encode_body(self._body(n), self.encoding))
        n = self._first_guess()
        body = self._body(n)
        return self._settle(n, body, encode_body(body, self.encoding))

    def _first_guess(self) -> int:
        """How many pending rows the next compressed message is tried with (from the ratio estimate)."""
        if len(self._pending[0]) > MAX_ROW_BYTES:
            raise RowTooLarge(
                f"row {self.rows + 1} is {len(self._pending[0])} bytes; a message carries at most"
                f" {MAX_ROW_BYTES} bytes of rows uncompressed"
            )
        cumulative = list(accumulate(map(_plus_one, map(len, islice(self._pending, MAX_ROWS_PER_MESSAGE)))))
        return max(1, min(len(cumulative), bisect_right(cumulative, self._raw_target())))

    def _settle(self, n: int, body: bytes, payload: str) -> Message:
        """The compressed message of the first ``n`` rows, fewer while it overflows the limit."""
        limit = self.limit
        while len(payload) > limit:
            if n == 1:
                raise RowTooLarge(
                    f"row {self.rows + 1} is {len(self._pending[0])} bytes and does not fit one"
                    f" queue message even compressed ({len(payload)} > {limit} bytes)"
                )
            n = max(1, min(n - 1, int(n * limit / len(payload) * 0.97)))
            body = self._body(n)
            payload = encode_body(body, self.encoding)
        self._ratio = min(MAX_COMPRESSION_RATIO, max(1.0, len(body) / max(1, len(payload) * 3 // 4)))
        return self._take(n, payload)

    def _take(self, n: int, payload: str) -> Message:
        message = Message(seq=self.seq, first_row=self.rows, row_count=n, payload=payload)
        del self._pending[:n]
        self._pending_bytes = sum(map(len, self._pending)) if self._pending else 0
        self.seq += 1
        self.rows += n
        return message

    def _cut_due(self) -> bool:
        return bool(self._pending) and (
            self._pending_bytes + len(self._pending) > self._raw_target() or len(self._pending) > MAX_ROWS_PER_MESSAGE
        )

    def add(self, rows: list[bytes]) -> Iterator[Message]:
        """Add rows; yields every message that is full."""
        self._pending.extend(rows)
        self._pending_bytes += sum(map(len, rows))
        while self._cut_due():
            yield self._cut()

    def finish(self) -> Iterator[Message]:
        """Flush the rows still pending (the last, partly filled messages)."""
        while self._pending:
            yield self._cut()

    def complete_message(self, summary: dict[str, Any]) -> Message:
        """The final message of the drop: its ``seq`` is the number of rows messages."""
        doc: dict[str, Any] = {
            "type": "complete",
            "v": CONTRACT_VERSION,
            "tenant": self.envelope.tenant,
            "drop": self.envelope.drop,
            "table": self.envelope.table,
            "seq": self.seq,
            "messages": self.seq,
            "rows": self.rows,
        }
        doc.update({k: v for k, v in summary.items() if k not in doc})
        body = json.dumps(doc, separators=(",", ":"), sort_keys=False).encode("utf-8")
        payload = encode_body(body, self.encoding)
        if len(payload) > self.limit:
            raise ValueError("the completion message does not fit one queue message")
        return Message(seq=self.seq, first_row=self.rows, row_count=0, payload=payload, final=True)


def failure_message(envelope: Envelope, encoding: str, code: str, reason: str) -> str:
    """The ``failed`` message: the drop's rows sent so far are not to be used (it has no ``seq``)."""
    doc = {
        "type": "failed",
        "v": CONTRACT_VERSION,
        "tenant": envelope.tenant,
        "drop": envelope.drop,
        "table": envelope.table,
        "seq": None,
        "code": code,
        "reason": reason[:2000],
    }
    return encode_body(json.dumps(doc, separators=(",", ":")).encode("utf-8"), encoding)
