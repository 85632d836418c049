"""The foundation slice against real PostgreSQL and a moto server built from template.yaml:
POST a lead -> encrypted row + job + outbox -> SQS -> NotifyWorker -> one SES email."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import FORM_KEY, App, sent_emails
from tests.support import (
    LambdaContext,
    http_event,
    http_response,
    load_handler,
    reset_process_state,
    sqs_event,
    unreachable_publisher,
    use_test_services,
)

PERSON = {
    "name": "Grace Hopper",
    "email": "grace.hopper@example.org",
    "phone": "+1 555 0100 777",
    "notes": "prefers mornings",
    "consent": True,
}


def call(api: Any, event: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    return http_response(api.handler(event, LambdaContext()))


def post_lead(
    api: Any, body: dict[str, Any] | None = None, **headers: str
) -> tuple[int, dict[str, str], Any]:
    event = http_event(
        "POST", "/public/leads", body=body or PERSON, headers={"x-form-key": FORM_KEY, **headers}
    )
    return call(api, event)


def rows(app: App, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(app.database_url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def drain_notifications(app: App, notify: Any, **kwargs: Any) -> int:
    """Run NotifyWorker over the queue like Lambda's event source mapping; return records seen."""
    return app.drain("NotifyWorker", notify, **kwargs)


def test_public_lead_is_stored_encrypted_and_handed_off(app: App, api: Any) -> None:
    # When a web form posts a lead
    status, headers, body = post_lead(api)
    # Then it is created, in the envelope, with the request id everywhere
    assert status == 201, body
    lead_id, job_id = body["data"]["id"], body["data"]["jobId"]
    meta = body["meta"]
    assert meta["operation"] == "createLead" and meta["entity"] == "lead" and meta["success"]
    assert meta["affectedIds"] == [lead_id] and meta["executionTimeMs"] >= 0
    request_id = meta["requestId"]
    assert headers["x-request-id"] == request_id
    # And no PII is stored in plaintext
    (row,) = rows(app, "SELECT leads::text FROM leads WHERE id = %s", lead_id)
    # (the phone's digits as a whole: four digits alone turn up in hex ciphertext by chance)
    for value in ("Grace", "grace.hopper", "0100 777", "5550100777", "mornings"):
        assert value not in row[0]
    # And the job carries the request id, and the outbox was relayed right after commit
    assert rows(app, "SELECT status, request_id FROM jobs WHERE id = %s", job_id) == [
        ("queued", request_id)
    ]
    assert rows(app, "SELECT count(*) FILTER (WHERE sent_at IS NULL), count(*) FROM outbox") == [
        (0, 2)
    ]
    # And the lead.created event carries ids only, with an id of its own for deduplication
    ((detail,),) = rows(app, "SELECT payload -> 'detail' FROM outbox WHERE target = 'bus'")
    assert detail["leadId"] == lead_id and uuid.UUID(detail["eventId"])
    assert set(detail) == {"eventId", "leadId", "clinicId", "source", "duplicateOf"}
    # And the job's message is on the notifications queue with the request id attribute
    messages = app.sqs().receive_message(
        QueueUrl=app.queue_url("NotificationsQueue"), MessageAttributeNames=["All"]
    )["Messages"]
    assert json.loads(messages[0]["Body"]) == {
        "jobId": job_id,
        "kind": "notify.lead_created",
        "clinicId": str(app.clinic_id),
    }
    assert messages[0]["MessageAttributes"]["requestId"]["StringValue"] == request_id


def test_staff_reads_own_clinics_lead_decrypted_and_others_get_404(app: App, api: Any) -> None:
    _, _, created = post_lead(api)
    lead_id = created["data"]["id"]
    status, _, body = call(api, http_event("GET", f"/leads/{lead_id}", clinic_id=app.clinic_id))
    assert status == 200
    assert body["data"]["email"] == PERSON["email"] and body["data"]["name"] == PERSON["name"]
    assert body["data"]["duplicateOf"] is None
    status, _, body = call(
        api, http_event("GET", f"/leads/{lead_id}", clinic_id=app.other_clinic_id)
    )
    assert status == 404 and body["title"] == "Not found"
    job_id = created["data"]["jobId"]
    status, _, _ = call(api, http_event("GET", f"/jobs/{job_id}", clinic_id=app.other_clinic_id))
    assert status == 404
    status, _, job = call(api, http_event("GET", f"/jobs/{job_id}", clinic_id=app.clinic_id))
    assert (
        status == 200
        and job["data"]["status"] == "queued"
        and job["data"]["kind"] == "notify.lead_created"
    )


def test_staff_can_create_and_duplicates_are_linked(app: App, api: Any) -> None:
    _, _, first = post_lead(api)
    # The same phone, written differently, from a staff app
    again = {"name": "G. Hopper", "phone": "+15550100777", "source": "phone_call", "consent": False}
    status, _, second = call(api, http_event("POST", "/leads", body=again, clinic_id=app.clinic_id))
    assert status == 201
    assert second["data"]["duplicateOf"] == first["data"]["id"]
    # Another clinic's identical lead is not a duplicate of this one
    status, _, third = call(
        api, http_event("POST", "/leads", body=again, clinic_id=app.other_clinic_id)
    )
    assert status == 201 and third["data"]["duplicateOf"] is None


def test_idempotency_key_replays_and_refuses_a_different_body(app: App, api: Any) -> None:
    status1, _, first = post_lead(api, **{"idempotency-key": "form-submit-1"})
    status2, headers2, second = post_lead(api, **{"idempotency-key": "form-submit-1"})
    assert (status1, status2) == (201, 201)
    assert second["data"] == first["data"] and headers2["idempotent-replayed"] == "true"
    status3, _, problem = post_lead(
        api, {**PERSON, "notes": "other"}, **{"idempotency-key": "form-submit-1"}
    )
    assert status3 == 422 and "Idempotency-Key" in problem["title"]
    assert rows(app, "SELECT count(*) FROM leads") == [(1,)]
    assert rows(app, "SELECT count(*) FROM jobs") == [(1,)]
    assert rows(app, "SELECT count(*) FROM outbox") == [(2,)]


