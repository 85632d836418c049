"""A small OpenAI-compatible chat-completions server on loopback, for tests and benchmarks.

    with FakeLlm() as llm:                    # listens on 127.0.0.1:<free port>
        llm.script(429, 500, 200)             # the next answers' status codes, then 200s
        llm.delay_seconds = 3.0               # every answer waits this long
        llm.hang()                            # requests wait until release() (or stop)
        llm.base_url                          # http://127.0.0.1:<port>/v1

It speaks just enough of the protocol (POST /v1/chat/completions) for a real HTTP client:
a JSON answer with choices, usage and model; error statuses carry an OpenAI-style error
body and a Retry-After header on 429. `on_request` runs in the server thread before each
answer (tests use it to look at the database while the worker waits for the model).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# How often the serving loop looks for `stop()`: shutdown() waits up to this long
# (socketserver's default of 0.5 s adds half a second to every test that stops one).
STOP_POLL_SECONDS = 0.05


class FakeLlm:
    def __init__(self, *, delay_seconds: float = 0.0, model: str = "fake-gpt") -> None:
        self.delay_seconds = delay_seconds
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str] = []
        self.on_request: Callable[[dict[str, Any]], None] | None = None
        self.retry_after_seconds = 1
        self.refuse = False  # answer 200 with a refusal
        self._statuses: deque[int] = deque()
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

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages") or []
        question = str(messages[-1].get("content", "")) if messages else ""
        prompt_tokens = sum(len(str(m.get("content", ""))) // 4 + 1 for m in messages)
        text = f"(fake model) answer #{len(self.requests)} to a {len(question)}-character question"
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if self.refuse:
            message = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(text) // 4 + 1,
                "total_tokens": prompt_tokens + len(text) // 4 + 1,
            },
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
                self._send(200, fake._answer(body))

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
