"""A queue put's first attempt written directly on asyncio, with the SDK as its fallback.

The lean SDK put (:class:`shared.delivery.LeanQueuePut`) still costs about 1.5–2 ms of our CPU per
message on the benchmark machine, most of it in azure-core's pipeline and aiohttp, for a request
whose every header but three is the same each time. :class:`DirectQueuePut` writes that request
itself on a small pool of keep-alive connections: the request line and fixed headers are built
once; per message only the body, ``Content-Length``, ``x-ms-date``, ``x-ms-client-request-id`` and
the authorisation change. Figures: docs/performance.md.

Semantics stay the SDK's:

- **Identity**: the client's own credential. Shared Key (a connection string) is signed as the
  SDK's ``SharedKeyCredentialPolicy`` signs it (same string to sign, same HMAC-SHA256); a
  ``TokenCredential`` (``DefaultAzureCredential``, a managed identity) gives a bearer token for
  the storage scope, fetched again five minutes before it expires, as the SDK's bearer policy does.
  A SAS in the queue URL is passed as it is.
- **Retry and errors**: only an answer ``201 Created`` counts as delivered here. Anything else (any
  other status, a connection reset, a timeout, a response this parser does not expect) hands the
  message to the SDK put, which retries with the client's storage retry policy and raises the SDK's
  own ``HttpResponseError`` subclasses. A message may so be put twice (as with the SDK's own retry
  after a lost answer); consumers de-duplicate by ``(drop, seq)``.
- Clients it cannot serve exactly (a proxy from the environment, a custom transport, TLS options,
  credential types other than the two above) are not served: :func:`direct_put_supported` says
  so, and the SDK put does every attempt.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import itertools
import os
import ssl
import time
import urllib.request
import uuid
from email.utils import formatdate
from typing import Any, Final
from urllib.parse import unquote, urlsplit

#: The scope of a bearer token for Azure Storage (what the SDK's clients ask for).
STORAGE_SCOPE: Final = "https://storage.azure.com/.default"
#: A token is fetched again this long before it expires (the SDK's bearer policy uses the same).
TOKEN_REFRESH_MARGIN_S: Final = 300
#: Seconds an attempt may take before the message goes to the SDK put.
ATTEMPT_TIMEOUT_S: Final = 30.0
#: Largest response head accepted (a queue's answer to a put is a few hundred bytes).
_MAX_HEAD = 16 * 1024


class DirectPutFailed(Exception):
    """The direct attempt did not get ``201 Created``: the SDK put takes the message over."""

    def __init__(self, why: str, status: int | None = None) -> None:
        super().__init__(why)
        #: The HTTP status of the answer, when there was one.
        self.status = status


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(DirectPutFailed("the connection closed before the answer"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is not None and not self._waiter.done():
            self._parse()

    def _parse(self) -> None:
        """Resolve the waiter with the status once the whole response is in the buffer."""
        try:
            answer = take_response(self._buffer)
        except DirectPutFailed as exc:
            self._fail(str(exc))
            return
        if answer is None:
            return  # more to come
        status, close = answer
        if close:
            self.closed = True
        assert self._waiter is not None
        self._waiter.set_result(status)

    def _fail(self, why: str) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        assert self._waiter is not None
        self._waiter.set_exception(DirectPutFailed(why))

    def time_out(self) -> None:
        """The answer is late: give up on it (and on this connection)."""
        if self._waiter is not None and not self._waiter.done():
            self._fail(f"no answer within {ATTEMPT_TIMEOUT_S:.0f} s")

    async def exchange(self, request: bytes) -> int:
        """Write ``request``; the status of its response (the body is read and dropped)."""
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            return await self._waiter
        finally:
            self._waiter = None


def take_response(buffer: bytearray) -> tuple[int, bool] | None:
    """Take one whole HTTP/1.1 response off the front of ``buffer``: its status and whether the
    server closes the connection; None while it is incomplete; DirectPutFailed if it is not one."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > _MAX_HEAD:
            raise DirectPutFailed("the response head is too long")
        return None
    head = bytes(buffer[:end]).lower()
    if not head.startswith(b"http/1.1 "):
        raise DirectPutFailed("a response that is not HTTP/1.1")
    try:
        return _take(buffer, head, end)
    except ValueError as exc:  # a length or status that is not a number
        raise DirectPutFailed(f"an unreadable response: {exc}") from exc


