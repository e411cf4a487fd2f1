"""A loopback JSON API that misbehaves on request, for testing HTTP sources.

:class:`FakeAPIServer` is a real HTTP/1.1 server on ``127.0.0.1`` (or another loopback
address) with an OS-chosen port, so the real ``httpx`` client of
:class:`codara.sources._http.HttpSource` talks to it exactly as to a production API. It
answers from a script of :class:`FakeResponse` items (in order, whatever the path), or from a
handler per path for answers that depend on the request (pagination by cursor or offset).
Each response can misbehave: answer late (beyond a client's timeout), with a 5xx or a 429
and a ``Retry-After``, with the wrong content type, a body cut short, or a redirect anywhere.
Every request received is kept in :attr:`FakeAPIServer.requests`, headers included, so a test
asserts what the client sent and how many attempts it made instead of timing anything.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeAPIServer", "FakeHTTPRequest", "FakeResponse"]


@dataclass(frozen=True)
class FakeResponse:
    """One scripted answer. ``body`` is sent as JSON unless it is ``bytes`` or ``str``."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = "application/json"
    """None sends no Content-Type header at all."""
    delay: float = 0.0
    """Seconds to wait before answering (stopping the server cuts the wait short)."""
    cut_after: int | None = None
    """Send only this many bytes of the body, then close the connection, while
    ``Content-Length`` announces the whole body: a reply truncated in transit."""

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> FakeResponse:
        """A redirect to ``location`` (absolute or relative)."""
        return cls(status=status, headers={"location": location}, content_type=None)

    @classmethod
    def error(
        cls, status: int, body: Any = None, *, retry_after: str | None = None
    ) -> FakeResponse:
        """An error answer, with ``Retry-After`` (seconds or an HTTP-date) if given."""
        headers = {} if retry_after is None else {"retry-after": retry_after}
        return cls(status=status, body={"error": f"fake {status}"} if body is None else body,
                   headers=headers)  # fmt: skip

    def payload(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


@dataclass(frozen=True)
class FakeHTTPRequest:
    """One request the server received."""

    method: str
    target: str
    """The request target as sent: the raw (percent-encoded) path and query."""
    headers: dict[str, str]
    """Header names lower-cased."""

    @property
    def path(self) -> str:
        """The raw path, without the query."""
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        """The decoded query parameters."""
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    def param(self, name: str) -> str | None:
        """The first value of query parameter ``name``, or None."""
        values = self.query.get(name)
        return values[0] if values else None


Handler = Callable[[FakeHTTPRequest], FakeResponse]


class FakeAPIServer:
    """A scripted JSON API on a loopback address; use it as a context manager.

    ``add(...)`` queues answers for any path; ``route(path, handler)`` answers one path from
    the request. When neither has an answer the server replies 404 with a body saying so
    (a 4xx: a client does not retry it, so a missing script line fails fast).
    """

    def __init__(self, responses: Iterable[FakeResponse] = (), *, host: str = "127.0.0.1") -> None:
        self.host = host
        self._script: deque[FakeResponse] = deque(responses)
        self._routes: dict[str, Handler] = {}
        self._requests: list[FakeHTTPRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        handler = type("_Handler", (_Handler,), {"fake": self})
        self._stopping.clear()
        self._httpd = ThreadingHTTPServer((self.host, 0), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="fake-api-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # release delayed answers first
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeAPIServer is not running; use it as a context manager")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``, the origin of this server."""
        return f"http://{self.host}:{self.port}"

    def add(self, *responses: FakeResponse) -> None:
        """Queue answers, given in order to the requests that no route handles."""
        with self._lock:
            self._script.extend(responses)

    def route(self, path: str, handler: Handler) -> None:
        """Answer requests for ``path`` (the raw path, no query) with ``handler(request)``."""
        with self._lock:
            self._routes[path] = handler

    @property
    def requests(self) -> list[FakeHTTPRequest]:
        """A copy of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def pending(self) -> int:
        """How many scripted answers are still unused."""
        with self._lock:
            return len(self._script)

    def _answer(self, request: FakeHTTPRequest) -> FakeResponse:
        with self._lock:
            self._requests.append(request)
            handler = self._routes.get(request.path)
            if handler is None and self._script:
                return self._script.popleft()
        if handler is not None:
            return handler(request)
        return FakeResponse(404, {"error": f"FakeAPIServer: no answer scripted for {request.path}"})


class _Handler(BaseHTTPRequestHandler):
    fake: FakeAPIServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm on, the second waits for
    # the client's delayed ACK of the first: 40 ms per request on Linux loopback.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests read :attr:`FakeAPIServer.requests` instead."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        length = int(headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        reply = self.fake._answer(FakeHTTPRequest(method, self.path, headers))
        if reply.delay and self.fake._stopping.wait(reply.delay):
            self.close_connection = True
            return
        data = reply.payload()
        try:
            self.send_response(reply.status)
            if reply.content_type is not None:
                self.send_header("content-type", reply.content_type)
            self.send_header("content-length", str(len(data)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.cut_after is not None:
                self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(data if reply.cut_after is None else data[: reply.cut_after])
            self.wfile.flush()
        except OSError:
            pass  # the client gave up (a timeout): nothing to answer to
        if reply.cut_after is not None:
            self.close_connection = True
