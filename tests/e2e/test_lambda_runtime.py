"""The local runtime behaves like the Lambda service, and the answer waits for no relay.

Functions run as processes under AWS's runtime interface client against the local Runtime
and Extensions API (local.lambda_runtime). An AWS proxy in front of moto slows down or hangs
SQS SendMessageBatch and EventBridge PutEvents, the relay's two calls.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from local.dev import function_environment
from local.functions import LocalFunction
from local.lambda_runtime import Environment
from local.template import FunctionSpec
from tests.aws_proxy import RELAY_TARGETS, AwsProxy
from tests.integration.conftest import FORM_KEY, App
from tests.support import REPO, LambdaContext, http_event, load_handler, reset_process_state

PERSON = {"name": "Ada Lovelace", "email": "ada@example.com", "consent": True}


def unsent(app: App) -> int:
    with psycopg.connect(app.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()
    assert row is not None
    return int(row[0])


def api_spec(app: App) -> FunctionSpec:
    return next(s for s in app.stack.functions() if s.logical_id == "ApiFunction")


def environment(app: App, aws_url: str, **settings: str) -> Environment:
    spec = api_spec(app)
    env = function_environment(app.stack, spec.logical_id, app.database_url, aws_url)
    started = Environment(
        name=spec.logical_id,
        handler=spec.handler,
        code_dir=spec.code_uri,
        python_path=list(spec.layers),
        environment={**env, **settings},
        timeout_seconds=spec.timeout,
        memory_mb=spec.memory,
    )
    started.wait_initialised()
    return started


def post_lead(env: Environment, email: str = "ada@example.com") -> tuple[dict[str, Any], Any]:
    event = http_event(
        "POST", "/public/leads", body={**PERSON, "email": email}, headers={"x-form-key": FORM_KEY}
    )
    response, finish = env.invoke(event)
    assert response["statusCode"] == 201, response
    return response, finish


@pytest.fixture
def proxy(app: App) -> Iterator[AwsProxy]:
    with AwsProxy(app.moto_url) as running:
        yield running


def sweep(app: App) -> dict[str, Any]:
    """The OutboxSweeper, in-process, with AWS reachable and no grace period."""
    import os

    os.environ["OUTBOX_SWEEP_MIN_AGE_SECONDS"] = "0"
    try:
        reset_process_state()
        result: dict[str, Any] = load_handler("outbox_sweeper").handler({}, LambdaContext())
    finally:
        del os.environ["OUTBOX_SWEEP_MIN_AGE_SECONDS"]
        reset_process_state()
    return result


def test_a_thread_working_after_its_handler_returned_stalls_until_the_next_invocation() -> None:
    # Given a function whose thread ticks every 10 ms, in an environment of its own
    spec_dir = REPO / "tests" / "functions" / "afterwork"
    env = Environment(
        name="AfterWork",
        handler="handler.handler",
        code_dir=spec_dir,
        python_path=[],
        environment={"PATH": "/usr/bin:/bin"},
        timeout_seconds=10,
        memory_mb=128,
    )
    try:
        env.wait_initialised()
        first, finish = env.invoke({})
        finish()
        # When it is idle for a second between two invocations
        time.sleep(1.0)
        second, finish = env.invoke({})
        finish()
        # Then its thread did not run meanwhile: frozen, as Lambda freezes it
        assert second["ticks"] - first["ticks"] < 30, (first, second)
        assert second["largestGapSeconds"] >= 0.9
    finally:
        env.shutdown()


def test_the_answer_leaves_before_the_relay_and_the_relay_finishes_after_it(
    app: App, proxy: AwsProxy
) -> None:
    # Given SQS and EventBridge answering after 0.6 s each (inside the relay's budget)
    proxy.delays = dict.fromkeys(RELAY_TARGETS, 0.6)
    env = environment(app, proxy.url)
    try:
        # When a lead is posted
        _, finish = post_lead(env)
        # Then the answer is there while the relay has sent nothing yet
        assert unsent(app) == 2
        # And the relay runs after it, inside the invoke phase (the extension), sending both
        report = finish()
        assert unsent(app) == 0
        assert report.invoke_phase_ms > report.duration_ms
    finally:
        env.shutdown()


def test_an_endpoint_that_never_answers_holds_nobody_beyond_the_relay_budget(
    app: App, proxy: AwsProxy
) -> None:
    # Given SQS and EventBridge accepting connections and never answering, and one
    # environment of the API (concurrency 1: the second request waits for the first's phase)
    proxy.hanging = set(RELAY_TARGETS)
    spec = api_spec(app)
    function = LocalFunction(
        spec,
        function_environment(app.stack, spec.logical_id, app.database_url, proxy.url),
        concurrency=1,
    )
    try:
        event = http_event("POST", "/public/leads", body=PERSON, headers={"x-form-key": FORM_KEY})
        function.invoke(event)  # the cold start, apart
        time.sleep(3)
        # When two leads are posted back to back
        timings = []
        for n in range(2):
            started = time.perf_counter()
            event = http_event(
                "POST",
                "/public/leads",
                body={**PERSON, "email": f"lead{n}@example.com"},
                headers={"x-form-key": FORM_KEY},
            )
            assert function.invoke(event)["statusCode"] == 201
            timings.append(time.perf_counter() - started)
        # Then neither waited for the hung endpoint: the second waited at most the first's
        # relay budget (2 s), never the function's timeout the endpoint would have cost
        assert max(timings) < spec.timeout / 2, timings
    finally:
        function.stop()
    # And the sweeper delivers every row once
    assert unsent(app) == 6  # three leads: a job message and an event each
    assert sweep(app)["sent"] == 6
    messages = app.sqs().get_queue_attributes(
        QueueUrl=app.queue_url("NotificationsQueue"),
        AttributeNames=["ApproximateNumberOfMessages"],
    )["Attributes"]["ApproximateNumberOfMessages"]
    assert int(messages) == 3


def test_an_environment_shut_down_before_its_relay_loses_nothing(app: App, proxy: AwsProxy) -> None:
    # Given a relay slowed down to 3 s
    proxy.delays = dict.fromkeys(RELAY_TARGETS, 3.0)
    env = environment(app, proxy.url)
    # When a lead is answered and the environment ends before the relay could send
    post_lead(env)
    env.kill()
    # Then its rows wait in the outbox, and the sweeper sends them
    assert unsent(app) == 2
    assert sweep(app)["sent"] == 2
    assert unsent(app) == 0


class FailingExtensionsApi:
    """An Extensions API that registers the extension, gives it one INVOKE, then fails."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        calls: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._send(200, b"{}", {"Lambda-Extension-Identifier": "ext-1"})

            def do_GET(self) -> None:
                calls.append(self.path)
                if len(calls) == 1:
                    self._send(200, json.dumps({"eventType": "INVOKE"}).encode(), {})
                else:
                    self._send(500, b"{}", {})

        self.calls = calls
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_when_the_extension_thread_dies_the_relay_runs_before_the_answer(
    app: App, api: Any
) -> None:
    from frontdesk.platform.extension import AfterResponseExtension
    from frontdesk.services import get_services

    # Given the relay extension registered, then its loop ended (the Extensions API failed)
    extensions_api = FailingExtensionsApi()
    relayed: list[list[int]] = []
    extension = AfterResponseExtension(extensions_api.address, relayed.append)
    extension.start()
    get_services().handoff.relay_after_response_with(extension.after_response)
    assert extension.after_response([])  # the one INVOKE it got
    deadline = time.monotonic() + 5
    while extension.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not extension.alive
    # When a lead is posted through the handler
    event = http_event("POST", "/public/leads", body=PERSON, headers={"x-form-key": FORM_KEY})
    response = api.handler(event, LambdaContext())
    # Then it is answered, and its rows were relayed on the way out (not lost, not waiting)
    assert response["statusCode"] == 201
    assert unsent(app) == 0
    assert json.loads(response["body"])["data"]["jobId"]
