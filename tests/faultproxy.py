"""A fault-injecting HTTP proxy for tests: sits on 127.0.0.1 in front of an S3 endpoint (moto) and fails a
seeded fraction of requests with ``500 InternalError``, ``503 SlowDown`` or a TCP connection reset.

Requests that are not failed are forwarded byte for byte (request line, headers in their original order and
spelling, ``Host`` included, and the body, chunked or not), because SigV4 signatures cover the Host header
and the payload. The one exception is ``Expect: 100-continue``: the proxy answers the ``100 Continue`` itself
and drops that header upstream (clients never sign it). A failed request is answered *before* it reaches
the upstream server, so it has no side effect there and a retry is always safe.

Usage::

    with FaultProxy("http://127.0.0.1:5000", fault_rate=0.25, seed=0) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        ...
        assert proxy.faults["reset"] > 0

The proxy stops when the ``with`` block ends, and by itself after ``max_seconds`` in any case.
"""

from __future__ import annotations

import http.client
import random
import socket
import socketserver
import struct
import threading
import uuid
from collections import Counter
from urllib.parse import urlparse

FAULT_KINDS = ("500", "503", "reset")

_ERRORS = {
    "500": (
        500,
        "Internal Server Error",
        "InternalError",
        "We encountered an internal error. Please try again.",
    ),
    "503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "403": (403, "Forbidden", "AccessDenied", "Access Denied"),
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}
_MAX_LINE = 65536


class _BadRequest(Exception):
    pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy


