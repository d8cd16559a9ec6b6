"""Delivery at the queue's speed: the queue put paths, and packing on a thread of its own.

The ``threads`` path (:class:`~shared.sinks.QueueSink`: the SDK's ``QueueClient.send_message`` on a
pool of threads) spends about 3 ms of CPU per 64 KiB put, nearly all in the SDK's HTTP stack. The
``inline`` path (the default, :data:`DEFAULT_PUT_PATH`) and the ``async`` path keep the SDK for
every retry and error but pay only for what a put needs (see docs/performance.md for the profiles):

- :class:`InlineQueueSink` (default): the decoding thread writes each put's first attempt itself on
  a keep-alive socket (:mod:`shared.inlineput`) and collects the answers after each write, with no
  thread, event loop, task or future per put. A failed attempt goes to the SDK's synchronous
  ``send_message`` (its retries, its errors), on the same thread.
- :class:`LeanQueuePut` and :class:`AsyncQueueSink` (the default before): the SDK's *async*
  ``QueueClient`` (aiohttp), its own credential, retry, user-agent, request-id/date headers and
  logging policies in one short pipeline; each put's first attempt written directly on asyncio
  (:mod:`shared.directput`), many puts in flight on one event-loop thread.
- Both are :class:`~shared.sinks.QueueSink` subclasses: the same in-flight window, the same contiguous
  acknowledged watermark (the checkpoint), the same error mapping. The first attempts share one
  request builder (:class:`shared.directput.QueueRequests`: the SDK's request, signed as it signs).
- :class:`BackgroundPacking` (opt-in, ``packing_thread=True``): packs on a second thread while the
  caller decodes. The packer sees the same rows in the same order, so messages and ``seq`` are
  exactly what inline packing gives. Not the default: on the benchmark machine the second thread
  costs 30-40 % more CPU for a 10-20 % shorter wall time (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue as queue_mod
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, Final
from urllib.parse import urlsplit

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ResourceNotModifiedError,
    map_error,
)
from azure.core.pipeline import AsyncPipeline
from azure.core.rest import HttpRequest
from azure.storage.queue.aio import QueueClient as AsyncQueueClient

from .directput import DirectPutFailed, DirectQueuePut, direct_put_supported, env_proxy_applies
from .encodings import message_encoding
from .inlineput import SocketQueuePut
from .messages import Envelope, Message
from .sinks import PackedSink, QueueSink, RowSink

#: ``inline``: puts on the decoding thread, each first attempted directly on a socket (default);
#: ``async``: lean async puts on one event-loop thread (the default before); ``threads``: the SDK's
#: ``send_message`` on a thread pool (the first path; kept for comparison).
PUT_PATHS: Final = ("inline", "async", "threads")
DEFAULT_PUT_PATH: Final = "inline"
#: Row batches the decoder may be ahead of the packer (each at most one inflated piece, 256 KiB).
#: Small, so that checkpoints (taken as the decoder hands batches over) follow the puts closely.
PACKING_BACKLOG = 2
#: Messages the decoding thread collects before it wakes the put loop (see :class:`AsyncQueueSink`).
#: 1: batches of 4 saved under 0.1 ms per put, but puts (and so checkpoints) lagged the packer by
#: up to 3 messages, which the fault tests' duplicate bound does not allow for.
HANDOFF_BATCH: Final = 1
#: The longest a handed-over message waits for the loop when no further message follows (seconds).
HANDOFF_MAX_DELAY: Final = 0.02
#: The longest the decoding thread waits for answers at once before it checks the attempts' deadlines.
_ANSWER_WAIT_S: Final = 1.0
_XML_HEAD = b"<?xml version='1.0' encoding='utf8'?>\n<QueueMessage><MessageText>"
_XML_TAIL = b"</MessageText></QueueMessage>"
#: The statuses the SDK's generated ``send_message`` maps to specific exceptions, mapped the same.
_ERROR_MAP: Final[dict[int, Any]] = {
    401: ClientAuthenticationError,
    404: ResourceNotFoundError,
    409: ResourceExistsError,
    304: ResourceNotModifiedError,
}
_DONE = object()


def _xml_text(payload: str) -> bytes:
    """``payload`` as the text of an XML element (what ElementTree writes for the SDK)."""
    if "&" in payload or "<" in payload or ">" in payload:
        payload = payload.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return payload.encode("utf-8")


def _message_xml(payload: str, *, escape: bool) -> bytes:
    """The body of a put: ``payload`` in the queue's XML. ``escape=False``: Base64 text, which never
    holds ``&``, ``<`` or ``>``."""
    return b"".join((_XML_HEAD, _xml_text(payload) if escape else payload.encode("ascii"), _XML_TAIL))


def _escapes(encoding: str) -> bool:
    """Whether messages of ``encoding`` may hold XML markup characters (json text may; Base64 never)."""
    return not message_encoding(encoding).name.endswith("base64")


def async_queue_client(
    queue_url: str, credential: Any = None, *, connection_string: str | None = None, **kwargs: Any
) -> AsyncQueueClient:
    """The SDK's async client for one queue (a connection string, or its URL and a credential).

    ``credential`` may be a synchronous ``TokenCredential``: the async bearer policy awaits
    ``get_token`` only when it returns an awaitable, and a token is fetched about once an hour.
    The environment's proxy settings are looked up here once, not on every request as aiohttp's
    ``trust_env`` does (a ``.netrc`` read and a proxy lookup on a worker thread per put).
    """
    kwargs.setdefault("use_env_settings", env_proxy_applies(queue_url))
    if connection_string:
        name = urlsplit(queue_url).path.rstrip("/").rsplit("/", 1)[-1]
        return AsyncQueueClient.from_connection_string(connection_string, name, **kwargs)
    return AsyncQueueClient.from_queue_url(queue_url, credential=credential, **kwargs)


def async_twin(client: Any, **kwargs: Any) -> AsyncQueueClient:
    """An async client for the queue of the synchronous ``client``: same URL, same credential."""
    return async_queue_client(client.url, client.credential, **kwargs)


class LeanQueuePut:
    """Puts a message through the async client's own essential policies (same identity and retries)."""

    def __init__(
        self, client: AsyncQueueClient, *, time_to_live: int = -1, direct: bool = True, max_connections: int = 16
    ) -> None:
        self.client = client
        #: The first attempt of each put, written directly (shared/directput.py); None: SDK only.
        self.direct = (
            DirectQueuePut(client, time_to_live=time_to_live, max_connections=max_connections)
            if direct and direct_put_supported(client)
            else None
        )
        config: Any = client._config  # the client's own policy objects, reused as built
        policies: list[Any] = [
            config.proxy_policy,
            config.user_agent_policy,
            config.retry_policy,
            config.headers_policy,  # x-ms-date and x-ms-client-request-id, signed below
        ]
        credential_policy = client._credential_policy
        if credential_policy is not None:
            policies.append(credential_policy)
        policies.append(config.logging_policy)
        self._pipeline = AsyncPipeline(config.transport, policies=policies)
        self._url = f"{client.url.split('?', 1)[0]}/messages?messagettl={int(time_to_live)}"
        query = urlsplit(client.url).query  # a SAS in the URL authorises like the SDK's would
        if query:
            self._url += "&" + query
        self._headers = {
            "Content-Type": "application/xml",
            "Accept": "application/xml",
            "x-ms-version": client.api_version,
        }

    async def send(self, payload: str, *, escape: bool = True) -> None:
        """Put one message; HttpResponseError (or a subclass) when the queue refuses it.

        ``escape=False``: the payload is Base64 text, which never holds ``&``, ``<`` or ``>``.
        """
        body = _message_xml(payload, escape=escape)
        if self.direct is not None:
            try:
                await self.direct.send(body)
                return
            except DirectPutFailed as failed:
                # The SDK put below does every further attempt, with its retries and errors.
                self.direct.handed_over += 1
                if failed.status in (401, 403):
                    # Authorisation is the SDK's to sort out (a token challenge, a tenant): every
                    # further put goes through the SDK only.
                    self.direct.close()
                    self.direct = None
        request = HttpRequest("POST", self._url, headers=dict(self._headers), content=body)
        response = (await self._pipeline.run(request)).http_response
        if response.status_code != 201:
            with contextlib.suppress(Exception):
                await response.read()
            map_error(status_code=response.status_code, response=response, error_map=_ERROR_MAP)
            raise HttpResponseError(response=response)

    async def close(self) -> None:
        """Close the direct connections and the client's transport (its connection pool)."""
        if self.direct is not None:
            self.direct.close()
        await self.client.close()


