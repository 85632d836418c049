"""A loopback proxy in front of moto that slows down or hangs chosen AWS operations.

Operations are named by their `X-Amz-Target` (e.g. "AmazonSQS.SendMessageBatch",
"AWSEvents.PutEvents"); everything else passes straight through. A hung request is held
open (the connection accepted, never answered) until the proxy stops, as an endpoint that
accepts and never answers does.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

RELAY_TARGETS = frozenset({"AmazonSQS.SendMessageBatch", "AWSEvents.PutEvents"})
_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection"})


class AwsProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.delays: dict[str, float] = {}  # target -> seconds
        self.hanging: set[str] = set()
        self.seen: list[str] = []
        self._stopping = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes: without TCP_NODELAY the body waits
            # for the client's delayed ACK (about 40 ms per answer).
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                target = self.headers.get("X-Amz-Target", "")
                proxy.seen.append(target)
                if target in proxy.hanging:
                    proxy._stopping.wait()
                    self.close_connection = True
                    return
                delay = proxy.delays.get(target)
                if delay:
                    time.sleep(delay)
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    payload = answer.read()
                    self.send_response(answer.status)
                    for name, value in answer.getheaders():
                        if name.lower() not in (
                            "content-length",
                            "transfer-encoding",
                            "connection",
                        ):
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    upstream.close()

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> AwsProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
