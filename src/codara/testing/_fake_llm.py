"""A loopback HTTP server that speaks enough of the OpenAI and Anthropic wire protocols for tests.

The real ``openai`` and ``anthropic`` client libraries (and Pydantic AI on top of them) talk to it
exactly as they talk to the providers: OpenAI ``POST /v1/chat/completions`` and Anthropic
``POST /v1/messages``, both as plain JSON or as a server-sent event stream when the client asks
for ``"stream": true``. Replies come from a script of :class:`FakeReply` items, and every request
the server received is kept in :attr:`FakeLLMServer.requests` so a test can assert what the client
sent.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

__all__ = ["FakeLLMServer", "FakeReply", "FakeRequest"]

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class FakeReply:
    """One scripted answer: ``FakeReply(text=...)``, :meth:`tool_call` or :meth:`error`."""

    text: str | None = None
    tool_name: str | None = None
    tool_args: dict[str, Any] | None = None
    status: int = 200
    message: str = ""
    input_tokens: int = 10
    output_tokens: int = 5
    headers: dict[str, str] = field(default_factory=dict)
    also: tuple[tuple[str, dict[str, Any]], ...] = ()  # more tool calls in the same answer

    @classmethod
    def tool_call(cls, name: str, args: dict[str, Any] | None = None, **kw: Any) -> FakeReply:
        """The model asks to call tool ``name`` with ``args``."""
        return cls(tool_name=name, tool_args=args or {}, **kw)

    @classmethod
    def tool_calls(cls, *calls: tuple[str, dict[str, Any]], **kw: Any) -> FakeReply:
        """The model asks for several tool calls at once (they may run in parallel)."""
        (name, args), *rest = calls
        return cls(tool_name=name, tool_args=args, also=tuple(rest), **kw)

    def calls(self) -> list[tuple[str, dict[str, Any]]]:
        first = [] if self.tool_name is None else [(self.tool_name, self.tool_args or {})]
        return first + list(self.also)

    @classmethod
    def error(
        cls, status: int, message: str = "", *, retry_after_ms: int | None = None
    ) -> FakeReply:
        """The provider answers with HTTP ``status`` and a provider-shaped error body."""
        headers = {} if retry_after_ms is None else {"retry-after-ms": str(retry_after_ms)}
        return cls(status=status, message=message or f"fake error {status}", headers=headers)


@dataclass(frozen=True)
class FakeRequest:
    """One request the server received: lower-cased headers and the parsed JSON body."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeLLMServer:
    """A scripted OpenAI/Anthropic lookalike on ``127.0.0.1`` with an OS-chosen port.

    Use it as a context manager; ``openai_base_url`` (``http://127.0.0.1:PORT/v1``) and
    ``anthropic_base_url`` (``http://127.0.0.1:PORT``) are what the real clients take as
    ``base_url``. When the script runs out the server answers 500 with ``x-should-retry: false``.
    """

    def __init__(self, replies: Iterable[FakeReply] = ()) -> None:
        self._replies: deque[FakeReply] = deque(replies)
        self._requests: list[FakeRequest] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        handler = type("_Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="fake-llm-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
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

    # -- script and record -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeLLMServer is not running; use it as a context manager")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (with ``/v1``); same as :attr:`openai_base_url`."""
        return self.openai_base_url

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, *replies: FakeReply) -> None:
        """Queue more replies, answered in order."""
        with self._lock:
            self._replies.extend(replies)

    @property
    def requests(self) -> list[FakeRequest]:
        """A copy of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def pending(self) -> int:
        """How many scripted replies are still unanswered."""
        with self._lock:
            return len(self._replies)

    def _take(self, request: FakeRequest) -> FakeReply | None:
        with self._lock:
            self._requests.append(request)
            return self._replies.popleft() if self._replies else None

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"


class _Handler(BaseHTTPRequestHandler):
    fake: FakeLLMServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests read :attr:`FakeLLMServer.requests` instead."""

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        path = self.path.split("?", 1)[0]
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.fake._take(FakeRequest("POST", self.path, headers, body))
        flavour = "anthropic" if path.endswith("/messages") else "openai"
        if not path.endswith(("/chat/completions", "/messages")):
            self._send_json(404, _error_body(flavour, 404, f"FakeLLMServer: no route {path}"))
            return
        if reply is None:
            error = _error_body(flavour, 500, "FakeLLMServer: no scripted reply left")
            self._send_json(500, error, {"x-should-retry": "false"})
            return
        if reply.status >= 400:
            error = _error_body(flavour, reply.status, reply.message)
            self._send_json(reply.status, error, reply.headers)
            return
        model = str(body.get("model", "fake-model")) if isinstance(body, dict) else "fake-model"
        stream = isinstance(body, dict) and body.get("stream") is True
        if flavour == "openai":
            completion = _openai_completion(self.fake, model, reply)
            if stream:
                self._send_sse(_openai_chunks(completion), openai=True)
            else:
                self._send_json(200, completion, reply.headers)
        else:
            message = _anthropic_message(self.fake, model, reply)
            if stream:
                self._send_sse(_anthropic_events(message), openai=False)
            else:
                self._send_json(200, message, reply.headers)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_sse(self, events: Iterator[dict[str, Any]], *, openai: bool) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        for data in events:
            prefix = "" if openai else f"event: {data['type']}\n"
            self.wfile.write(f"{prefix}data: {json.dumps(data)}\n\n".encode())
        if openai:
            self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _error_body(flavour: str, status: int, message: str) -> dict[str, Any]:
    if flavour == "anthropic":
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    kind = "invalid_request_error" if status < 500 else "server_error"
    code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _openai_completion(fake: FakeLLMServer, model: str, reply: FakeReply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
    finish = "stop"
    if reply.tool_name is not None:
        message["tool_calls"] = [
            {
                "id": fake._next_id("call_"),
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for name, args in reply.calls()
        ]
        finish = "tool_calls"
    usage = {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }
    return {
        "id": fake._next_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": usage,
    }


def _openai_chunks(completion: dict[str, Any]) -> Iterator[dict[str, Any]]:
    head = {k: completion[k] for k in ("id", "created", "model")} | {
        "object": "chat.completion.chunk"
    }
    choice = completion["choices"][0]
    message = choice["message"]
    delta: dict[str, Any] = {"role": "assistant", "content": message["content"]}
    if "tool_calls" in message:
        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
    yield head | {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    done = {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}
    yield head | {"choices": [done]}
    yield head | {"choices": [], "usage": completion["usage"]}


def _anthropic_message(fake: FakeLLMServer, model: str, reply: FakeReply) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if reply.text is not None:
        content.append({"type": "text", "text": reply.text})
    stop_reason = "end_turn"
    for name, args in reply.calls():
        tool_id = fake._next_id("toolu_")
        content.append({"type": "tool_use", "id": tool_id, "name": name, "input": args})
        stop_reason = "tool_use"
    return {
        "id": fake._next_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
    }


def _anthropic_events(message: dict[str, Any]) -> Iterator[dict[str, Any]]:
    start = message | {"content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": message["usage"]["input_tokens"], "output_tokens": 1}
    yield {"type": "message_start", "message": start}
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            opened = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            opened = block | {"input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        yield {"type": "content_block_start", "index": index, "content_block": opened}
        yield {"type": "content_block_delta", "index": index, "delta": delta}
        yield {"type": "content_block_stop", "index": index}
    stop = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    usage = {"output_tokens": message["usage"]["output_tokens"]}
    yield {"type": "message_delta", "delta": stop, "usage": usage}
    yield {"type": "message_stop"}