def test_bad_input_writes_nothing(app: App, api: Any) -> None:
    status, _, _ = post_lead(api, {"name": "No contact", "consent": True})
    assert status == 422
    status, _, _ = call(
        api, http_event("POST", "/public/leads", body=PERSON, headers={"x-form-key": "wrong"})
    )
    assert status == 401
    assert rows(
        app,
        "SELECT (SELECT count(*) FROM leads) + (SELECT count(*) FROM jobs) "
        "+ (SELECT count(*) FROM outbox) + (SELECT count(*) FROM idempotency_keys)",
    ) == [(0,)]


def test_notify_worker_sends_one_email_even_when_delivered_twice(
    app: App, api: Any, notify: Any
) -> None:
    # Given two leads
    _, _, a = post_lead(api)
    _, _, b = post_lead(api, {**PERSON, "email": "other@example.org"})
    # When the worker drains the queue
    assert drain_notifications(app, notify) == 2
    # Then two emails went to the clinic, without the person's details
    emails = sent_emails(app.moto_url)
    assert len(emails) == 2
    assert {e.to for e in emails} == {("staff@clinic.example",)}
    assert {e.data["leadId"] for e in emails} == {a["data"]["id"], b["data"]["id"]}
    assert all("grace" not in json.dumps(e.data).lower() for e in emails)
    for created in (a, b):
        assert rows(
            app, "SELECT status, progress FROM jobs WHERE id = %s", created["data"]["jobId"]
        ) == [("succeeded", 100)]
    # When the same message is delivered again (SQS at-least-once)
    body = json.dumps(
        {"jobId": a["data"]["jobId"], "kind": "notify.lead_created", "clinicId": str(app.clinic_id)}
    )
    answer = notify.handler(sqs_event([body, body]), LambdaContext())
    # Then nothing fails and nothing more is sent
    assert answer == {"batchItemFailures": []}
    assert len(sent_emails(app.moto_url)) == 2
    assert rows(app, "SELECT count(*) FROM notification_deliveries WHERE status = 'sent'") == [(2,)]


def test_a_malformed_message_fails_alone_and_is_dead_lettered(
    app: App, api: Any, notify: Any
) -> None:
    # Given a good message and a malformed one on the queue
    post_lead(api)
    sqs = app.sqs()
    sqs.send_message(QueueUrl=app.queue_url("NotificationsQueue"), MessageBody='{"jobId": 42}')
    # When the worker polls until the queue is empty, failed records reappearing at once
    seen = drain_notifications(app, notify, retry_after_seconds=0)
    # Then the good one was sent once, the bad one tried maxReceiveCount (5) times, then moved
    assert seen == 1 + 5
    assert len(sent_emails(app.moto_url)) == 1
    dead = sqs.receive_message(QueueUrl=app.queue_url("NotificationsDLQ"))["Messages"]
    assert [m["Body"] for m in dead] == ['{"jobId": 42}']


def test_relay_failure_still_answers_201_and_the_sweeper_sends_later(
    app: App, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given SQS and EventBridge unreachable for the request (nothing listens on port 9)
    use_test_services(
        relay_publisher=unreachable_publisher(
            {"notifications": app.queue_url("NotificationsQueue")}
        )
    )
    # When a lead is posted, it still succeeds
    status, _, body = post_lead(api)
    assert status == 201
    assert rows(app, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == [(2,)]
    # When the sweeper runs (here without the few seconds' grace it leaves the relay)
    monkeypatch.setenv("OUTBOX_SWEEP_MIN_AGE_SECONDS", "0")
    reset_process_state()
    sweeper = load_handler("outbox_sweeper")
    assert sweeper.handler({}, LambdaContext())["sent"] == 2
    # Then everything is sent and the job's message is on the queue
    assert rows(app, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == [(0,)]
    message = app.sqs().receive_message(QueueUrl=app.queue_url("NotificationsQueue"))["Messages"][0]
    assert json.loads(message["Body"])["jobId"] == body["data"]["jobId"]


def test_one_connection_is_reused_across_invocations(app: App, api: Any) -> None:
    from frontdesk.services import get_services

    database = get_services().database
    before = database.connects  # type: ignore[attr-defined]
    for _ in range(3):
        post_lead(api)
        call(api, http_event("GET", f"/jobs/{uuid.uuid4()}", clinic_id=app.clinic_id))
    assert database.connects == before  # type: ignore[attr-defined]
    assert rows(
        app,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'frontdesk' "
        "AND datname = current_database()",
    ) == [(1,)]


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Everything the Powertools logger writes, formatted as in CloudWatch."""
    from frontdesk.observability import logger

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


def test_logs_carry_the_request_id_and_no_pii(
    app: App, api: Any, notify: Any, logs: io.StringIO
) -> None:
    _, _, body = post_lead(api)
    drain_notifications(app, notify)
    call(api, http_event("GET", f"/leads/{body['data']['id']}", clinic_id=app.clinic_id))
    post_lead(api, {**PERSON, "email": "bad"})
    text = logs.getvalue()
    worker_lines = [line for line in text.splitlines() if "notification handled" in line]
    # the worker logged with the id of the request that created the lead
    assert body["meta"]["requestId"] in worker_lines[0]
    for value in ("Grace", "grace.hopper", "0100 777", "mornings", '"bad"'):
        assert value not in text
