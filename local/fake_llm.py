"""A small OpenAI-compatible chat-completions server on loopback, for tests and benchmarks.

    with FakeLlm() as llm:                    # listens on 127.0.0.1:<free port>
        llm.script(429, 500, 200)             # the next answers' status codes, then 200s
        llm.delay_seconds = 3.0               # every answer waits this long to begin
        llm.hang()                            # requests wait until release() (or stop)
        llm.base_url                          # http://127.0.0.1:<port>/v1

        llm.tokens = 50                       # a streamed answer is 50 tokens ...
        llm.token_seconds = 0.05              # ... one every 50 ms (2.5 s in all)
        llm.cut_stream(after_tokens=5)        # the next stream drops its connection
        llm.fail_stream(after_tokens=5)       # the next stream reports an error event

It speaks just enough of the protocol (POST /v1/chat/completions) for a real HTTP client:
a JSON answer with choices, usage and model; with `"stream": true`, server-sent events over
chunked transfer encoding, as OpenAI sends them (a comment to keep the connection alive, a
first chunk with the role, one chunk per token, a chunk with the finish reason, the usage
in a last chunk when `stream_options.include_usage` asks for it, then `data: [DONE]`),
written token by token over time. Error statuses carry an OpenAI-style error body and a
Retry-After header on 429. `on_request` runs in the server thread before each answer
(tests use it to look at the database while the worker waits for the model), `on_token`
before each streamed token (its number, from 1).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

# How often the serving loop looks for `stop()`: shutdown() waits up to this long
# (socketserver's default of 0.5 s adds half a second to every test that stops one).
STOP_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class StreamFault:
    """What goes wrong with one streamed answer after `after_tokens` tokens: the connection
    dropped without the end of the body ("cut"), or an error event (`error_type`)."""

    kind: Literal["cut", "error"]
    after_tokens: int
    error_type: str = "server_error"


class FakeLlm:
    def __init__(self, *, delay_seconds: float = 0.0, model: str = "fake-gpt") -> None:
        self.delay_seconds = delay_seconds
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str] = []
        self.on_request: Callable[[dict[str, Any]], None] | None = None
        self.retry_after_seconds = 1
        self.refuse = False  # answer 200 with a refusal
        # Streaming: the answer's length in tokens (None: its own words), the pause before
        # each token, whether the answer quotes the question, whether the usage chunk is
        # sent when asked for, and whether `stream_options` is refused with a 400.
        self.tokens: int | None = None
        self.token_seconds = 0.0
        self.echo = False
        self.usage_in_stream = True
        self.refuse_stream_options = False
        self.on_token: Callable[[int], None] | None = None
        self._statuses: deque[int] = deque()
        self._faults: deque[StreamFault] = deque()
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._released.set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": STOP_POLL_SECONDS},
            name="fake-llm",
            daemon=True,
        )

    # ---------------------------------------------------------------- control

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def script(self, *statuses: int) -> None:
        """Answer the next requests with these statuses, in order; 200 afterwards."""
        with self._lock:
            self._statuses.extend(statuses)

    def cut_stream(self, after_tokens: int) -> None:
        """The next streamed answer drops its connection after this many tokens."""
        with self._lock:
            self._faults.append(StreamFault("cut", after_tokens))

    def fail_stream(self, after_tokens: int, error_type: str = "server_error") -> None:
        """The next streamed answer sends an error event after this many tokens, then ends."""
        with self._lock:
            self._faults.append(StreamFault("error", after_tokens, error_type))

    def hang(self) -> None:
        """Hold every request until `release()`: a model that never answers."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.requests)

    def start(self) -> FakeLlm:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeLlm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- serving

    def _next_status(self, body: dict[str, Any], authorization: str) -> int:
        with self._lock:
            self.requests.append(body)
            self.authorizations.append(authorization)
            return self._statuses.popleft() if self._statuses else 200

    def _next_fault(self) -> StreamFault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _text(self, body: dict[str, Any]) -> str:
        messages = body.get("messages") or []
        question = str(messages[-1].get("content", "")) if messages else ""
        text = f"(fake model) answer #{len(self.requests)} to a {len(question)}-character question"
        if self.echo:
            text += f', which was: "{question}"'
        return text

    def _tokens_of(self, text: str) -> list[str]:
        """The answer as the tokens it streams: its words, padded or cut to `tokens`."""
        words = re.findall(r"\S+\s*", text)
        if self.tokens is None:
            return words
        words = words[: self.tokens]
        filler = [f" w{i}" for i in range(len(words), self.tokens)]
        if filler:
            words[-1] = words[-1].rstrip()
        return words + filler

    def _usage(self, body: dict[str, Any], text: str) -> dict[str, int]:
        messages = body.get("messages") or []
        prompt_tokens = sum(len(str(m.get("content", ""))) // 4 + 1 for m in messages)
        completion_tokens = len(text) // 4 + 1
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def _chunk(self, number: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        text = self._text(body)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if self.refuse:
            message = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": self._usage(body, text),
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: tests and benchmarks print their own results

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found", "type": "not_found"}})
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._send(400, {"error": {"message": "bad JSON", "type": "invalid_request"}})
                    return
                status = fake._next_status(body, self.headers.get("Authorization") or "")
                if fake.on_request is not None:
                    fake.on_request(body)
                if fake.delay_seconds:
                    time.sleep(fake.delay_seconds)
                fake._released.wait()
                if status == 200 and body.get("stream_options") and fake.refuse_stream_options:
                    status = 400
                    error = {
                        "message": "Unrecognized request argument supplied: stream_options",
                        "type": "invalid_request_error",
                    }
                    self._send(status, {"error": error})
                    return
                if status != 200:
                    kind = "rate_limit_exceeded" if status == 429 else "server_error"
                    if 400 <= status < 500 and status != 429:
                        kind = "invalid_request_error"
                    headers = (
                        {"Retry-After": str(fake.retry_after_seconds)} if status == 429 else {}
                    )
                    error = {"message": f"fake error {status}", "type": kind}
                    self._send(status, {"error": error}, headers)
                    return
                if body.get("stream"):
                    self._stream(body)
                else:
                    self._send(200, fake._answer(body))

            def _stream(self, body: dict[str, Any]) -> None:
                number = len(fake.requests)
                fault = fake._next_fault()
                text = fake._text(body)
                if fake.refuse:
                    events = [fake._chunk(number, {"role": "assistant", "refusal": ""}, None)]
                    events.append(
                        fake._chunk(number, {"refusal": "I can't help with that."}, "stop")
                    )
                    self._events([": keep-alive", *events, "[DONE]"])
                    return
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Cache-Control", "no-cache")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self._write(": keep-alive\n\n")
                    role = fake._chunk(number, {"role": "assistant", "content": ""}, None)
                    self._write(f"data: {json.dumps(role)}\n\n")
                    tokens = fake._tokens_of(text)
                    for i, token in enumerate(tokens, start=1):
                        if fault is not None and i > fault.after_tokens:
                            break
                        if fake.token_seconds:
                            time.sleep(fake.token_seconds)
                        if fake.on_token is not None:
                            fake.on_token(i)
                        chunk = fake._chunk(number, {"content": token}, None)
                        self._write(f"data: {json.dumps(chunk)}\n\n")
                    if fault is not None and fault.kind == "cut":
                        # Gone without the end of the body: a crash, a proxy's idle timeout.
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    if fault is not None:
                        error = {"message": "fake stream error", "type": fault.error_type}
                        self._write(f"data: {json.dumps({'error': error})}\n\n")
                    else:
                        end = fake._chunk(number, {}, "stop")
                        self._write(f"data: {json.dumps(end)}\n\n")
                        options = body.get("stream_options") or {}
                        if options.get("include_usage") and fake.usage_in_stream:
                            usage = {
                                **fake._chunk(number, {}, None),
                                "choices": [],
                                "usage": fake._usage(body, "".join(tokens)),
                            }
                            self._write(f"data: {json.dumps(usage)}\n\n")
                        self._write("data: [DONE]\n\n")
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client went away (its deadline)

            def _events(self, events: list[Any]) -> None:
                """A whole stream at once: comments (str starting ':'), chunks, then [DONE]."""
                lines = "".join(
                    f"{e}\n\n"
                    if isinstance(e, str) and e.startswith(":")
                    else f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n"
                    for e in events
                )
                data = lines.encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _write(self, text: str) -> None:
                """One chunk of the chunked body, sent at once."""
                data = text.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _send(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): nothing to tell it

        return Handler
