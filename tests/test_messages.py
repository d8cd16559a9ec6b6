"""The message packer: limits as stored, determinism, sequence numbers and the completion message."""

from __future__ import annotations

import json

import pytest

from devtools.simulate import generate_rows
from shared.errors import RowTooLarge
from shared.messages import QUEUE_MESSAGE_LIMIT, Envelope, Message, MessagePacker, decode_message

ENV = Envelope(tenant="3f2504e0-4f89-41d3-9a0c-0305e82c3301", drop="d123", table="VivaInsightsDataset_PersonReport_v1")


def pack(rows: list[bytes], encoding: str, batch: int = 37) -> list[Message]:
    packer = MessagePacker(ENV, encoding)
    out: list[Message] = []
    for i in range(0, len(rows), batch):
        out.extend(packer.add(rows[i : i + batch]))
    out.extend(packer.finish())
    out.append(packer.complete_message({"run_id": "r1"}))
    return out


@pytest.mark.parametrize("encoding", ["json", "base64", "gzip-base64"])
def test_messages_fit_and_carry_every_row_in_order(encoding: str) -> None:
    rows = list(generate_rows(2000))
    messages = pack(rows, encoding)
    assert all(len(m.payload.encode()) <= QUEUE_MESSAGE_LIMIT for m in messages)
    docs = [decode_message(m.payload) for m in messages]
    got = [json.dumps(r, separators=(",", ":")).encode() for d in docs[:-1] for r in d["rows"]]
    assert got == rows
    assert [d["seq"] for d in docs] == list(range(len(docs)))
    assert all(d["first_row"] == sum(x["row_count"] for x in docs[:i]) for i, d in enumerate(docs[:-1]))
    final = docs[-1]
    assert final["type"] == "complete" and final["rows"] == 2000 and final["messages"] == len(docs) - 1
    assert final["run_id"] == "r1" and final["tenant"] == ENV.tenant and final["drop"] == "d123"
    # Messages are well filled: no more than one under-filled message besides the last.
    sizes = [len(m.payload) for m in messages[:-2]]
    assert sum(s < QUEUE_MESSAGE_LIMIT * 0.8 for s in sizes) <= 1


def test_compression_puts_several_times_more_rows_in_a_message() -> None:
    rows = list(generate_rows(3000))
    plain = len(pack(rows, "json"))
    compressed = len(pack(rows, "gzip-base64"))
    assert compressed * 3 < plain


@pytest.mark.parametrize("encoding", ["json", "base64", "gzip-base64"])
def test_packing_is_deterministic_whatever_the_batching(encoding: str) -> None:
    rows = list(generate_rows(1500, shape="underscore"))
    a = [m.payload for m in pack(rows, encoding, batch=1)]
    b = [m.payload for m in pack(rows, encoding, batch=500)]
    assert a == b


@pytest.mark.parametrize("encoding", ["json", "base64", "gzip-base64"])
def test_single_row_too_large(encoding: str) -> None:
    import os

    filler = os.urandom(60_000).hex()  # incompressible
    rows = [*generate_rows(2), json.dumps({"PersonId": "p", "blob": filler}).encode()]
    with pytest.raises(RowTooLarge, match="row 3"):
        pack(rows, encoding)


def test_rows_with_non_ascii_count_in_bytes() -> None:
    rows = [json.dumps({"n": "é" * 3000}, ensure_ascii=False).encode()] * 40
    for m in pack(rows, "json"):
        assert len(m.payload.encode("utf-8")) <= QUEUE_MESSAGE_LIMIT


@pytest.mark.parametrize("encoding", ["json", "base64"])
def test_a_message_that_fits_exactly_packs_the_same_whatever_the_batching(encoding: str) -> None:
    # Rows sized so that nine of them fill a message to the byte when the header's row count has one
    # digit: the packing must not depend on how many rows happen to be pending.
    packer = MessagePacker(ENV, encoding)
    limit = packer._body_limit - len(packer._header(0, 0, 9)) - 2

    def row(size: int) -> bytes:
        return b'{"x":"' + b"a" * (size - 8) + b'"}'

    rows = [row(5000)] * 8 + [row(limit - 8 * 5000 - 8)] + [row(3000)] * 30
    one_by_one = [m.payload for m in pack(rows, encoding, batch=1)]
    all_at_once = [m.payload for m in pack(rows, encoding, batch=len(rows))]
    assert one_by_one == all_at_once


def test_messages_that_overflow_their_first_guess_pack_the_same_whatever_the_batches() -> None:
    # Rows of very different compressibility, so that some messages overflow their first guess.
    rows = list(generate_rows(4000))
    rows[1000:1000] = [b'{"n":%d,"v":"%s"}' % (i, bytes(range(48, 123)) * (i % 40)) for i in range(900)]

    def packed(batch: int) -> list[Message]:
        packer = MessagePacker(ENV, "gzip-base64")
        out: list[Message] = []
        for i in range(0, len(rows), batch):
            out.extend(packer.add(rows[i : i + batch]))
        out.extend(packer.finish())
        out.append(packer.complete_message({}))
        return out

    assert packed(1) == packed(61) == packed(5000)
