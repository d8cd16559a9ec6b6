"""The shipped delivery path (lean async puts, packing on its own thread) against the one before it."""

from __future__ import annotations

import functools
import json
import uuid
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from devtools.azurite import Azurite
from devtools.simulate import generate_rows
from shared import delivery
from shared.errors import RowTooLarge, TransientError
from shared.messages import QUEUE_MESSAGE_LIMIT, Envelope, decode_message
from shared.sinks import RowSink

ENVELOPE = Envelope("0b5e11c4-9a7d-4f3e-8c2b-6d1e0f3a5b7c", "drop-1", "table")
#: Rows whose values XML must escape, between ordinary ones.
MARKUP_ROWS = [b'{"n":%d,"v":"<a href=\\"x\\">&amp; 1 < 2 > 0</a>","u":"\xc3\xa9"}' % i for i in range(40)]


def new_queue(azurite: Azurite) -> QueueClient:
    queue = QueueClient.from_connection_string(azurite.connection_string, f"d-{uuid.uuid4().hex[:12]}")
    queue.create_queue()
    return queue


def stored(queue: QueueClient) -> list[str]:
    """Every message's text as stored, in seq order (completion last).

    Each queue is read once: a received message stays invisible for the 300 s, so none is read twice, and
    32 come per request (the SDK's default page is one message: hundreds of requests for a json drop).
    """
    texts = []
    while batch := list(queue.receive_messages(messages_per_page=32, max_messages=32, visibility_timeout=300)):
        texts += [m.content for m in batch]
    return sorted(texts, key=lambda t: decode_message(t)["seq"])


def deliver(sink: RowSink, batches: list[list[bytes]]) -> RowSink:
    try:
        for rows in batches:
            sink.write(rows)
        sink.finish({"data_files": 1})
    finally:
        sink.close()
    return sink


def every_path(azurite: Azurite, encoding: str, **kwargs: Any) -> dict[str, tuple[RowSink, QueueClient]]:
    """A sink of each put path, inline packing and on a packer thread, each with its own queue."""
    out = {}
    for path in delivery.PUT_PATHS:
        for thread in (False, True):
            queue = new_queue(azurite)
            twin = functools.partial(delivery.async_twin, queue)
            sink = delivery.queue_sink(path, queue, twin, ENVELOPE, encoding, packing_thread=thread, **kwargs)
            out[f"{path}{'-thread' if thread else ''}"] = (sink, queue)
    return out


@pytest.mark.parametrize("encoding", ["json", "gzip-base64"])
def test_the_shipped_path_stores_exactly_the_messages_of_the_path_before(azurite: Azurite, encoding: str) -> None:
    rows = list(generate_rows(2500))
    rows[700:700] = MARKUP_ROWS
    batches = [rows[i : i + 97] for i in range(0, len(rows), 97)]
    results = {}
    for path, (sink, queue) in every_path(azurite, encoding, concurrency=3).items():
        deliver(sink, batches)
        texts = stored(queue)
        results[path] = texts
        completion = decode_message(texts[-1])
        assert completion["type"] == "complete" and completion["rows"] == len(rows)
        # The checkpoint: every rows message acknowledged, contiguously.
        assert sink.delivered_seq == completion["seq"] == len(texts) - 1
        assert sink.delivered_rows == len(rows)
        assert all(len(t) <= QUEUE_MESSAGE_LIMIT for t in texts)
    assert len(results) == 2 * len(delivery.PUT_PATHS)
    assert all(texts == results["threads"] for texts in results.values())
    delivered = [r for t in results[delivery.DEFAULT_PUT_PATH][:-1] for r in decode_message(t)["rows"]]
    assert delivered[700:740] == [json.loads(r) for r in MARKUP_ROWS]


@pytest.mark.parametrize("path", delivery.PUT_PATHS)
def test_a_resumed_attempt_sends_only_what_follows_the_checkpoint(azurite: Azurite, path: str) -> None:
    rows = list(generate_rows(2000))
    first = new_queue(azurite)
    deliver(
        delivery.queue_sink("async", first, functools.partial(delivery.async_twin, first), ENVELOPE, "json"), [rows]
    )
    everything = stored(first)
    checkpoint = 5
    end_row = sum(len(decode_message(t)["rows"]) for t in everything[: checkpoint + 1])
    queue = new_queue(azurite)
    sink = delivery.queue_sink(
        path,
        queue,
        functools.partial(delivery.async_twin, queue),
        ENVELOPE,
        "json",
        skip_through=checkpoint,
        skip_rows=end_row,
    )
    deliver(sink, [rows[i : i + 300] for i in range(0, len(rows), 300)])
    assert stored(queue) == everything[checkpoint + 1 :]
    assert sink.delivered_seq == len(everything) - 1


@pytest.mark.parametrize("path", delivery.PUT_PATHS)
def test_a_refused_put_is_a_transient_error_with_the_status(azurite: Azurite, path: str) -> None:
    queue = QueueClient.from_connection_string(azurite.connection_string, f"missing-{uuid.uuid4().hex[:8]}")
    sink = delivery.queue_sink(path, queue, functools.partial(delivery.async_twin, queue), ENVELOPE, "json")
    with pytest.raises(TransientError, match="HTTP 404"):
        deliver(sink, [list(generate_rows(300))])
    assert sink.delivered_seq == -1 and sink.messages_sent == 0


def test_a_row_too_large_is_raised_on_the_decoding_thread_as_itself(azurite: Azurite) -> None:
    queue = new_queue(azurite)
    twin = functools.partial(delivery.async_twin, queue)
    sink = delivery.queue_sink(delivery.DEFAULT_PUT_PATH, queue, twin, ENVELOPE, "json", packing_thread=True)
    huge = b'{"v":"' + b"x" * QUEUE_MESSAGE_LIMIT + b'"}'
    with pytest.raises(RowTooLarge, match="row 11"):
        deliver(sink, [list(generate_rows(10)), [huge], list(generate_rows(10))])
    assert all(decode_message(t)["type"] == "rows" for t in stored(queue))  # no completion


def test_an_unknown_put_path_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown put path"):
        delivery.queue_sink("carrier-pigeon", None, lambda: None, ENVELOPE, "json")  # type: ignore[arg-type,return-value]
