"""Outbound webhooks through the API, the bus (moto, rules from template.yaml), the webhooks
queue and WebhookWorker, to a real HTTP receiver on loopback: signed deliveries a receiver
verifies with our own verifier, retries after 500s, an endpoint disabled after a run of
failures (with its event), replay, the SSRF rule at registration and after DNS, tenant
isolation, and a dead-lettered delivery's reason."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest

from frontdesk.platform.signature import check_timestamp, parse_signature, verify
from tests.integration.conftest import App
from tests.support import (
    LambdaContext,
    http_event,
    http_response,
    load_handler,
    reset_process_state,
    sqs_event,
)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver on loopback: answers the next status of `statuses` (then 200)."""

    statuses: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    delay: float = 0.0  # seconds before it answers
    got_one: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.requests.append(
                    Received({k.lower(): v for k, v in self.headers.items()}, body)
                )
                status = state.statuses.pop(0) if state.statuses else 200
            state.got_one.set()
            time.sleep(state.delay)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def hooks(app: App, monkeypatch: pytest.MonkeyPatch) -> App:
    # Loopback receivers over plain HTTP, allowed explicitly as in make dev; retries at once;
    # an endpoint disabled after 3 failed attempts in a row.
    monkeypatch.setenv("WEBHOOK_ALLOW_HTTP", "true")
    monkeypatch.setenv("WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")
    monkeypatch.setenv("WEBHOOK_RETRY_BASE_SECONDS", "0")
    monkeypatch.setenv("WEBHOOK_DISABLE_AFTER_FAILURES", "3")
    reset_process_state()
    return app


@pytest.fixture
def api(hooks: App) -> Any:
    return load_handler("api")


@pytest.fixture
def worker(hooks: App) -> Any:
    return load_handler("webhook_worker")


def call(
    api: Any, method: str, path: str, clinic: uuid.UUID, body: Any = None, **headers: str
) -> tuple[int, dict[str, str], Any]:
    event = http_event(method, path, body=body, clinic_id=clinic, headers=headers)
    event["requestContext"]["authorizer"]["jwt"]["claims"]["roles"] = "[staff admin]"
    return http_response(api.handler(event, LambdaContext()))


def register(
    api: Any, app: App, url: str, types: list[str], clinic: uuid.UUID | None = None
) -> Any:
    status, _, answer = call(
        api,
        "POST",
        "/webhooks/endpoints",
        clinic or app.clinic_id,
        {"url": url, "eventTypes": types},
    )
    assert status == 201, answer
    return answer["data"]


def create_lead(api: Any, app: App, clinic: uuid.UUID | None = None) -> str:
    body = {"name": "Ada Lovelace", "email": "ada@example.org", "consent": True}
    status, _, answer = call(api, "POST", "/leads", clinic or app.clinic_id, body)
    assert status == 201, answer
    lead_id: str = answer["data"]["id"]
    return lead_id


def drain(app: App, worker: Any) -> int:
    """WebhookWorker over the webhooks queue until it is empty (a failed delivery's backoff
    is 0 s here, so its next attempt is the next receive)."""
    seen = 0
    for _ in range(20):
        got = app.drain("WebhookWorker", worker, retry_after_seconds=0)
        seen += got
        if got == 0:
            time.sleep(0.05)
            if app.drain("WebhookWorker", worker, retry_after_seconds=0) == 0:
                break
    return seen


