"""The shipped put path: puts on the decoding thread, each first attempted directly on a socket.

Shared Key against Azurite, a bearer token over HTTPS, and every failed attempt handed to the SDK's
synchronous put with its own retries and errors; clients it cannot serve exactly stay with the SDK.
"""

from __future__ import annotations

import functools
import json
import socket
import threading
import uuid
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from devtools.azurite import Azurite
from devtools.simulate import generate_rows
from shared import delivery
from shared.directput import direct_put_supported
from shared.errors import TransientError
from shared.messages import Envelope, Message, decode_message
from tests.test_directput import QueueStandIn

ENVELOPE = Envelope("0b5e11c4-9a7d-4f3e-8c2b-6d1e0f3a5b7c", "drop-1", "table")
#: The SDK retries at once in these tests (its default waits 15 s and more between attempts).
NO_BACKOFF: dict[str, Any] = {"initial_backoff": 0, "increment_base": 0, "random_jitter_range": 0}


def inline_sink(queue: QueueClient, encoding: str = "json", **kwargs: Any) -> delivery.InlineQueueSink:
    sink = delivery.queue_sink(
        "inline", queue, functools.partial(delivery.async_twin, queue), ENVELOPE, encoding, **kwargs
    )
    assert isinstance(sink, delivery.InlineQueueSink)
    return sink


def standin_queue(standin: QueueStandIn, **kwargs: Any) -> QueueClient:
    kwargs.setdefault("connection_verify", standin.cert_path)
    return QueueClient.from_queue_url(f"{standin.url}/account/queue", credential=standin.credential, **kwargs)


def put_all(sink: delivery.InlineQueueSink, payloads: list[str]) -> None:
    try:
        for seq, payload in enumerate(payloads):
            sink.put(Message(seq=seq, first_row=seq, row_count=1, payload=payload))
        sink.flush()
    finally:
        sink.close()


def test_shared_key_puts_into_azurite_go_direct_on_the_callers_thread_and_store_every_row(azurite: Azurite) -> None:
    queue = QueueClient.from_connection_string(azurite.connection_string, f"i-{uuid.uuid4().hex[:12]}")
    queue.create_queue()
    sink = inline_sink(queue, "gzip-base64", concurrency=2)
    assert sink.direct is not None
    rows = list(generate_rows(3000))
    threads_before = threading.active_count()
    try:
        for i in range(0, len(rows), 250):
            sink.write(rows[i : i + 250])
            assert threading.active_count() == threads_before  # no put thread, no event loop thread
        sink.finish({})
    finally:
        sink.close()
    assert sink.handed_over == 0  # Azurite checks the Shared Key signature: a wrong one is a 403
    texts = []
    while batch := list(queue.receive_messages(max_messages=32)):
        texts += [m.content for m in batch]
        for m in batch:
            queue.delete_message(m)
    docs = sorted((decode_message(t) for t in texts), key=lambda d: int(d["seq"]))
    assert [d["seq"] for d in docs] == list(range(len(docs))) and sink.delivered_seq == len(docs) - 1
    assert [r for d in docs[:-1] for r in d["rows"]] == [json.loads(r) for r in rows]


def test_a_bearer_token_is_sent_for_the_storage_scope_and_markup_is_escaped() -> None:
    with QueueStandIn() as standin:
        sink = inline_sink(standin_queue(standin))
        assert sink.direct is not None
        put_all(sink, ["one", "a<b&c", "three"])
        assert sink.handed_over == 0 and sink.delivered_seq == 2
        assert [r.scopes for r in standin.credential.token_requests] == [("https://storage.azure.com/.default",)]
        assert sorted(standin.bodies)[0].endswith("<MessageText>a&lt;b&amp;c</MessageText></QueueMessage>")
        assert len(standin.requests) == 3 and standin.rejected_tokens == standin.challenges == 0


def test_a_failed_direct_attempt_goes_to_the_sdk_put_which_retries() -> None:
    with QueueStandIn() as standin:
        standin.fail_next(2, 503)  # the direct attempt, then the SDK's first try
        sink = inline_sink(standin_queue(standin, **NO_BACKOFF))
        put_all(sink, ["kept"])
        assert sink.handed_over == 1 and sink.delivered_seq == 0
        assert len(standin.requests) == 3  # direct, SDK, SDK retry
        assert len(standin.bodies) == 1 and "kept" in standin.bodies[0]