def _take(buffer: bytearray, head: bytes, end: int) -> tuple[int, bool] | None:
    if b"\r\ntransfer-encoding: chunked" in head:
        taken = _chunked_length(buffer, end + 4)
    else:
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            raise DirectPutFailed("a response without a length")
        line_end = head.find(b"\r\n", at + 2)
        taken = end + 4 + int(head[at + 17 : line_end if line_end > 0 else None])
        taken = taken if len(buffer) >= taken else -1
    if taken < 0:
        return None
    del buffer[:taken]
    return int(head[9:12]), b"\r\nconnection: close" in head


def _chunked_length(buffer: bytearray, at: int) -> int:
    """Where a chunked body starting at ``at`` ends (after its last chunk and trailer); -1: incomplete."""
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return -1
        size = int(bytes(buffer[at:line_end]).split(b";", 1)[0], 16)
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", line_end)
            if buffer[line_end : line_end + 4] == b"\r\n\r\n":
                return line_end + 4
            return -1 if trailer_end < 0 else trailer_end + 4
        at = line_end + 2 + size + 2
        if at > len(buffer):
            return -1


class _SharedKey:
    """Authorisation for Shared Key, as the SDK's ``SharedKeyCredentialPolicy`` computes it."""

    def __init__(self, account_name: str, account_key: str, fixed_headers: str, resource: str) -> None:
        self._prefix = f"SharedKey {account_name}:"
        self._mac = hmac.new(base64.b64decode(account_key), digestmod=hashlib.sha256)
        self._fixed_headers = fixed_headers
        self._resource = resource

    def header(self, length: int, date: str, request_id: str) -> str:
        # Verb, the standard headers (only Content-Length and Content-Type are set), then the
        # x-ms-* headers sorted by name, then the canonicalised resource and query.
        string_to_sign = (
            f"POST\n\n\n{length}\n\napplication/xml\n\n\n\n\n\n\n"
            f"x-ms-client-request-id:{request_id}\nx-ms-date:{date}\n{self._fixed_headers}{self._resource}"
        )
        mac = self._mac.copy()
        mac.update(string_to_sign.encode("utf-8"))
        return self._prefix + base64.b64encode(mac.digest()).decode("ascii")


class _BearerToken:
    """A bearer token from a ``TokenCredential``, fetched again before it expires."""

    def __init__(self, credential: Any) -> None:
        self._credential = credential
        self._value = ""
        self._refresh_at = 0.0

    def _keep(self, token: Any) -> str:
        self._value = "Bearer " + token.token
        self._refresh_at = token.expires_on - TOKEN_REFRESH_MARGIN_S
        return self._value

    async def header(self) -> str:
        """The header's value (an async credential's ``get_token`` is awaited)."""
        if time.time() < self._refresh_at:
            return self._value
        token = self._credential.get_token(STORAGE_SCOPE)
        return self._keep(await token if inspect.isawaitable(token) else token)

    def header_now(self) -> str:
        """The header's value from a synchronous credential."""
        if time.time() < self._refresh_at:
            return self._value
        return self._keep(self._credential.get_token(STORAGE_SCOPE))


def _credential_kind(credential: Any) -> str | None:
    if credential is None:
        return "none"  # a SAS in the URL, or public access: nothing to add
    if hasattr(credential, "account_key") and hasattr(credential, "account_name"):
        return "shared-key"
    if hasattr(credential, "get_token"):
        return "token"
    return None