def rows(app: App, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(app.database_url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_lead_reaches_the_endpoint_signed_and_the_receiver_verifies_it(
    hooks: App, api: Any, worker: Any, receiver: Receiver
) -> None:
    # Given an endpoint for lead.created (the secret shown once, never again)
    endpoint = register(api, hooks, receiver.url, ["lead.created"])
    secret = endpoint["secret"]
    assert secret.startswith("whsec_")
    _, _, listed = call(api, "GET", "/webhooks/endpoints", hooks.clinic_id)
    _, _, read = call(api, "GET", f"/webhooks/endpoints/{endpoint['id']}", hooks.clinic_id)
    assert secret not in json.dumps(listed) and secret not in json.dumps(read)
    assert rows(
        hooks,
        "SELECT count(*) FROM webhook_endpoints WHERE secret_enc::text LIKE %s",
        f"%{secret.encode().hex()}%",
    ) == [(0,)]
    # When a lead is created and WebhookWorker runs
    lead_id = create_lead(api, hooks)
    drain(hooks, worker)
    # Then the receiver got it once, and verifies it with the product's own verifier
    assert len(receiver.requests) == 1
    got = receiver.requests[0]
    signature = parse_signature(got.headers["webhook-signature"])
    check_timestamp(signature, now=time.time(), tolerance_seconds=300)
    verify(secret.encode(), signature, got.body)
    body = json.loads(got.body)
    assert body["type"] == "lead.created" and body["data"]["leadId"] == lead_id
    assert body["clinicId"] == str(hooks.clinic_id)
    assert got.headers["webhook-event-id"] == body["id"]
    assert got.headers["webhook-event-type"] == "lead.created"
    assert got.headers["webhook-attempt"] == "1"
    # And no PII went out
    assert "ada" not in got.body.decode().lower()
    # And a wrong secret does not verify
    with pytest.raises(Exception, match="does not match"):
        verify(b"whsec_another", signature, got.body)
    # And the delivery is recorded with its attempt
    _, _, deliveries = call(
        api, "GET", f"/webhooks/endpoints/{endpoint['id']}/deliveries", hooks.clinic_id
    )
    [delivery] = deliveries["data"]
    assert delivery["status"] == "delivered" and delivery["eventId"] == body["id"]
    _, _, detail = call(api, "GET", f"/webhooks/deliveries/{delivery['id']}", hooks.clinic_id)
    [attempt] = detail["data"]["attemptLog"]
    assert attempt["statusCode"] == 200 and attempt["succeeded"] and attempt["error"] is None


@pytest.mark.slow
def test_500s_are_retried_until_the_receiver_takes_it(
    hooks: App, api: Any, worker: Any, receiver: Receiver
) -> None:
    # Given a receiver that answers 500 twice, then 200
    endpoint = register(api, hooks, receiver.url, ["lead.created"])
    receiver.statuses = [500, 500]
    # When a lead is created and WebhookWorker runs (retries come back through the queue)
    create_lead(api, hooks)
    drain(hooks, worker)
    # Then the third attempt delivered it, with the same event id each time
    assert [r.headers["webhook-attempt"] for r in receiver.requests] == ["1", "2", "3"]
    assert len({r.headers["webhook-event-id"] for r in receiver.requests}) == 1
    _, _, deliveries = call(
        api, "GET", f"/webhooks/endpoints/{endpoint['id']}/deliveries", hooks.clinic_id
    )
    [delivery] = deliveries["data"]
    assert delivery["status"] == "delivered" and delivery["attempts"] == 3
    _, _, detail = call(api, "GET", f"/webhooks/deliveries/{delivery['id']}", hooks.clinic_id)
    log = detail["data"]["attemptLog"]
    assert [(a["statusCode"], a["error"]) for a in log] == [
        (500, "HTTP 500"),
        (500, "HTTP 500"),
        (200, None),
    ]
    assert all(a["latencyMs"] >= 0 for a in log)
    # And the success ended the endpoint's run of failures
    _, _, read = call(api, "GET", f"/webhooks/endpoints/{endpoint['id']}", hooks.clinic_id)
    assert read["data"]["consecutiveFailures"] == 0 and read["data"]["status"] == "enabled"


@pytest.mark.slow
def test_an_endpoint_failing_in_a_row_is_disabled_with_an_event_and_replay_sends_again(
    hooks: App, api: Any, worker: Any, receiver: Receiver
) -> None:
    # Given a failing endpoint, and a monitor endpoint for webhook.endpoint_disabled
    failing = register(api, hooks, receiver.url, ["lead.created"])
    watcher = register(api, hooks, receiver.url + "/monitor", ["webhook.endpoint_disabled"])
    receiver.statuses = [500] * 3
    # When a lead is created and WebhookWorker runs
    create_lead(api, hooks)
    drain(hooks, worker)
    # Then after 3 failed attempts the endpoint is disabled, saying why
    _, _, read = call(api, "GET", f"/webhooks/endpoints/{failing['id']}", hooks.clinic_id)
    assert read["data"]["status"] == "disabled"
    assert read["data"]["disabledReason"] == "3 consecutive failed attempts"
    # And the webhook.endpoint_disabled event reached the monitor endpoint, signed with its own
    # secret
    disabled = [
        r
        for r in receiver.requests
        if r.headers["webhook-event-type"] == "webhook.endpoint_disabled"
    ]
    assert len(disabled) == 1
    verify(
        watcher["secret"].encode(),
        parse_signature(disabled[0].headers["webhook-signature"]),
        disabled[0].body,
    )
    event = json.loads(disabled[0].body)
    assert event["data"]["endpointId"] == failing["id"]
    assert event["data"]["consecutiveFailures"] == 3
    # And the delivery is no longer attempted (cancelled: the endpoint is disabled)
    attempts = [r for r in receiver.requests if r.headers["webhook-event-type"] == "lead.created"]
    assert len(attempts) == 3
    _, _, deliveries = call(
        api, "GET", f"/webhooks/endpoints/{failing['id']}/deliveries", hooks.clinic_id
    )
    [delivery] = deliveries["data"]
    assert delivery["status"] == "cancelled"
    # When an admin replays it while the endpoint is disabled: refused
    status, _, problem = call(
        api, "POST", f"/webhooks/deliveries/{delivery['id']}/replay", hooks.clinic_id
    )
    assert status == 409, problem
    # When the endpoint is enabled again and the delivery replayed (with an Idempotency-Key,
    # sent twice)
    status, _, enabled = call(
        api, "PATCH", f"/webhooks/endpoints/{failing['id']}", hooks.clinic_id, {"enabled": True}
    )
    assert status == 200 and enabled["data"]["consecutiveFailures"] == 0, enabled
    replays = [
        call(
            api,
            "POST",
            f"/webhooks/deliveries/{delivery['id']}/replay",
            hooks.clinic_id,
            **{"Idempotency-Key": "replay-1"},
        )
        for _ in range(2)
    ]
    assert [r[0] for r in replays] == [202, 202]
    assert replays[0][2]["data"]["id"] == replays[1][2]["data"]["id"]
    assert replays[1][1].get("idempotent-replayed") == "true"
    drain(hooks, worker)
    # Then the receiver got the event once more, with the same event id, and it is delivered
    again = [r for r in receiver.requests if r.headers["webhook-event-type"] == "lead.created"]
    assert len(again) == 4
    assert again[-1].headers["webhook-event-id"] == again[0].headers["webhook-event-id"]
    assert again[-1].headers["webhook-delivery-id"] == replays[0][2]["data"]["id"]
    _, _, detail = call(
        api, "GET", f"/webhooks/deliveries/{replays[0][2]['data']['id']}", hooks.clinic_id
    )
    assert detail["data"]["status"] == "delivered"
    assert detail["data"]["replayOf"] == delivery["id"]


def test_a_rotated_secret_signs_beside_the_new_one_until_it_expires(
    hooks: App, api: Any, worker: Any, receiver: Receiver
) -> None:
    # Given an endpoint whose receiver knows its secret
    endpoint = register(api, hooks, receiver.url, ["lead.created"])
    old = endpoint["secret"].encode()
    path = f"/webhooks/endpoints/{endpoint['id']}/rotate-secret"
    # When an admin rotates the secret (with an Idempotency-Key, sent twice)
    answers = [
        call(api, "POST", path, hooks.clinic_id, {}, **{"Idempotency-Key": "rotate-1"})
        for _ in range(2)
    ]
    # Then the answer shows a new secret, the same on the retry, and until when the old one
    # signs too (24 hours by default); no read shows either secret
    assert [status for status, _, _ in answers] == [200, 200]
    rotated = answers[0][2]["data"]
    new = rotated["secret"].encode()
    assert new != old and rotated["secret"].startswith("whsec_")
    assert answers[1][2]["data"]["secret"] == rotated["secret"]
    _, _, read = call(api, "GET", f"/webhooks/endpoints/{endpoint['id']}", hooks.clinic_id)
    assert read["data"]["previousSecretExpiresAt"] == rotated["previousSecretExpiresAt"]
    assert "secret" not in read["data"]
    for secret in (old, new):
        assert rows(
            hooks,
            "SELECT count(*) FROM webhook_endpoints"
            " WHERE secret_enc::text LIKE %s OR previous_secret_enc::text LIKE %s",
            f"%{secret.hex()}%",
            f"%{secret.hex()}%",
        ) == [(0,)]
    # And a delivery meanwhile carries both signatures: the receiver may check either
    create_lead(api, hooks)
    drain(hooks, worker)
    got = receiver.requests[-1]
    signature = parse_signature(got.headers["webhook-signature"])
    assert len(signature.signatures) == 2
    verify(new, signature, got.body)
    verify(old, signature, got.body)
    # When the old secret's time is up
    rows(
        hooks,
        "UPDATE webhook_endpoints SET previous_secret_expires_at = now() RETURNING id",
    )
    create_lead(api, hooks)
    drain(hooks, worker)
    # Then deliveries are signed with the new secret alone
    got = receiver.requests[-1]
    signature = parse_signature(got.headers["webhook-signature"])
    verify(new, signature, got.body)
    with pytest.raises(Exception, match="does not match"):
        verify(old, signature, got.body)
    _, _, read = call(api, "GET", f"/webhooks/endpoints/{endpoint['id']}", hooks.clinic_id)
    assert read["data"]["previousSecretExpiresAt"] is None
    # And a rotation asking 0 hours stops the replaced secret at once
    status, _, now = call(api, "POST", path, hooks.clinic_id, {"previousSecretValidHours": 0})
    assert status == 200 and now["data"]["previousSecretExpiresAt"] is None
    create_lead(api, hooks)
    drain(hooks, worker)
    signature = parse_signature(receiver.requests[-1].headers["webhook-signature"])
    assert len(signature.signatures) == 1
    verify(now["data"]["secret"].encode(), signature, receiver.requests[-1].body)
    # And more than a week, or another clinic's endpoint, is refused
    status, _, problem = call(api, "POST", path, hooks.clinic_id, {"previousSecretValidHours": 169})
    assert status == 422, problem
    other = uuid.uuid4()
    assert call(api, "POST", path, other, {})[0] in (403, 404)


def test_a_lead_lifecycle_event_reaches_an_endpoint_subscribed_to_it(
    hooks: App, api: Any, worker: Any, receiver: Receiver
) -> None:
    # Given an endpoint for lead.status_changed only
    register(api, hooks, receiver.url, ["lead.status_changed"])
    lead_id = create_lead(api, hooks)
    # When staff move the lead on and WebhookWorker runs
    status, _, moved = call(
        api, "PATCH", f"/leads/{lead_id}", hooks.clinic_id, {"status": "contacted"}
    )
    assert status == 200, moved
    drain(hooks, worker)
    # Then the endpoint got that event, and no other
    [got] = receiver.requests
    body = json.loads(got.body)
    assert body["type"] == "lead.status_changed" and body["data"]["leadId"] == lead_id
    assert (body["data"]["from"], body["data"]["to"]) == ("new", "contacted")


def test_an_event_delivered_twice_is_fanned_out_and_posted_once(
    hooks: App, api: Any, worker: Any, receiver: Receiver
) -> None:
    # Given an endpoint, and the lead.created event as the bus's rule put it on the queue
    register(api, hooks, receiver.url, ["lead.created"])
    create_lead(api, hooks)
    sqs, url = hooks.sqs(), hooks.queue_url("WebhooksQueue")
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=2)
    events = [m for m in received["Messages"] if '"lead.created"' in m["Body"]]
    assert len(events) == 1
    body = events[0]["Body"]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=events[0]["ReceiptHandle"])
    # When SQS hands it over twice in one batch, and once more later
    first = worker.handler(sqs_event([body, body]), LambdaContext())
    again = worker.handler(sqs_event([body]), LambdaContext())
    drain(hooks, worker)
    # Then every record succeeds, one delivery is made, and the receiver gets the event once
    assert first == again == {"batchItemFailures": []}
    assert rows(hooks, "SELECT count(*) FROM outbound_webhook_deliveries") == [(1,)]
    assert len(receiver.requests) == 1


