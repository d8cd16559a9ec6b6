"""TLS and HTTP plumbing shared by the local stand-ins for Azure services.

* :func:`generate_self_signed_cert` writes a throw-away certificate for ``127.0.0.1``/``localhost``.
* :class:`StaticTokenCredential` hands out a fixed bearer token to the Azure SDK clients.
* :class:`HttpsStandIn` runs a threaded HTTPS server on a free loopback port, records requests,
  checks for a bearer token and injects faults; the service stand-ins subclass it.

Only loopback is ever bound; nothing here talks to the network.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import os
import secrets
import socket
import socketserver
import ssl
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self
from urllib.parse import parse_qsl, unquote, urlsplit

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "HttpsStandIn",
    "RecordedRequest",
    "Reply",
    "StaticTokenCredential",
    "TokenRequest",
    "error_reply",
    "generate_self_signed_cert",
]

LOOPBACK = "127.0.0.1"


def generate_self_signed_cert(
    directory: str | os.PathLike[str], *, common_name: str = "localhost", days: int = 2
) -> tuple[str, str]:
    """Write a self-signed certificate and its private key (both PEM) into ``directory``.

    The certificate names ``127.0.0.1`` (IP SAN) and ``localhost`` (DNS SAN). It is its own trust
    anchor: pass the certificate path as ``connection_verify`` (requests' ``verify``) to a client.

    :returns: ``(cert_path, key_path)``.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = folder / "standin-cert.pem"
    key_path = folder / "standin-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    return str(cert_path), str(key_path)


class TokenRequest(NamedTuple):
    """One call to :class:`StaticTokenCredential` (what the SDK asked for)."""

    scopes: tuple[str, ...]
    tenant_id: str | None
    enable_cae: bool


class StaticTokenCredential:
    """A credential that always returns the same bearer token, valid for ``lifetime_s`` from each call.

    Satisfies both azure-core protocols, ``TokenCredential`` (``get_token``) and
    ``SupportsTokenInfo`` (``get_token_info``, ``close``, context manager). The policies prefer
    ``get_token_info`` when present. Every call is recorded in :attr:`token_requests`.
    """

    def __init__(self, token: str = "stand-in-token", lifetime_s: int = 3600) -> None:
        self.token = token
        self.lifetime_s = lifetime_s
        self.token_requests: list[TokenRequest] = []
        self._lock = threading.Lock()

    def _record(self, scopes: tuple[str, ...], tenant_id: str | None, enable_cae: bool) -> int:
        with self._lock:
            self.token_requests.append(TokenRequest(scopes, tenant_id, enable_cae))
        return int(time.time()) + self.lifetime_s

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        """Return the fixed token (``TokenCredential`` protocol)."""
        return AccessToken(self.token, self._record(scopes, tenant_id, enable_cae))

    def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        """Return the fixed token (``SupportsTokenInfo`` protocol)."""
        opts = options or {}
        expires_on = self._record(scopes, opts.get("tenant_id"), bool(opts.get("enable_cae", False)))
        return AccessTokenInfo(self.token, expires_on)

    @property
    def scopes_requested(self) -> list[str]:
        """Every scope asked for so far, in order, without repeats."""
        seen: list[str] = []
        for request in list(self.token_requests):
            for scope in request.scopes:
                if scope not in seen:
                    seen.append(scope)
        return seen

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class RecordedRequest(NamedTuple):
    """A request as the stand-in saw it: path without query, query as a dict, parsed JSON body or None."""

    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class Reply:
    """An HTTP answer: ``body`` is JSON-serialised unless it is bytes (None means an empty body).

    ``injected``: the answer is a fault a test asked for (:meth:`HttpsStandIn.fail_next`, an outage).
    """

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    injected: bool = False


#: Every stand-in started in this process, in order; the test suite checks each one served no 5xx of its
#: own making (see tests/conftest.py).
STARTED: list[HttpsStandIn] = []


@dataclass
class _Fault:
    remaining: int
    status: int
    path_contains: str
    method: str


_FAULT_CODES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    408: "RequestTimeout",
    409: "Conflict",
    429: "Throttled",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


def error_reply(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    """A ``{"error": {"code", "message"}}`` answer, the shape both Key Vault and ARM use."""
    return Reply(status, {"error": {"code": code, "message": message}}, dict(headers or {}))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, owner: HttpsStandIn, context: ssl.SSLContext) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.handler_threads: set[threading.Thread] = set()
        self.track_lock = threading.Lock()
        super().__init__((LOOPBACK, 0), _Handler)
        # The handshake happens lazily in the handler thread, never in the accept loop.
        self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn(), i.e. a reverse DNS lookup: skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients dropping connections (and our own shutdown) are not worth a traceback.
        return


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus the
        # client's delayed ACK adds ~40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.track_lock:
            self.server.connections.add(self.connection)
            self.server.handler_threads.add(threading.current_thread())

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.track_lock:
                self.server.connections.discard(self.connection)
                self.server.handler_threads.discard(threading.current_thread())

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.owner._process(self.command, self.path, headers, raw)
        body = reply.body
        payload = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        self.send_response(reply.status)
        out_headers = {"x-ms-request-id": str(uuid.uuid4()), **reply.headers}
        if payload:
            out_headers.setdefault("Content-Type", "application/json; charset=utf-8")
        for key, value in out_headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)
        self.wfile.flush()


