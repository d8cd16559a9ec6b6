"""The direct first attempt of a put: Shared Key against Azurite, a bearer token over HTTPS, and
every failure handed to the SDK put with its own retries and errors."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.queue import QueueClient

from devtools.azurite import Azurite
from devtools.simulate import generate_rows
from devtools.tls import HttpsStandIn, RecordedRequest, Reply
from shared import delivery
from shared.directput import TOKEN_REFRESH_MARGIN_S, direct_put_supported
from shared.messages import Envelope, decode_message

ENVELOPE = Envelope("0b5e11c4-9a7d-4f3e-8c2b-6d1e0f3a5b7c", "drop-1", "table")
#: The Storage SDK's ExponentialRetry waits initial_backoff + increment_base ** n (15 + 3 s, +-3 s of jitter)
#: before retry n, whatever a Retry-After says: the tests count the retries without waiting for them.
NO_BACKOFF: dict[str, Any] = {"initial_backoff": 0, "increment_base": 0, "random_jitter_range": 0}


#: What the queue service answers a put with (the SDK's synchronous ``send_message`` reads it).
_PUT_ANSWER = (
    b'<?xml version="1.0" encoding="utf-8"?><QueueMessagesList><QueueMessage>'
    b"<MessageId>5974b586-0df3-4e2d-ad0c-18e3892bfca2</MessageId>"
    b"<InsertionTime>Fri, 09 Oct 2026 21:04:30 GMT</InsertionTime>"
    b"<ExpirationTime>Fri, 16 Oct 2026 21:04:30 GMT</ExpirationTime>"
    b"<PopReceipt>YzQ4Yzg1MDItYTc0Ny00OWNjLTkzMTYtYzdmZDQ0ZDQ4MDk3</PopReceipt>"
    b"<TimeNextVisible>Fri, 09 Oct 2026 21:04:30 GMT</TimeNextVisible>"
    b"</QueueMessage></QueueMessagesList>"
)


class QueueStandIn(HttpsStandIn):
    """An HTTPS queue endpoint that takes bearer-authorised puts (bodies kept as XML text)."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[str] = []

    def _process_unsafe(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Reply:
        # The stand-in base records JSON bodies: carry the XML as a JSON string.
        return super()._process_unsafe(method, target, headers, json.dumps(raw.decode("utf-8")).encode())

    def _dispatch(self, request: RecordedRequest, headers: dict[str, str]) -> Reply:
        if request.method != "POST" or not request.path.endswith("/messages"):
            return Reply(400)
        self.bodies.append(request.body)
        return Reply(201, body=_PUT_ANSWER, headers={"Content-Type": "application/xml"})


def put_all(put: delivery.LeanQueuePut, payloads: list[str]) -> None:
    async def run() -> None:
        try:
            for payload in payloads:
                await put.send(payload)
        finally:
            await put.close()

    asyncio.run(run())


def lean_put(standin: QueueStandIn, **kwargs: Any) -> delivery.LeanQueuePut:
    client = delivery.async_queue_client(
        f"{standin.url}/account/queue", standin.credential, connection_verify=standin.cert_path, **kwargs
    )
    return delivery.LeanQueuePut(client)


def test_shared_key_puts_into_azurite_go_direct_and_store_every_row(azurite: Azurite) -> None:
    queue = QueueClient.from_connection_string(azurite.connection_string, f"d-{uuid.uuid4().hex[:12]}")
    queue.create_queue()
    sink = delivery.queue_sink(
        "async", queue, functools.partial(delivery.async_twin, queue), ENVELOPE, "gzip-base64", concurrency=2
    )
    assert isinstance(sink, delivery.AsyncQueueSink)
    rows = list(generate_rows(3000))
    try:
        for i in range(0, len(rows), 250):
            sink.write(rows[i : i + 250])
        sink.finish({})
    finally:
        sink.close()
    direct = sink._put.direct
    assert direct is not None
    assert direct.handed_over == 0  # Azurite checks the Shared Key signature: a wrong one is a 403
    texts = []
    while batch := list(queue.receive_messages(messages_per_page=32, max_messages=32)):
        texts += [m.content for m in batch]
        for m in batch:
            queue.delete_message(m)
    docs = sorted((decode_message(t) for t in texts), key=lambda d: int(d["seq"]))
    assert [d["seq"] for d in docs] == list(range(len(docs)))
    assert [r for d in docs[:-1] for r in d["rows"]] == [json.loads(r) for r in rows]


def test_a_bearer_token_is_sent_for_the_storage_scope_and_kept_while_valid() -> None:
    with QueueStandIn() as standin:
        put = lean_put(standin)
        assert put.direct is not None
        put_all(put, ["one", "a<b&c", "three"])
        assert put.direct.handed_over == 0
        assert [r.scopes for r in standin.credential.token_requests] == [("https://storage.azure.com/.default",)]
        assert standin.bodies[1].endswith("<MessageText>a&lt;b&amp;c</MessageText></QueueMessage>")
        assert len(standin.requests) == 3 and standin.rejected_tokens == standin.challenges == 0


def test_the_token_is_fetched_again_on_the_same_client_once_due() -> None:
    with QueueStandIn() as standin:
        standin.credential.lifetime_s = TOKEN_REFRESH_MARGIN_S + 1
        put = lean_put(standin)

        async def run() -> None:
            try:
                await put.send("one")
                await put.send("two")
                await asyncio.sleep(1.1)
                await put.send("three")
            finally:
                await put.close()

        asyncio.run(run())
        assert len(standin.credential.token_requests) == 2
        assert put.direct is not None and put.direct.handed_over == 0
        assert len(standin.requests) == 3


def test_a_failed_direct_attempt_goes_to_the_sdk_put_which_retries() -> None:
    with QueueStandIn() as standin:
        standin.fail_next(2, 503)  # the direct attempt, then the SDK's first try
        put = lean_put(standin, **NO_BACKOFF)
        put_all(put, ["kept"])
        assert put.direct is not None and put.direct.handed_over == 1
        assert len(standin.requests) == 3  # direct, SDK, SDK retry
        assert len(standin.bodies) == 1 and "kept" in standin.bodies[0]


def test_a_refusal_is_the_sdks_error_with_the_status() -> None:
    with QueueStandIn() as standin:
        standin.fail_next(5, 403)
        put = lean_put(standin)
        with pytest.raises(HttpResponseError) as caught:
            put_all(put, ["refused"])
        assert caught.value.status_code == 403
        assert len(standin.requests) == 2  # the direct attempt, then the SDK's (403 is not retried)


def test_after_an_authorisation_refusal_every_put_goes_through_the_sdk() -> None:
    with QueueStandIn() as standin:
        standin.fail_next(1, 403)  # the direct attempt only: the SDK's attempt is accepted
        put = lean_put(standin)
        put_all(put, ["first", "second"])
        assert put.direct is None
        assert len(standin.requests) == 3  # direct (403), SDK (201), then SDK only (201)
        assert len(standin.bodies) == 2


def test_clients_it_cannot_serve_exactly_stay_with_the_sdk() -> None:
    with QueueStandIn() as standin:
        url = f"{standin.url}/account/queue"
        assert direct_put_supported(
            delivery.async_queue_client(url, standin.credential, connection_verify=standin.cert_path)
        )
        assert not direct_put_supported(delivery.async_queue_client(url, standin.credential, connection_verify=False))
        proxied = delivery.async_queue_client(url, standin.credential, proxies={"https": "http://127.0.0.1:9"})
        assert not direct_put_supported(proxied)
