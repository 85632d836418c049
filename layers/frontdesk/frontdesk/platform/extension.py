"""An internal Lambda extension that works after the response has gone out.

Lambda keeps an execution environment in its invoke phase until the runtime *and every
registered extension* have asked for their next event. An internal extension is a thread of
the function's own process registered through the Extensions API
(`AWS_LAMBDA_RUNTIME_API`), during init. Its loop:

1. ask for the next event: the call returns when an invocation starts (INVOKE);
2. wait until the handler of that invocation has returned (the entry point hands over
   what is left to do, possibly nothing, with `after_response`);
3. do it, while the runtime sends the handler's answer to the client;
4. ask for the next event again, which ends this invocation's invoke phase.

So the client has its answer before the work starts, the work runs on a live (not frozen)
environment, and the next invocation waits for it, by at most the work's own budget.
Internal extensions may register for INVOKE only (SHUTDOWN goes to external ones): what the
environment could not finish before it was shut down is left for the sweeper.
"""

from __future__ import annotations

import http.client
import json
import queue
import threading
from collections.abc import Callable
from typing import Any

from frontdesk.observability import logger

API_VERSION = "2020-01-01"
NAME = "frontdesk-after-response"


class ExtensionError(RuntimeError):
    """The Extensions API refused or could not be reached."""


class AfterResponseExtension:
    def __init__(self, runtime_api: str, work: Callable[[list[int]], object]) -> None:
        self._runtime_api = runtime_api
        self._work = work
        self._handed: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._identifier = ""

    def start(self) -> None:
        """Register (during init: this returns before the runtime asks for its first event),
        then run the loop on a daemon thread."""
        _, headers = self._call(
            "POST",
            f"/{API_VERSION}/extension/register",
            {"Lambda-Extension-Name": NAME},
            json.dumps({"events": ["INVOKE"]}).encode(),
        )
        self._identifier = headers.get("lambda-extension-identifier", "")
        if not self._identifier:
            raise ExtensionError("the Extensions API gave no extension identifier")
        self._thread = threading.Thread(target=self._loop, name=NAME, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def after_response(self, outbox_ids: list[int]) -> bool:
        """Hand over the invocation's leftover work; False when the loop is gone (then the
        caller must do it itself)."""
        if not self.alive:
            return False
        self._handed.put(outbox_ids)
        return True

    def _loop(self) -> None:
        while True:
            try:
                event, _ = self._call(
                    "GET",
                    f"/{API_VERSION}/extension/event/next",
                    {"Lambda-Extension-Identifier": self._identifier},
                )
            except Exception as exc:
                # The Extensions API is gone (the environment is shutting down): stop.
                logger.warning("extension stopped", extra={"error": type(exc).__name__})
                return
            if event.get("eventType") != "INVOKE":
                return
            outbox_ids = self._handed.get()
            try:
                self._work(outbox_ids)
            except Exception as exc:  # never let one invocation's work end the loop
                logger.warning("after-response work failed", extra={"error": type(exc).__name__})

    def _call(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        # No timeout: `next` blocks until the next invocation, which may be hours away.
        connection = http.client.HTTPConnection(self._runtime_api)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            if response.status >= 300:
                raise ExtensionError(f"{method} {path}: HTTP {response.status}")
            answer: dict[str, Any] = json.loads(payload) if payload else {}
            return answer, {k.lower(): v for k, v in response.getheaders()}
        finally:
            connection.close()
