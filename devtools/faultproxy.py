"""A small HTTP proxy on loopback that injects faults between a real client and a real server.

Used by the fault-injection tests in front of Azurite: it answers chosen requests with an error
status (a throttling 503, say) without forwarding them, forwards a request and cuts the
response's body after some bytes (a download broken mid-stream), or holds a request until released
(a stalled put). Everything else is relayed as is.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}


@dataclass
class Rule:
    """One injected fault: applies to the next ``remaining`` matching requests."""

    action: str  # "status" | "cut" | "hold"
    remaining: int
    method: str = ""
    path_contains: str = ""
    body_contains: bytes = b""
    status: int = 503
    after_bytes: int = 0
    hits: int = 0
    #: For "hold": the request is forwarded once this is set (a put that stalls, then completes).
    release: threading.Event = field(default_factory=threading.Event)

    def matches(self, method: str, path: str, body: bytes = b"") -> bool:
        return (
            self.remaining > 0
            and (not self.method or self.method == method)
            and (not self.path_contains or self.path_contains in path)
            and (not self.body_contains or self.body_contains in body)
        )


@dataclass
class Seen:
    """A request the proxy handled, and what it did."""

    method: str
    path: str
    fault: str = ""


class FaultProxy:
    """Relays HTTP to ``127.0.0.1:target_port`` with injectable faults; a context manager."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def address_string(self) -> str:
                return "127.0.0.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                rule = proxy._take(self.command, self.path, body)
                if rule is not None and rule.action == "status":
                    proxy._record(self.command, self.path, f"status {rule.status}")
                    # Shaped like the service's own error body (code, message, request id).
                    payload = (
                        b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
                        b"<Message>The server is busy (injected by the test proxy).\nRequestId:00000000-0000-0000"
                        b"-0000-000000000000\nTime:2026-01-01T00:00:00.0000000Z</Message></Error>"
                    )
                    self.send_response(rule.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("x-ms-error-code", "ServerBusy")
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if rule is not None and rule.action == "hold":
                    rule.release.wait(60)
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if rule is not None and rule.action == "cut":
                    proxy._record(self.command, self.path, f"cut after {rule.after_bytes} bytes")
                    self.wfile.write(data[: rule.after_bytes])
                    self.wfile.flush()
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                proxy._record(self.command, self.path)
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_MERGE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _take(self, method: str, path: str, body: bytes = b"") -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path, body):
                    rule.remaining -= 1
                    rule.hits += 1
                    return rule
        return None

    def _record(self, method: str, path: str, fault: str = "") -> None:
        with self._lock:
            self.seen.append(Seen(method, path, fault))

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def fail_next(self, count: int, status: int = 503, *, method: str = "", path_contains: str = "") -> Rule:
        """Answer the next ``count`` matching requests with ``status`` (not forwarded)."""
        return self._add(Rule("status", count, method, path_contains, status=status))

    def cut_next(self, count: int, after_bytes: int, *, method: str = "GET", path_contains: str = "") -> Rule:
        """Forward the next ``count`` matching requests but cut each response body after ``after_bytes``."""
        return self._add(Rule("cut", count, method, path_contains, after_bytes=after_bytes))

    def hold_next(self, count: int, *, method: str = "", path_contains: str = "", body_contains: bytes = b"") -> Rule:
        """Hold the next ``count`` matching requests until ``rule.release`` is set, then forward them."""
        return self._add(Rule("hold", count, method, path_contains, body_contains=body_contains))

    def faults(self) -> list[Seen]:
        """Requests that got a fault."""
        with self._lock:
            return [s for s in self.seen if s.fault]

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