def test_a_refusal_is_the_sdks_error_mapped_by_the_sink() -> None:
    with QueueStandIn() as standin:
        standin.fail_next(5, 403)
        sink = inline_sink(standin_queue(standin, **NO_BACKOFF))
        with pytest.raises(TransientError, match="HTTP 403"):  # mapped as the threads path maps it
            put_all(sink, ["refused"])
        assert len(standin.requests) == 2  # the direct attempt, then the SDK's (403 is not retried)
        assert sink.delivered_seq == -1 and not sink.going_direct


def test_after_an_authorisation_refusal_every_put_goes_through_the_sdk() -> None:
    with QueueStandIn() as standin:
        standin.fail_next(1, 403)  # the direct attempt only: the SDK's attempt is accepted
        sink = inline_sink(standin_queue(standin, **NO_BACKOFF))
        sink.put(Message(seq=0, first_row=0, row_count=1, payload="first"))
        sink.flush()  # the refusal is in
        assert not sink.going_direct
        for seq, payload in ((1, "second"), (2, "third")):
            sink.put(Message(seq=seq, first_row=seq, row_count=1, payload=payload))
        sink.flush()
        sink.close()
        assert len(standin.requests) == 4  # direct (403), SDK (201), then the SDK only (201, 201)
        assert len(standin.bodies) == 3 and sink.delivered_seq == 2 and sink.handed_over == 1


def test_a_connection_that_cannot_be_written_hands_the_message_to_the_sdk(azurite: Azurite) -> None:
    queue = QueueClient.from_connection_string(azurite.connection_string, f"i-{uuid.uuid4().hex[:12]}")
    queue.create_queue()
    sink = inline_sink(queue)
    assert sink.direct is not None
    sink.put(Message(seq=0, first_row=0, row_count=1, payload="zero"))
    sink.flush()
    for connection in sink.direct._idle:  # the connection breaks between two puts
        connection.sock.shutdown(socket.SHUT_RDWR)
    sink.put(Message(seq=1, first_row=1, row_count=1, payload="one"))
    sink.flush()
    sink.close()
    assert sink.handed_over == 1 and sink.delivered_seq == 1
    assert sorted(m.content for m in queue.receive_messages(max_messages=32)) == ["one", "zero"]


def test_synchronous_clients_it_cannot_serve_exactly_stay_with_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    with QueueStandIn() as standin:
        assert direct_put_supported(standin_queue(standin))
        assert not direct_put_supported(standin_queue(standin, connection_verify=False))
        assert not direct_put_supported(standin_queue(standin, proxies={"https": "http://127.0.0.1:9"}))
        assert not direct_put_supported(standin_queue(standin, connection_cert="client.pem"))
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
        monkeypatch.setenv("NO_PROXY", "")
        assert not direct_put_supported(standin_queue(standin))  # requests would use the environment's proxy
        sink = inline_sink(standin_queue(standin, use_env_settings=False))
        assert sink.direct is not None  # told not to use the environment: the proxy does not apply
        sink.close()


def test_an_answer_that_does_not_come_in_time_hands_the_message_to_the_sdk(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devtools.faultproxy import FaultProxy
    from shared import inlineput

    monkeypatch.setattr(inlineput, "ATTEMPT_TIMEOUT_S", 0.5)  # instead of 30 s
    with FaultProxy(azurite.queue_port) as proxy:
        cs = azurite.connection_string.replace(f":{azurite.queue_port}/", f":{proxy.port}/")
        queue = QueueClient.from_connection_string(cs, f"i-{uuid.uuid4().hex[:12]}")
        queue.create_queue()
        stall = proxy.hold_next(1, method="POST", path_contains="/messages")  # the direct attempt
        sink = inline_sink(queue)
        assert sink.direct is not None
        sink.put(Message(seq=0, first_row=0, row_count=1, payload="late"))
        sink.flush()  # the direct attempt times out; the SDK's put is not held
        assert stall.hits == 1 and sink.handed_over == 1 and sink.delivered_seq == 0
        assert sink.direct.in_flight == 0  # the stalled connection is closed, never reused
        sink.close()
        stall.release.set()
        stored = [m.content for m in queue.receive_messages(messages_per_page=32)]
        assert "late" in stored  # (the held attempt may still arrive: a consumer de-duplicates by seq)
