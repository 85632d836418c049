"""A fake of the generic JSON provider API (see frontdesk.providers), on loopback.

A real HTTP server (a thread), so the adapter, its timeouts and retries run for real. It
keeps leads and a change feed in memory, signs webhooks like the real thing, and can be
told to rate-limit (429 + Retry-After), fail (5xx) or be slow, from Python or over HTTP.
It counts the API requests in flight (`in_flight`, its peak `max_in_flight`) and when each
began (`started`, time.monotonic()), so tests and benchmarks can see how a caller spreads
its calls.


    POST /_control/rate-limit {"requests": 3, "retryAfter": 1}
    POST /_control/fail       {"requests": 2, "status": 503}
    POST /_control/slow       {"seconds": 0.5}
    POST /_control/reset      {}
    POST /_control/stats      {"clear": true}  -> {"maxInFlight", "started"} (then cleared)
    POST /_control/leads      {"name": ..., "email": ...}   -> the change it made
    POST /_control/bookings   {"doctor_id": ..., "starts_at": ..., "ends_at": ..., "name": ...,
                               "email": ..., "booking_id": ..., "status": ...} -> the change

    python -m local.fake_provider [--port 8090]     (make dev starts one and prints its URL)
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from frontdesk.platform.signature import SIGNATURE_HEADER, sign

DEFAULT_API_KEY = "fake-provider-api-key"

# How often the serving loop looks for `stop()`: shutdown() waits up to this long
# (socketserver's default of 0.5 s adds half a second to every test that stops one).
STOP_POLL_SECONDS = 0.05


class FakeProvider:
    def __init__(self, api_key: str = DEFAULT_API_KEY, port: int = 0) -> None:
        self.api_key = api_key
        self.leads: dict[str, dict[str, Any]] = {}
        self.bookings: dict[str, dict[str, Any]] = {}
        self.changes: list[dict[str, Any]] = []
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._rate_limited = 0
        self._retry_after = 1.0
        self._failing = 0
        self._fail_status = 503
        self._delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.started: list[float] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeProvider:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": STOP_POLL_SECONDS},
            name="fake-provider",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ behaviour

    def rate_limit(self, requests: int, retry_after: float = 1.0) -> None:
        with self._lock:
            self._rate_limited, self._retry_after = requests, retry_after

    def fail(self, requests: int, status: int = 503) -> None:
        with self._lock:
            self._failing, self._fail_status = requests, status

    def slow(self, seconds: float) -> None:
        with self._lock:
            self._delay = seconds

    def reset(self) -> None:
        with self._lock:
            self._rate_limited = self._failing = 0
            self._delay = 0.0
            self.leads.clear()
            self.bookings.clear()
            self.changes.clear()
            self.requests.clear()
            self.started.clear()
            self.max_in_flight = 0

    # ------------------------------------------------------------ data

    def add_lead(
        self,
        name: str,
        email: str | None = None,
        phone: str | None = None,
        *,
        lead_id: str | None = None,
        notes: str | None = None,
        consent: bool = True,
    ) -> dict[str, Any]:
        """Create or change a lead; returns the change (the webhook's body)."""
        lead_id = lead_id or f"L-{uuid.uuid4().hex[:12]}"
        now = datetime.now(UTC).isoformat()
        with self._lock:
            created = lead_id not in self.leads
            self.leads[lead_id] = {
                "id": lead_id,
                "name": name,
                "email": email,
                "phone": phone,
                "notes": notes,
                "consent": consent,
                "updatedAt": now,
            }
            change = {
                "id": f"chg_{uuid.uuid4().hex}",
                "type": "lead.created" if created else "lead.updated",
                "resource": "lead",
                "resourceId": lead_id,
                "occurredAt": now,
            }
            self.changes.append(change)
        return change

    def add_booking(
        self,
        doctor_id: str,
        starts_at: str,
        ends_at: str,
        name: str,
        email: str | None = None,
        phone: str | None = None,
        *,
        booking_id: str | None = None,
        status: str = "booked",
    ) -> dict[str, Any]:
        """Create or change a booking (times ISO 8601 with offset); returns the change."""
        booking_id = booking_id or f"B-{uuid.uuid4().hex[:12]}"
        now = datetime.now(UTC).isoformat()
        with self._lock:
            created = booking_id not in self.bookings
            self.bookings[booking_id] = {
                "id": booking_id,
                "doctorId": doctor_id,
                "startsAt": starts_at,
                "endsAt": ends_at,
                "status": status,
                "patient": {"name": name, "email": email, "phone": phone},
                "updatedAt": now,
            }
            change = {
                "id": f"chg_{uuid.uuid4().hex}",
                "type": "booking.created" if created else f"booking.{status}",
                "resource": "booking",
                "resourceId": booking_id,
                "occurredAt": now,
            }
            self.changes.append(change)
        return change

    @staticmethod
    def webhook(change: dict[str, Any], secret: str, at: int | None = None) -> tuple[bytes, str]:
        """The body and Webhook-Signature header the provider would send for a change."""
        body = json.dumps(change).encode()
        return body, sign(secret.encode(), int(time.time()) if at is None else at, body)

    def deliver(self, target_url: str, change: dict[str, Any], secret: str) -> int:
        """POST a signed webhook to Frontdesk (the local runtime's demo); the status."""
        body, signature = self.webhook(change, secret)
        request = urllib.request.Request(  # noqa: S310 (loopback)
            target_url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
            return int(answer.status)

    # ------------------------------------------------------------ HTTP

    def _answer(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(path)
        if parts.path.startswith("/_control/"):
            return self._control(parts.path.removeprefix("/_control/"), body)
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.started.append(time.monotonic())
        try:
            return self._api(method, parts, headers)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _api(self, method: str, parts: Any, headers: Any) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.requests.append(parts.path)
            delay = self._delay
            if self._failing > 0:
                self._failing -= 1
                return self._fail_status, {"error": "unavailable"}, {}
            if self._rate_limited > 0:
                self._rate_limited -= 1
                return 429, {"error": "slow down"}, {"Retry-After": f"{self._retry_after:g}"}
        if delay:
            time.sleep(delay)
        if headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, {"error": "bad credentials"}, {}
        if method != "GET":
            return 405, {"error": "method not allowed"}, {}
        if parts.path == "/v1/account":
            return 200, {"id": "acct_fake", "name": "Fake provider account"}, {}
        if parts.path == "/v1/changes":
            query = parse_qs(parts.query)
            since = int(query.get("since", ["0"])[0] or 0)
            limit = max(1, min(100, int(query.get("limit", ["100"])[0])))
            with self._lock:
                page = self.changes[since : since + limit]
                total = len(self.changes)
            end = since + len(page)
            return 200, {"changes": page, "nextCursor": str(end), "hasMore": end < total}, {}
        if parts.path.startswith("/v1/leads/"):
            with self._lock:
                lead = self.leads.get(parts.path.removeprefix("/v1/leads/"))
            return (200, lead, {}) if lead else (404, {"error": "no such lead"}, {})
        if parts.path.startswith("/v1/bookings/"):
            with self._lock:
                booking = self.bookings.get(parts.path.removeprefix("/v1/bookings/"))
            return (200, booking, {}) if booking else (404, {"error": "no such booking"}, {})
        return 404, {"error": "no such route"}, {}

    def _control(self, action: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        data = json.loads(body or b"{}")
        if action == "rate-limit":
            self.rate_limit(int(data.get("requests", 1)), float(data.get("retryAfter", 1)))
        elif action == "fail":
            self.fail(int(data.get("requests", 1)), int(data.get("status", 503)))
        elif action == "slow":
            self.slow(float(data.get("seconds", 0)))
        elif action == "reset":
            self.reset()
        elif action == "leads":
            return 201, self.add_lead(**data), {}
        elif action == "bookings":
            return 201, self.add_booking(**data), {}
        elif action == "stats":
            with self._lock:
                stats = {"maxInFlight": self.max_in_flight, "started": list(self.started)}
                if data.get("clear"):
                    self.max_in_flight, self.started = 0, []
            return 200, stats, {}
        else:
            return 404, {"error": "unknown control"}, {}
        return 200, {"ok": True}, {}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, payload, extra = fake._answer(self.command, self.path, self.headers, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the local runtime logs invocations, not provider calls

        return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    args = parser.parse_args(argv)
    fake = FakeProvider(args.api_key, args.port).start()
    print(f"fake provider on {fake.url} (API key {args.api_key!r}); Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