def test_copies_of_a_delivery_message_post_it_once(
    hooks: App, api: Any, worker: Any, receiver: Receiver
) -> None:
    from frontdesk.platform.queues import WebhookDeliveryMessage

    # Given two deliveries to post (replays of a delivered one), and a receiver slow to answer
    register(api, hooks, receiver.url, ["lead.created"])
    create_lead(api, hooks)
    drain(hooks, worker)
    [(delivered,)] = rows(hooks, "SELECT id FROM outbound_webhook_deliveries")
    first, second = (
        call(api, "POST", f"/webhooks/deliveries/{delivered}/replay", hooks.clinic_id)[2]["data"]
        for _ in range(2)
    )

    def message(delivery: dict[str, Any]) -> str:
        body = WebhookDeliveryMessage(delivery_id=delivery["id"], clinic_id=hooks.clinic_id)
        return json.dumps(body.body())

    def posts(delivery: dict[str, Any]) -> int:
        return len(
            [r for r in receiver.requests if r.headers["webhook-delivery-id"] == delivery["id"]]
        )

    receiver.delay = 1.0
    # When one batch holds a message twice (SQS delivers at least once)
    answer = worker.handler(sqs_event([message(first), message(first)]), LambdaContext())
    # Then it is posted once, and neither record comes back
    assert answer == {"batchItemFailures": []}
    assert posts(first) == 1
    # When one worker is posting a delivery and another gets a copy of its message meanwhile
    receiver.got_one.clear()
    answers: list[Any] = []
    posting = threading.Thread(
        target=lambda: answers.append(worker.handler(sqs_event([message(second)]), LambdaContext()))
    )
    posting.start()
    assert receiver.got_one.wait(10)
    answers.append(worker.handler(sqs_event([message(second)]), LambdaContext()))
    posting.join(10)
    # Then the copy posts nothing and is done; the one posting records one attempt
    assert answers == [{"batchItemFailures": []}] * 2
    assert posts(second) == 1
    assert rows(
        hooks,
        "SELECT status, attempts, claimed_until FROM outbound_webhook_deliveries WHERE id = %s",
        second["id"],
    ) == [("delivered", 1, None)]
    # And a copy coming after it was delivered posts nothing either
    worker.handler(sqs_event([message(second)]), LambdaContext())
    assert posts(second) == 1


