"""A queue put's first attempt written directly on sockets of the decoding thread itself.

:class:`shared.directput.DirectQueuePut` writes the request on asyncio, which needs an event loop
and, to overlap with decoding, a thread of its own: per message a task, a future, a wake-up across
threads and the GIL handed back and forth. :class:`SocketQueuePut` writes the same request (built
and signed by :class:`shared.directput.QueueRequests`) on a small pool of keep-alive connections
owned by the caller's thread: :meth:`SocketQueuePut.start` writes a request and returns at once,
:meth:`SocketQueuePut.answers` collects the answers that have arrived. Nothing runs in between:
while the caller decodes, answers wait in the socket buffers. Figures: docs/performance.md.

Semantics are the asyncio attempt's: only ``201 Created`` counts; any other status, a reset, a
response it does not parse, or no answer within ``ATTEMPT_TIMEOUT_S`` is reported as a failure, and
the caller hands that message to the SDK put (retries, errors). A connection whose state is unknown
is never reused.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from .directput import ATTEMPT_TIMEOUT_S, DirectPutFailed, QueueRequests, take_response, tls_context

#: Bytes read from a socket at once (a put's answer is a few hundred bytes).
_READ_SIZE = 64 * 1024


@dataclass(eq=False)
class _Connection:
    """One keep-alive connection and the put it carries (``tag``: the caller's, None when idle)."""

    sock: socket.socket
    tag: Any = None
    deadline: float = 0.0
    buffer: bytearray = field(default_factory=bytearray)


@dataclass(frozen=True)
class Answer:
    """How a put's direct attempt ended: ``status`` 201 is delivered; anything else is a failure."""

    tag: Any
    status: int | None
    why: str = ""

    @property
    def delivered(self) -> bool:
        """The queue took the message."""
        return self.status == 201


class SocketQueuePut:
    """Direct put attempts into one queue on blocking keep-alive sockets of the caller's thread."""

    def __init__(self, client: Any, *, time_to_live: int, max_connections: int) -> None:
        self._requests = QueueRequests(client, time_to_live=time_to_live)
        self._ssl = tls_context(client)
        self._max_connections = max_connections
        self._idle: list[_Connection] = []
        self._selector = selectors.DefaultSelector()  # the busy connections, each registered with its socket

    @property
    def in_flight(self) -> int:
        """Attempts written and not answered yet."""
        return len(self._selector.get_map())

    def _busy(self) -> list[_Connection]:
        return [key.data for key in self._selector.get_map().values()]

    def start(self, body: bytes, tag: Any) -> None:
        """Write the put of ``body`` on an idle connection; DirectPutFailed if it could not be written.

        At most ``max_connections`` attempts may be in flight (the caller's window sees to it).
        """
        if self.in_flight >= self._max_connections:
            raise DirectPutFailed("every connection is busy")
        bearer = self._requests.bearer
        request = self._requests.build(body, bearer.header_now() if bearer is not None else "")
        connection = self._idle.pop() if self._idle else self._connect()
        try:
            connection.sock.sendall(request)
        except OSError as exc:  # a reset, a timeout, a TLS error
            connection.sock.close()
            raise DirectPutFailed(f"{type(exc).__name__}: {exc}") from exc
        connection.tag, connection.deadline = tag, time.monotonic() + ATTEMPT_TIMEOUT_S
        self._selector.register(connection.sock, selectors.EVENT_READ, connection)

    def _connect(self) -> _Connection:
        host, port = self._requests.host, self._requests.port
        try:
            sock = socket.create_connection((host, port), timeout=ATTEMPT_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=host)
        except OSError as exc:  # ssl.SSLError is an OSError
            raise DirectPutFailed(f"{type(exc).__name__}: {exc}") from exc
        return _Connection(sock)

    def answers(self, timeout: float = 0.0) -> list[Answer]:
        """The attempts that ended: waits up to ``timeout`` seconds for the first when none has."""
        ended: list[Answer] = []
        busy = self._busy()
        ready = [c for c in busy if isinstance(c.sock, ssl.SSLSocket) and c.sock.pending()]
        if not ready and busy:
            deadline = min(c.deadline for c in busy)
            wait = max(0.0, min(timeout, deadline - time.monotonic()))
            ready = [key.data for key, _ in self._selector.select(wait)]
        for connection in ready:
            answer = self._read(connection)
            if answer is not None:
                ended.append(answer)
        now = time.monotonic()
        for connection in [c for c in self._busy() if c.deadline <= now]:
            ended.append(self._end(connection, None, f"no answer within {ATTEMPT_TIMEOUT_S:.0f} s"))
        return ended

    def _read(self, connection: _Connection) -> Answer | None:
        try:
            data = connection.sock.recv(_READ_SIZE)
        except OSError as exc:
            return self._end(connection, None, f"{type(exc).__name__}: {exc}")
        if not data:
            return self._end(connection, None, "the connection closed before the answer")
        connection.buffer += data
        try:
            answer = take_response(connection.buffer)
        except DirectPutFailed as exc:
            return self._end(connection, None, str(exc))
        if answer is None:
            return None  # more to come
        status, close = answer
        return self._end(connection, status, "", keep=not close and not connection.buffer)

    def _end(self, connection: _Connection, status: int | None, why: str, *, keep: bool = False) -> Answer:
        """End ``connection``'s attempt; only a connection in a known state (``keep``) is used again."""
        self._selector.unregister(connection.sock)
        answer = Answer(connection.tag, status, why or f"HTTP {status}")
        connection.tag = None
        if keep:
            self._idle.append(connection)
        else:
            connection.sock.close()
        return answer

    def close(self) -> None:
        """Close every connection (attempts still in flight are abandoned: their fate is unknown)."""
        for connection in [*self._idle, *self._busy()]:
            connection.sock.close()
        self._idle.clear()
        self._selector.close()