class HttpsStandIn:
    """Base of the stand-ins: an HTTPS server on ``127.0.0.1:<free port>`` in a daemon thread.

    Use as a context manager (or call :meth:`start` / :meth:`close`). Every request that carries a
    bearer token is appended to :attr:`requests` (as a :class:`RecordedRequest`) before fault
    injection and dispatch; requests without one get the subclass's 401 (counted in
    :attr:`challenges`, not recorded, and never consuming an injected fault). Bugs in a stand-in
    answer 500 and are kept in :attr:`server_errors`.

    The bearer token must be the one :attr:`credential` hands out: another token gets a 401 (counted in
    :attr:`rejected_tokens`, not recorded), as Azure answers a token it did not issue. Every 5xx the
    stand-in answered that no test injected is listed in :attr:`uninjected_5xx`.
    """

    #: error code for a body that is not JSON
    bad_json_code = "BadRequest"

    def __init__(self, *, token: str | None = None) -> None:
        # A fresh token per stand-in (unless a test names one), so a client holding another one is refused.
        self.credential = StaticTokenCredential(token if token is not None else secrets.token_urlsafe(16))
        self.requests: list[RecordedRequest] = []
        self.challenges = 0
        self.rejected_tokens = 0
        self.server_errors: list[str] = []
        self.uninjected_5xx: list[str] = []
        self.url = ""
        self.cert_path = ""
        self.key_path = ""
        self._lock = threading.RLock()
        self._faults: list[_Fault] = []
        self._available = True
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the certificate, bind a free loopback port and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("stand-in already started")
        self._tmp = tempfile.TemporaryDirectory(prefix="standin-tls-")
        self.cert_path, self.key_path = generate_self_signed_cert(self._tmp.name)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        self._server = _Server(self, context)
        self.url = f"https://{LOOPBACK}:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}-{self._server.server_port}",
            daemon=True,
        )
        self._thread.start()
        STARTED.append(self)

    def close(self) -> None:
        """Stop serving, drop open keep-alive connections and delete the certificate files."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            if self._thread is not None:
                self._thread.join(timeout=5)
            with server.track_lock:
                connections = list(server.connections)
                threads = list(server.handler_threads)
            for conn in connections:
                # socket.socket.shutdown, not SSLSocket.shutdown: wake the blocked reader only.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(conn, socket.SHUT_RDWR)
            server.server_close()
            for thread in threads:
                thread.join(timeout=2)
        self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- test controls -------------------------------------------------------------------------
    def fail_next(self, count: int, status: int = 503, path_contains: str = "", *, method: str = "") -> None:
        """Answer the next ``count`` authenticated requests whose path contains ``path_contains`` (and
        whose method is ``method``, when given) with ``status`` and a service-shaped error body.

        429 and 503 carry ``Retry-After: 0``. Note that azure-core retries *any* status when a
        ``Retry-After`` header is present, and 500/503/504 even for POST.
        """
        if count < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            self._faults.append(_Fault(count, status, path_contains, method.upper()))

    def set_available(self, available: bool) -> None:
        """While False, every authenticated request is answered 503 (with ``Retry-After: 0``)."""
        with self._lock:
            self._available = available

    def requests_matching(self, path_contains: str = "", method: str = "") -> list[RecordedRequest]:
        """The recorded requests whose path contains ``path_contains`` (and method matches)."""
        with self._lock:
            return [r for r in self.requests if path_contains in r.path and (not method or r.method == method.upper())]

    # -- hooks for subclasses ------------------------------------------------------------------
    def _unauthorized(self) -> Reply:
        """The answer to a request without a bearer token."""
        return error_reply(401, "Unauthorized", "The request carries no bearer token.")

    def _invalid_token(self) -> Reply:
        """The answer to a bearer token this stand-in did not issue (Azure's wording)."""
        return error_reply(401, "InvalidAuthenticationToken", "The access token is invalid.")

    def _dispatch(self, request: RecordedRequest, headers: dict[str, str]) -> Reply:
        """Serve an authenticated, recorded request that no fault intercepted."""
        raise NotImplementedError

    def _fault_reply(self, status: int, message: str) -> Reply:
        headers = {"Retry-After": "0"} if status in (429, 503) else {}
        reply = error_reply(status, _FAULT_CODES.get(status, f"Error{status}"), message, headers)
        reply.injected = True
        return reply

    # -- request processing ----------------------------------------------------------------------
    def _process(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Reply:
        try:
            reply = self._process_unsafe(method, target, headers, raw)
        except Exception as exc:
            text = "".join(traceback.format_exception(exc))
            with self._lock:
                self.server_errors.append(text)
            reply = error_reply(500, "InternalServerError", f"stand-in bug: {exc!r}")
        if reply.status >= 500 and not reply.injected:
            with self._lock:
                self.uninjected_5xx.append(f"{method} {urlsplit(target).path}: {reply.status} {reply.body}")
        return reply

    def _process_unsafe(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Reply:
        parts = urlsplit(target)
        path = unquote(parts.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            with self._lock:
                self.challenges += 1
            return self._unauthorized()
        if not hmac.compare_digest(token.strip().encode(), self.credential.token.encode()):
            with self._lock:
                self.rejected_tokens += 1
            return self._invalid_token()

        body: Any = None
        bad_json = False
        if raw.strip():
            try:
                body = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                body = raw.decode("utf-8", errors="replace")
                bad_json = True
        request = RecordedRequest(method.upper(), path, query, body)

        with self._lock:
            self.requests.append(request)
            if not self._available:
                return self._fault_reply(503, "The service is unavailable (stand-in outage).")
            fault = next(
                (
                    f
                    for f in self._faults
                    if f.remaining > 0 and f.path_contains in path and (not f.method or f.method == request.method)
                ),
                None,
            )
            if fault is not None:
                fault.remaining -= 1
                self._faults = [f for f in self._faults if f.remaining > 0]
                return self._fault_reply(fault.status, f"Injected fault {fault.status}.")

        if bad_json:
            return error_reply(400, self.bad_json_code, "The request body is not valid JSON.")
        return self._dispatch(request, headers)