class EventLoopThread:
    """One asyncio event loop running on a daemon thread; coroutines are submitted from others."""

    def __init__(self, name: str = "queue-put-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Future[Any]:
        """Schedule ``coro`` on the loop; its concurrent Future completes with it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        """Stop the loop and wait for its thread."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class AsyncQueueSink(QueueSink):
    """A :class:`QueueSink` whose puts run as coroutines on one event-loop thread.

    The window (``2 × concurrency``), how a put's end is recorded, the contiguous watermark and the error mapping are
    :class:`QueueSink`'s (``QueueSink.put`` is the entry point); how puts are handed over differs.
    The decoding thread appends messages to an outbox and wakes the loop unless a wake-up is
    already pending (and, with :data:`HANDOFF_BATCH` above 1, only every so many messages), with no
    task, cross-thread Future or done-callback per put on its side. The loop also empties the
    outbox every :data:`HANDOFF_MAX_DELAY` seconds, so a message never waits on a slow source.
    """

    def __init__(self, client: AsyncQueueClient, envelope: Envelope, encoding: str, **kwargs: Any) -> None:
        super().__init__(client, envelope, encoding, **kwargs)  # type: ignore[arg-type]
        self._pool.shutdown(wait=False)  # the thread pool is not used (it never started a thread)
        self._put = LeanQueuePut(client, time_to_live=self.time_to_live, max_connections=self._window)
        self._escape = _escapes(encoding)
        self._outbox: collections.deque[Message] = collections.deque()
        self._wake_pending = False
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self._timer: asyncio.TimerHandle | None = None
        self._loop = EventLoopThread()
        self._loop.loop.call_soon_threadsafe(self._tick)

    # --- on the loop thread

    def _tick(self) -> None:
        self._start_outbox()
        self._timer = self._loop.loop.call_later(HANDOFF_MAX_DELAY, self._tick)

    def _start_outbox(self) -> None:
        self._wake_pending = False  # before emptying: a message appended from now on wakes again
        outbox, tasks, create = self._outbox, self._tasks, self._loop.loop.create_task
        while outbox:
            task = create(self._run(outbox.popleft()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _send_async(self, message: Message) -> None:
        if self._before_put is not None:
            self._before_put(message)
        await self._put.send(message.payload, escape=self._escape)

    async def _run(self, message: Message) -> None:
        try:
            await self._send_async(message)
        except BaseException as exc:  # recorded here, raised on the decoding thread
            self._put_ended(message, exc)
        else:
            self._put_ended(message, None)

    # --- on the decoding thread

    def _wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            self._loop.loop.call_soon_threadsafe(self._start_outbox)

    def _before_waiting(self) -> None:
        self._wake()  # the loop must start what waits in the outbox before room frees

    def _start_put(self, message: Message) -> None:
        """Hand the put over to the loop (``QueueSink.put`` raised any earlier failure and took the room)."""
        self._outbox.append(message)
        if len(self._outbox) >= HANDOFF_BATCH:
            self._wake()

    def close(self) -> None:
        """Wait for puts in flight, close the connections, stop the loop thread."""
        loop = self._loop.loop
        if loop.is_closed():
            return
        self._wait_ended()
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shut_down(), loop).result(timeout=30)
        self._loop.stop()

    async def _shut_down(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await self._put.close()


class InlineQueueSink(QueueSink):
    """A :class:`QueueSink` whose puts run on the decoding thread itself, with no thread or event loop.

    Each put's first attempt is written directly on a keep-alive socket (:mod:`shared.inlineput`)
    and :meth:`put` returns; answers are collected after each write and whenever the window is full.
    A put whose direct attempt fails is done by the SDK's synchronous ``send_message`` (its retries,
    its errors), on this thread. The window, the watermark and the error mapping are
    :class:`QueueSink`'s. Clients a direct put cannot serve exactly put every message through the SDK.
    """

    def __init__(self, queue: Any, envelope: Envelope, encoding: str, **kwargs: Any) -> None:
        super().__init__(queue, envelope, encoding, **kwargs)
        self._pool.shutdown(wait=False)  # the thread pool is not used (it never started a thread)
        self._escape = _escapes(encoding)
        #: The direct first attempts; None when the client is not one they can serve.
        self.direct = (
            SocketQueuePut(queue, time_to_live=self.time_to_live, max_connections=self._window)
            if direct_put_supported(queue)
            else None
        )
        #: Whether new puts are still attempted directly (not after an authorisation refusal).
        self.going_direct = self.direct is not None
        #: Messages whose direct attempt failed and went to the SDK put.
        self.handed_over = 0

    def _start_put(self, message: Message) -> None:
        """Write the put's first attempt and collect the answers already in (the room is taken)."""
        if self._before_put is not None:
            self._before_put(message)
        if self.going_direct:
            assert self.direct is not None
            try:
                self.direct.start(_message_xml(message.payload, escape=self._escape), message)
            except DirectPutFailed:
                self.handed_over += 1
                self._put_through_sdk(message)
            self._collect(0.0)
        else:
            self._put_through_sdk(message)

    def _put_through_sdk(self, message: Message) -> None:
        """Every further attempt of ``message``: the SDK's put, with its retries and errors."""
        try:
            self._sdk_put(message)
        except Exception as exc:  # recorded as the threads' path records it, raised by put/flush
            self._put_ended(message, exc)
        else:
            self._put_ended(message, None)

    def _collect(self, timeout: float) -> None:
        """Record the direct attempts that ended (waiting up to ``timeout`` for one)."""
        if self.direct is None:
            return
        for answer in self.direct.answers(timeout):
            if answer.delivered:
                self._put_ended(answer.tag, None)
                continue
            if answer.status in (401, 403):
                # Authorisation is the SDK's to sort out (a token challenge, a tenant): every
                # further put goes through the SDK only.
                self.going_direct = False
            self.handed_over += 1
            self._put_through_sdk(answer.tag)

    def _take_room(self, message: Message) -> None:
        """Collect answers until the window has room for ``message`` (or a put failed), and take it."""
        while not self._has_room_for(message):
            self._collect(_ANSWER_WAIT_S)
        with self._lock:
            self._outstanding += 1

    def _wait_ended(self) -> None:
        while self._outstanding:
            self._collect(_ANSWER_WAIT_S)

    def close(self) -> None:
        """Wait for the puts in flight, then close the connections."""
        if self.direct is not None:
            try:
                self._wait_ended()
            finally:
                self.direct.close()
                self.direct = None


class BackgroundPacking(RowSink):
    """Runs a packed sink's ``write`` on a thread of its own, so packing overlaps decoding.

    Batches are handed over in order through a bounded queue; ``finish`` waits until the packer
    has taken everything. A failure on the packer thread (a row too large, a replay mismatch, a
    put that failed) is raised, as the same exception, by the next ``write`` or by ``finish``.
    """

    def __init__(self, inner: PackedSink, backlog: int = PACKING_BACKLOG) -> None:
        self.inner = inner
        self._batches: queue_mod.Queue[Any] = queue_mod.Queue(maxsize=backlog)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._pack, name="packer", daemon=True)
        self._thread.start()

    def _pack(self) -> None:
        batches = self._batches
        while True:
            rows = batches.get()
            if rows is _DONE:
                return
            if self._error is None:
                try:
                    self.inner.write(rows)
                except BaseException as exc:  # re-raised on the caller's thread
                    self._error = exc

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _drain(self) -> None:
        if self._thread.is_alive():
            self._batches.put(_DONE)
            self._thread.join()

    def write(self, rows: list[bytes]) -> None:
        """Hand the rows to the packer thread (blocks while it is ``backlog`` batches behind)."""
        self._raise_if_failed()
        self._batches.put(rows)

    def finish(self, summary: dict[str, Any]) -> None:
        """Let the packer take every batch, then finish the inner sink here."""
        self._drain()
        self._raise_if_failed()
        self.inner.finish(summary)

    def close(self) -> None:
        """Stop the packer thread, then close the inner sink."""
        try:
            self._drain()
        finally:
            self.inner.close()

    @property
    def delivered_seq(self) -> int:
        """The inner sink's contiguous acknowledged watermark."""
        return self.inner.delivered_seq

    @property
    def messages_sent(self) -> int:
        """The inner sink's count of puts."""
        return self.inner.messages_sent

    @property
    def delivered_rows(self) -> int:
        """Rows held by the messages up to the watermark."""
        return self.inner.delivered_rows


def queue_sink(
    path: str,
    sync_client: Any,
    async_client: Callable[[], AsyncQueueClient],
    envelope: Envelope,
    encoding: str,
    *,
    packing_thread: bool = False,
    **kwargs: Any,
) -> RowSink:
    """The delivery sink of ``path`` (see :data:`PUT_PATHS`); ``kwargs`` are :class:`QueueSink`'s.

    ``packing_thread`` packs on a thread of its own (:class:`BackgroundPacking`).
    """
    sink: PackedSink
    if path == "inline":
        sink = InlineQueueSink(sync_client, envelope, encoding, **kwargs)
    elif path == "threads":
        sink = QueueSink(sync_client, envelope, encoding, **kwargs)
    elif path == "async":
        sink = AsyncQueueSink(async_client(), envelope, encoding, **kwargs)
    else:
        raise ValueError(f"unknown put path {path!r}; expected one of {', '.join(PUT_PATHS)}")
    return BackgroundPacking(sink) if packing_thread else sink