def _verify(client: Any) -> bool | str | None:
    """The TLS verification the client's transport does (True, or a CA bundle's path); None when
    it is anything else, or the caller gave the transport options of their own."""
    transport = client._config.transport
    kind = type(transport).__name__
    if kind == "AioHttpTransport":
        if getattr(transport, "_session_kwargs", None) or not getattr(transport, "_session_owner", True):
            return None  # the caller's session or session options: the SDK's to honour
    elif kind == "RequestsTransport":
        session = getattr(transport, "session", None)
        if session is not None and not (
            transport._session_owner and not session.proxies and session.verify is True and session.cert is None
        ):
            return None  # a session of the caller's, or one given proxies or TLS options
    else:
        return None  # a transport of the caller's
    config = getattr(transport, "connection_config", None)
    if config is None or config.cert is not None:
        return None
    verify = config.verify
    if verify is True and kind == "RequestsTransport" and _uses_environment(client):
        # requests trusts the environment's CA bundle when it trusts its proxies (``trust_env``).
        verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    return verify if verify is True or isinstance(verify, str) else None


def _uses_environment(client: Any) -> bool:
    return bool(getattr(client._config.transport, "_use_env_settings", True))


def env_proxy_applies(url: str) -> bool:
    """Whether the environment's proxy settings route ``url`` through a proxy."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    return bool(proxies.get(parts.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(
        parts.hostname or ""
    )


def direct_put_supported(client: Any) -> bool:
    """Whether a direct put can put exactly as the SDK ``client`` (async or synchronous) would.

    Not for a proxy (given, or from the environment), a transport or TLS options of the caller's,
    an unknown credential type, or a bearer token over plain HTTP (which the SDK refuses to send).
    """
    scheme = urlsplit(client.url).scheme
    kind = _credential_kind(client.credential)
    return (
        scheme in ("http", "https")
        and not getattr(client._config.proxy_policy, "proxies", None)
        and not (_uses_environment(client) and env_proxy_applies(client.url))
        and _verify(client) is not None
        and kind is not None
        and not (kind == "token" and scheme != "https")
    )


def tls_context(client: Any) -> ssl.SSLContext | None:
    """The TLS context a direct put to ``client``'s queue uses (None over plain HTTP)."""
    if urlsplit(client.url).scheme != "https":
        return None
    verify = _verify(client)
    return ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)


class QueueRequests:
    """The bytes of a put request to one queue, as the SDK writes and signs it.

    The request line and fixed headers are built once; per message only the body,
    ``Content-Length``, ``x-ms-date``, ``x-ms-client-request-id`` and the authorisation change.
    """

    def __init__(self, client: Any, *, time_to_live: int) -> None:
        parts = urlsplit(client.url)
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        host_header = parts.netloc.rsplit("@", 1)[-1]
        path = f"{parts.path.rstrip('/')}/messages"
        query = f"messagettl={int(time_to_live)}" + (f"&{parts.query}" if parts.query else "")
        version = client.api_version
        user_agent = client._config.user_agent_policy.user_agent
        self._head = (
            f"POST {path}?{query} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {user_agent}\r\n"
            f"Accept: application/xml\r\nContent-Type: application/xml\r\nx-ms-version: {version}\r\n"
        )
        credential = client.credential
        kind = _credential_kind(credential)
        self._shared_key: _SharedKey | None = None
        #: The bearer token to send (a ``TokenCredential``); None for Shared Key or a SAS.
        self.bearer: _BearerToken | None = None
        if kind == "shared-key":
            resource = f"/{credential.account_name}{path}" + "".join(
                f"\n{name.lower()}:{unquote(value)}"
                for name, value in sorted(q.split("=", 1) for q in query.split("&") if "=" in q)
            )
            self._shared_key = _SharedKey(
                credential.account_name, credential.account_key, f"x-ms-version:{version}\n", resource
            )
        elif kind == "token":
            self.bearer = _BearerToken(credential)
        self._request_ids = itertools.count()
        self._request_id_prefix = str(uuid.uuid4())[:24]  # then a per-request counter, as 12 hex digits
        self._date_second = -1
        self._date = ""

    def _now(self) -> str:
        second = int(time.time())
        if second != self._date_second:
            self._date_second, self._date = second, formatdate(second, usegmt=True)
        return self._date

    def build(self, body: bytes, bearer: str = "") -> bytes:
        """The request for ``body``; ``bearer`` is the token header's value when :attr:`bearer` is set."""
        date, request_id = self._now(), f"{self._request_id_prefix}{next(self._request_ids) & 0xFFFFFFFFFFFF:012x}"
        auth = bearer
        if self._shared_key is not None:
            auth = self._shared_key.header(len(body), date, request_id)
        head = (
            f"{self._head}x-ms-date: {date}\r\nx-ms-client-request-id: {request_id}\r\n"
            f"Content-Length: {len(body)}\r\n" + (f"Authorization: {auth}\r\n" if auth else "") + "\r\n"
        )
        return head.encode("latin-1") + body