class _Handler(socketserver.StreamRequestHandler):
    """One client connection: HTTP/1.1 keep-alive, one request at a time."""

    server: _Server

    def setup(self) -> None:
        super().setup()
        self.request.settimeout(self.server.proxy.io_timeout)
        self.server.proxy._track(self.request, add=True)

    def finish(self) -> None:
        self.server.proxy._track(self.request, add=False)
        try:
            super().finish()
        except OSError:
            pass

    def handle(self) -> None:
        proxy = self.server.proxy
        try:
            while not proxy._stopped.is_set():
                if not self._one_request(proxy):
                    return
        except (OSError, _BadRequest, http.client.HTTPException):
            return

    # -- reading the client's request verbatim

    def _read_line(self) -> bytes:
        line = self.rfile.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise _BadRequest("line too long")
        return line

    def _read_chunked(self) -> bytes:
        """The raw chunked body, chunk headers and trailers included (it is forwarded as it came)."""
        raw = bytearray()
        while True:
            size_line = self._read_line()
            if not size_line:
                raise _BadRequest("eof in chunked body")
            raw += size_line
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while True:  # trailers up to the empty line
                    trailer = self._read_line()
                    if not trailer:
                        raise _BadRequest("eof in trailers")
                    raw += trailer
                    if trailer in (b"\r\n", b"\n"):
                        return bytes(raw)
            data = self.rfile.read(size + 2)  # chunk + CRLF
            if len(data) != size + 2:
                raise _BadRequest("eof in chunk")
            raw += data

    def _one_request(self, proxy: FaultProxy) -> bool:
        request_line = self._read_line()
        if not request_line or request_line in (b"\r\n", b"\n"):
            return False
        parts = request_line.decode("latin-1").split()
        if len(parts) != 3:
            raise _BadRequest(f"bad request line {request_line!r}")
        method = parts[0].upper()
        header_lines: list[bytes] = []
        headers: dict[str, str] = {}
        expects_continue = False
        while True:
            line = self._read_line()
            if not line:
                raise _BadRequest("eof in headers")
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            key = name.strip().lower()
            if key == "expect" and value.strip().lower() == "100-continue":
                expects_continue = True  # answered here, not forwarded
                continue
            header_lines.append(line)
            headers[key] = value.strip()
        if expects_continue:
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._read_chunked()
        else:
            length = int(headers.get("content-length", "0") or 0)
            body = self.rfile.read(length) if length else b""
            if len(body) != length:
                raise _BadRequest("eof in body")
        keep_alive = headers.get("connection", "").lower() != "close"

        path = parts[1].split("?", 1)[0]
        fault = "403" if method in ("GET", "HEAD") and proxy._denied(path) else proxy._draw_fault()
        if fault == "reset":
            # RST instead of FIN: the client sees "connection reset by peer" while waiting for the answer.
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.request.close()
            return False
        if fault is not None:
            self._send_error(fault, method, keep_alive)
            return keep_alive
        self._forward(proxy, method, request_line, header_lines, body, keep_alive)
        return keep_alive

    # -- answers

    def _send_error(self, fault: str, method: str, keep_alive: bool) -> None:
        status, reason, code, message = _ERRORS[fault]
        request_id = uuid.uuid4().hex[:16].upper()
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>{request_id}</RequestId></Error>"
        ).encode()
        if method == "HEAD":
            body = b""
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            "Content-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"x-amz-request-id: {request_id}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        ).encode()
        self.wfile.write(head + body)
        self.wfile.flush()

    def _forward(
        self,
        proxy: FaultProxy,
        method: str,
        request_line: bytes,
        header_lines: list[bytes],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        with socket.create_connection(
            (proxy.upstream_host, proxy.upstream_port), timeout=proxy.io_timeout
        ) as up:
            up.sendall(request_line + b"".join(header_lines) + b"\r\n" + body)
            resp = http.client.HTTPResponse(up, method=method)
            resp.begin()
            while resp.status == 100:  # should not happen (Expect is dropped); skip interim answers anyway
                resp = http.client.HTTPResponse(up, method=method)
                resp.begin()
            data = resp.read()
            lines = [f"HTTP/1.1 {resp.status} {resp.reason}\r\n"]
            for name, value in resp.getheaders():
                if name.lower() in _HOP_BY_HOP and not (
                    method == "HEAD" and name.lower() == "content-length"
                ):
                    continue
                lines.append(f"{name}: {value}\r\n")
            if method != "HEAD":
                lines.append(f"Content-Length: {len(data)}\r\n")
            lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
        self.wfile.write("".join(lines).encode("latin-1") + data)
        self.wfile.flush()
        proxy._count_forwarded(method)


class FaultProxy:
    """Threaded loopback proxy that injects S3-style faults at ``fault_rate`` (0..1), reproducibly by ``seed``.

    ``faults`` counts the injected faults per kind (``"500"``, ``"503"``, ``"reset"``), ``forwarded`` the
    requests passed through per HTTP method. ``fault_rate`` may be changed while the proxy runs.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        fault_rate: float = 0.25,
        seed: int = 0,
        kinds: tuple[str, ...] = FAULT_KINDS,
        io_timeout: float = 60.0,
        max_seconds: float = 900.0,
        deny: tuple[str, ...] = (),
    ):
        parsed = urlparse(upstream_url)
        if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the fault proxy only fronts loopback servers, not {upstream_url!r}")
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; choose from {FAULT_KINDS}")
        self.upstream_host = parsed.hostname
        self.upstream_port = parsed.port or 80
        self.fault_rate = fault_rate
        self.kinds = tuple(kinds)
        self.deny = tuple(deny)  # path suffixes answered 403 AccessDenied on GET/HEAD, like an object ACL
        self.io_timeout = io_timeout
        self.max_seconds = max_seconds
        self.faults: Counter[str] = Counter({k: 0 for k in FAULT_KINDS})
        self.forwarded: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._stopped = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Timer | None = None
        self.url = ""

    # -- lifecycle

    def start(self) -> FaultProxy:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()
        self._watchdog = threading.Timer(self.max_seconds, self.stop)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # unblock handler threads waiting on idle keep-alive connections
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def total_faults(self) -> int:
        with self._lock:
            return sum(self.faults.values())

    # -- used by the handler threads

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _draw_fault(self) -> str | None:
        with self._lock:
            if self._rng.random() >= self.fault_rate:
                return None
            kind = self._rng.choice(self.kinds)
            self.faults[kind] += 1
            return kind

    def _denied(self, path: str) -> bool:
        if any(path.endswith(d) for d in self.deny):
            with self._lock:
                self.faults["403"] += 1
            return True
        return False

    def _count_forwarded(self, method: str) -> None:
        with self._lock:
            self.forwarded[method] += 1
