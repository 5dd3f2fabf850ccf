"""Object storage that fails on purpose: an HTTP proxy on 127.0.0.1 in front of the local S3 server
(``tests.faults.s3``) that drops connections, answers 500 and 503, and delays a seeded fraction of
the requests, as a busy bucket or a flaky network does.

    with local_s3_server() as s3, FlakyS3Proxy(s3, FaultRates(error_503=0.1), seed=0) as endpoint:
        ... AWS_ENDPOINT_URL=endpoint: clients talk to the proxy as to S3 ...

Each request draws its fate from one ``np.random.Generator(seed)``, in the order requests arrive:

- ``drop_before``: the connection is closed before the request is forwarded (it never happened);
- ``drop_after``: the request is forwarded, then the connection is closed without an answer (it
  happened, and the client does not know: a retried conditional PUT then meets its own object);
- ``error_500`` / ``error_503``: S3's InternalError / SlowDown answer, without forwarding;
- ``slow``: forwarded, answered after ``delay_s`` seconds.

``counts`` says how many requests met each fate ("forwarded" for the unharmed ones);
``injected`` how many met a fault.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

import numpy as np

FAULTS = ("drop_before", "drop_after", "error_500", "error_503", "slow")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}
S3_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


@dataclass(frozen=True)
class FaultRates:
    """The fraction of requests meeting each fault (the rest are forwarded unharmed)."""

    drop_before: float = 0.0
    drop_after: float = 0.0
    error_500: float = 0.0
    error_503: float = 0.0
    slow: float = 0.0
    delay_s: float = 0.3

    def __post_init__(self) -> None:
        if sum(getattr(self, fault) for fault in FAULTS) > 1.0:
            raise ValueError("fault rates add up to more than 1")

    def describe(self) -> str:
        rates = [f"{fault} {getattr(self, fault):.0%}" for fault in FAULTS if getattr(self, fault)]
        return ", ".join(rates) or "no faults"


class FlakyS3Proxy:
    """The proxy: a threaded HTTP server on a free port of 127.0.0.1, forwarding to ``upstream``."""

    def __init__(
        self,
        upstream: str,
        rates: FaultRates,
        *,
        seed: int,
        only: Callable[[str, Message], bool] | None = None,
    ) -> None:
        """``only(method, headers)``, if given, picks the requests that may meet a fault (e.g. the
        conditional PUTs that claims are made of); the others are always forwarded."""
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rates = rates
        self.only = only
        self.rng = np.random.default_rng(seed)
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def draw(self, method: str, headers: Message) -> str:
        """The next request's fate."""
        if self.only is not None and not self.only(method, headers):
            return "forwarded"
        with self.lock:
            value = float(self.rng.random())
            edge = 0.0
            for fault in FAULTS:
                edge += getattr(self.rates, fault)
                if value < edge:
                    self.counts[fault] += 1
                    return fault
            self.counts["forwarded"] += 1
            return "forwarded"

    @property
    def injected(self) -> int:
        return sum(count for fate, count in self.counts.items() if fate != "forwarded")

    def set_rates(self, rates: FaultRates) -> None:
        """Change the faults from now on (a bucket that recovers, or one that starts failing)."""
        with self.lock:
            self.rates = rates

    def __enter__(self) -> str:
        self.thread.start()
        return self.endpoint

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def _handler_for(proxy: FlakyS3Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
        upstream: http.client.HTTPConnection | None = None

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            for attempt in range(2):  # a kept-alive upstream connection may have been closed
                if self.upstream is None:
                    self.upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    self.upstream.request(self.command, self.path, body=body, headers=headers)
                    response = self.upstream.getresponse()
                    data = response.read()
                    return response.status, response.reason, response.getheaders(), data
                except (http.client.HTTPException, OSError):
                    self.upstream.close()
                    self.upstream = None
                    if attempt:
                        raise
            raise AssertionError("unreachable")

        def _drop(self) -> None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def _answer(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes):
            self.send_response(status, reason)
            for name, value in headers:
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
            self.send_header("Content-Length", length if self.command == "HEAD" else str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _s3_error(self, status: int) -> None:
            code, message = S3_ERRORS[status]
            data = (
                '<?xml version="1.0" encoding="UTF-8"?>'
                f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
            ).encode()
            self._answer(status, code, [("Content-Type", "application/xml")], data)

        def handle_any(self) -> None:
            body = self._body()
            fate = proxy.draw(self.command, self.headers)
            if fate == "drop_before":
                return self._drop()
            if fate in ("error_500", "error_503"):
                return self._s3_error(int(fate[-3:]))
            answer = self._forward(body)
            if fate == "drop_after":
                return self._drop()
            if fate == "slow":
                time.sleep(proxy.rates.delay_s)
            self._answer(*answer)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_any

    return Handler