class DirectQueuePut:
    """Puts messages into one queue over keep-alive connections; 201 or :class:`DirectPutFailed`."""

    def __init__(self, client: Any, *, time_to_live: int, max_connections: int) -> None:
        self._requests = QueueRequests(client, time_to_live=time_to_live)
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._ssl = tls_context(client)
        #: Messages whose direct attempt failed and went to the SDK put (see the module's docstring).
        self.handed_over = 0
        self._watchdog: asyncio.TimerHandle | None = None
        self._busy: dict[_Connection, float] = {}  # connection -> when its attempt times out

    async def _request(self, body: bytes) -> bytes:
        bearer = self._requests.bearer
        return self._requests.build(body, await bearer.header() if bearer is not None else "")

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        loop = asyncio.get_running_loop()
        host = self._requests.host
        _transport, connection = await loop.create_connection(
            _Connection, host, self._requests.port, ssl=self._ssl, server_hostname=host if self._ssl else None
        )
        return connection

    async def send(self, body: bytes) -> None:
        """Put one message body (the XML the SDK would write); DirectPutFailed unless 201."""
        request = await self._request(body)
        async with self._slots:
            try:
                connection = await asyncio.wait_for(self._connection(), ATTEMPT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                raise DirectPutFailed(f"{type(exc).__name__}: {exc}") from exc
            self._watch(connection)
            try:
                status = await connection.exchange(request)
            except BaseException as exc:
                connection.closed = True  # its state is unknown: never reused
                if connection.transport is not None:
                    connection.transport.close()
                if isinstance(exc, (OSError, TimeoutError)):
                    raise DirectPutFailed(f"{type(exc).__name__}: {exc}") from exc
                raise
            finally:
                self._busy.pop(connection, None)
            if connection.closed:
                if connection.transport is not None:
                    connection.transport.close()
            else:
                self._idle.append(connection)
            if status != 201:
                raise DirectPutFailed(f"HTTP {status}", status)

    def _watch(self, connection: _Connection) -> None:
        """Time the attempt out after ATTEMPT_TIMEOUT_S (one timer for all connections, not one each)."""
        loop = asyncio.get_running_loop()
        self._busy[connection] = loop.time() + ATTEMPT_TIMEOUT_S
        if self._watchdog is None:
            self._watchdog = loop.call_later(1.0, self._time_out_late_answers)

    def _time_out_late_answers(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection, deadline in list(self._busy.items()):
            if now >= deadline:
                connection.time_out()
        self._watchdog = loop.call_later(1.0, self._time_out_late_answers) if self._busy else None

    def close(self) -> None:
        """Close the idle connections."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        for connection in self._idle:
            if connection.transport is not None:
                connection.transport.close()
        self._idle.clear()