@pytest.mark.slow
def test_a_delivery_failing_every_attempt_is_dead_lettered_with_its_reason(
    hooks: App, api: Any, worker: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an endpoint that always answers 503, never disabled
    monkeypatch.setenv("WEBHOOK_DISABLE_AFTER_FAILURES", "1000")
    reset_process_state()
    fresh_worker = load_handler("webhook_worker")
    register(api, hooks, receiver.url, ["lead.created"])
    receiver.statuses = [503] * 20
    # When a lead is created and WebhookWorker runs until the queue is empty
    create_lead(api, hooks)
    drain(hooks, fresh_worker)
    # Then every attempt the queue allows was made (maxReceiveCount), and the message is on
    # the DLQ, where the operators' listing gives the delivery's reason
    assert len(receiver.requests) == 5
    ops = load_handler("ops")
    event = http_event(
        "GET", "/ops/dead-letters", clinic_id=hooks.clinic_id, query="queue=webhooks"
    )
    event["queryStringParameters"] = {"queue": "webhooks"}
    event["requestContext"]["authorizer"]["jwt"]["claims"]["roles"] = "[operator]"
    status, _, listed = http_response(ops.handler(event, LambdaContext()))
    assert status == 200, listed
    [letter] = listed["data"]
    assert letter["reason"] == "webhook delivery failed after 5 attempts: HTTP 503"
    # When the receiver is back and an operator replays the message
    receiver.statuses = []
    event = http_event(
        "POST",
        "/ops/dead-letters/replay",
        body={"queue": "webhooks", "all": True},
        clinic_id=hooks.clinic_id,
    )
    event["requestContext"]["authorizer"]["jwt"]["claims"]["roles"] = "[operator]"
    status, _, replayed = http_response(ops.handler(event, LambdaContext()))
    assert status == 200 and len(replayed["data"]["replayed"]) == 1, replayed
    drain(hooks, fresh_worker)
    # Then it is posted once more, and delivered
    assert [r.headers["webhook-attempt"] for r in receiver.requests][-1] == "6"
    assert len(receiver.requests) == 6
    assert rows(hooks, "SELECT status FROM outbound_webhook_deliveries") == [("delivered",)]


def resolve(monkeypatch: pytest.MonkeyPatch, names: dict[str, str]) -> None:
    """DNS as an attacker controlling these names answers once the URL was saved."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real(names.get(host, host), *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hooks",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://10.0.0.5/hooks",
        "http://localhost/hooks",
        "http://metadata.google.internal/",
        "http://user:pass@hooks.example/",
        "ftp://hooks.example/",
    ],
)
def test_registration_refuses_internal_addresses(
    hooks: App, api: Any, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    # Given a deployment where no address is allowed beyond the public ones
    monkeypatch.setenv("WEBHOOK_ALLOWED_HOSTS", "")
    reset_process_state()
    strict = load_handler("api")
    # When an admin registers an internal URL
    status, _, problem = call(
        strict,
        "POST",
        "/webhooks/endpoints",
        hooks.clinic_id,
        {"url": url, "eventTypes": ["lead.created"]},
    )
    # Then it is a clear 422, and nothing is saved
    assert status == 422, problem
    assert problem["detail"].startswith("url must"), problem
    assert rows(hooks, "SELECT count(*) FROM webhook_endpoints") == [(0,)]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["127.0.0.1", "169.254.169.254"])
def test_a_host_resolving_inside_is_never_called(
    hooks: App, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    # Given a name that passes at registration, then resolves inside (DNS rebinding), where
    # the receiver listens; only public addresses are allowed
    monkeypatch.setenv("WEBHOOK_ALLOWED_HOSTS", "")
    reset_process_state()
    strict_api, strict_worker = load_handler("api"), load_handler("webhook_worker")
    port = receiver.url.split(":")[2].split("/")[0]
    endpoint = register(
        strict_api, hooks, f"http://hooks.rebind.example:{port}/in", ["lead.created"]
    )
    resolve(monkeypatch, {"hooks.rebind.example": target})
    # When a lead is created and WebhookWorker runs
    create_lead(strict_api, hooks)
    drain(hooks, strict_worker)
    # Then nothing reached the receiver; the attempts say why, and the endpoint is disabled
    assert receiver.requests == []
    _, _, deliveries = call(
        strict_api, "GET", f"/webhooks/endpoints/{endpoint['id']}/deliveries", hooks.clinic_id
    )
    [delivery] = deliveries["data"]
    _, _, detail = call(
        strict_api, "GET", f"/webhooks/deliveries/{delivery['id']}", hooks.clinic_id
    )
    errors = {a["error"] for a in detail["data"]["attemptLog"]}
    assert errors == {
        "refused: the host resolves to no public address (private, loopback, link-local or"
        " metadata addresses are refused)"
    }
    _, _, read = call(strict_api, "GET", f"/webhooks/endpoints/{endpoint['id']}", hooks.clinic_id)
    assert read["data"]["status"] == "disabled"


@pytest.mark.slow
def test_one_clinics_events_never_reach_another_clinics_endpoint(
    hooks: App, api: Any, worker: Any, receiver: Receiver
) -> None:
    # Given an endpoint in each clinic for lead.created
    mine = register(api, hooks, receiver.url + "/a", ["lead.created"])
    theirs = register(
        api, hooks, receiver.url + "/b", ["lead.created"], clinic=hooks.other_clinic_id
    )
    # When clinic A creates a lead
    create_lead(api, hooks)
    drain(hooks, worker)
    # Then only A's endpoint got it
    assert len(receiver.requests) == 1
    assert json.loads(receiver.requests[0].body)["clinicId"] == str(hooks.clinic_id)
    # And A cannot see, change, replay or delete B's endpoint or deliveries
    for method, path, body in [
        ("GET", f"/webhooks/endpoints/{theirs['id']}", None),
        ("PATCH", f"/webhooks/endpoints/{theirs['id']}", {"enabled": False}),
        ("DELETE", f"/webhooks/endpoints/{theirs['id']}", None),
        ("GET", f"/webhooks/endpoints/{theirs['id']}/deliveries", None),
    ]:
        status, _, _ = call(api, method, path, hooks.clinic_id, body)
        assert status == 404, (method, path)
    _, _, listed = call(api, "GET", "/webhooks/endpoints", hooks.clinic_id)
    assert [e["id"] for e in listed["data"]] == [mine["id"]]
    # And deleting its own endpoint works, once
    assert call(api, "DELETE", f"/webhooks/endpoints/{mine['id']}", hooks.clinic_id)[0] == 200
    assert call(api, "DELETE", f"/webhooks/endpoints/{mine['id']}", hooks.clinic_id)[0] == 404


def test_unknown_event_types_and_bad_bodies_are_a_clear_422(hooks: App, api: Any) -> None:
    for body in [
        {"url": "https://hooks.example/in", "eventTypes": ["lead.exploded"]},
        {"url": "https://hooks.example/in", "eventTypes": ["assistant.reply.delta"]},
        {"url": "https://hooks.example/in", "eventTypes": []},
        {"url": "https://hooks.example/in", "eventTypes": ["lead.created"], "secret": "mine"},
    ]:
        status, _, problem = call(api, "POST", "/webhooks/endpoints", hooks.clinic_id, body)
        assert status == 422, (body, problem)
    assert rows(hooks, "SELECT count(*) FROM webhook_endpoints") == [(0,)]


def test_a_registration_retried_with_its_key_shows_the_same_secret_stored_nowhere_in_clear(
    hooks: App, api: Any
) -> None:
    # Given a registration sent twice with one Idempotency-Key (the first answer was lost)
    body = {"url": "https://hooks.example/in", "eventTypes": ["lead.created"]}
    answers = [
        call(api, "POST", "/webhooks/endpoints", hooks.clinic_id, body, **{"Idempotency-Key": "k1"})
        for _ in range(2)
    ]
    # Then both are the same endpoint with the same secret, the second a replay
    assert [a[0] for a in answers] == [201, 201]
    first, second = answers[0][2]["data"], answers[1][2]["data"]
    assert (first["id"], first["secret"]) == (second["id"], second["secret"])
    assert answers[1][1].get("idempotent-replayed") == "true"
    assert rows(hooks, "SELECT count(*) FROM webhook_endpoints") == [(1,)]
    # And the secret is in no table in the clear (the stored answer holds the endpoint only)
    with psycopg.connect(hooks.database_url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
        for table in tables:
            found = conn.execute(
                f'SELECT count(*) FROM "{table}" t WHERE t::text LIKE %s',
                (f"%{first['secret']}%",),
            ).fetchone()
            assert found == (0,), table
