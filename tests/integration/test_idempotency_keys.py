"""Idempotency-Key on the writes that did not take one before: a CSV import, a provider
account and its credentials, a job's cancel, the operators' dead-letter replay. A retry with
the same key answers the first result and writes nothing new; the same key with another
body is a clear 422."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import App
from tests.support import LambdaContext, http_event, http_response, load_handler


@pytest.fixture
def worker(app: App) -> Any:
    return load_handler("sync_worker")


def call(
    handler: Any,
    method: str,
    path: str,
    clinic_id: uuid.UUID,
    body: Any = None,
    *,
    key: str | None = None,
    roles: str = "[staff admin]",
    content_type: str | None = None,
) -> tuple[int, dict[str, str], Any]:
    headers = {}
    if key is not None:
        headers["idempotency-key"] = key
    if content_type is not None:
        headers["content-type"] = content_type
    event = http_event(method, path, body=body, clinic_id=clinic_id, headers=headers)
    event["requestContext"]["authorizer"]["jwt"]["claims"]["roles"] = roles
    return http_response(handler.handler(event, LambdaContext()))


def rows(app: App, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(app.database_url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def people_csv(count: int, first: int = 0) -> str:
    lines = ["name,email,phone,notes,consent"]
    lines += [f"Person {i},person{i}@example.org,,,yes" for i in range(first, first + count)]
    return "\n".join(lines) + "\n"


def test_a_csv_import_posted_twice_with_one_key_imports_once(
    app: App, api: Any, worker: Any
) -> None:
    text = people_csv(50)
    # When staff post the same 50-lead file twice with the same key (a retried upload)
    first = call(
        api, "POST", "/leads/imports", app.clinic_id, text, key="import-1", content_type="text/csv"
    )
    second = call(
        api, "POST", "/leads/imports", app.clinic_id, text, key="import-1", content_type="text/csv"
    )
    # Then the retry answers the first import and job
    assert first[0] == second[0] == 202, (first, second)
    assert second[2]["data"] == first[2]["data"]
    assert second[1].get("idempotent-replayed") == "true"
    assert second[1]["location"] == f"/jobs/{first[2]['data']['jobId']}"
    # And once SyncWorker has run, there is one import of 50 leads, not 100
    app.drain("SyncWorker", worker, retry_after_seconds=0)
    assert rows(app, "SELECT count(*) FROM lead_imports") == [(1,)]
    assert rows(app, "SELECT count(*) FROM leads WHERE clinic_id = %s", app.clinic_id) == [(50,)]
    # And another file under the same key is refused, storing nothing
    status, _, answer = call(
        api,
        "POST",
        "/leads/imports",
        app.clinic_id,
        people_csv(3, 100),
        key="import-1",
        content_type="text/csv",
    )
    assert status == 422 and "Idempotency-Key" in answer["title"]
    assert rows(app, "SELECT count(*) FROM lead_imports") == [(1,)]
    # And without a key, the same file is a new import (as before)
    again = call(api, "POST", "/leads/imports", app.clinic_id, text, content_type="text/csv")
    assert again[0] == 202 and again[2]["data"]["importId"] != first[2]["data"]["importId"]


def test_a_provider_account_posted_twice_with_one_key_is_created_once(app: App, api: Any) -> None:
    body = {
        "provider": "generic",
        "apiBaseUrl": "https://provider.example",
        "credentials": {"apiKey": "key-0123456789"},
    }
    # When an admin posts the same account twice with one key
    first = call(api, "POST", "/provider-accounts", app.clinic_id, body, key="acct-1")
    second = call(api, "POST", "/provider-accounts", app.clinic_id, body, key="acct-1")
    # Then one account and one validation job exist, and the retry shows the same answer,
    # the generated webhook secret included (shown once, and again to a retry)
    assert first[0] == second[0] == 202, (first, second)
    assert second[2]["data"] == first[2]["data"]
    secret = first[2]["data"]["webhookSecret"]
    assert secret.startswith("whsec_")
    assert rows(app, "SELECT count(*) FROM provider_accounts") == [(1,)]
    assert rows(app, "SELECT count(*) FROM jobs WHERE kind = 'sync.validate'") == [(1,)]
    # And the stored answer does not hold the secret in plaintext
    stored = json.dumps(rows(app, "SELECT response FROM idempotency_keys"))
    assert secret not in stored and secret[6:20] not in stored
    # And the credentials replaced twice with one key start one validation
    account = first[2]["data"]["id"]
    update = {"credentials": {"apiKey": "key-new-0123456789"}}
    path = f"/provider-accounts/{account}/credentials"
    assert call(api, "PUT", path, app.clinic_id, update, key="cred-1")[0] == 202
    replayed = call(api, "PUT", path, app.clinic_id, update, key="cred-1")
    assert replayed[0] == 202 and replayed[1].get("idempotent-replayed") == "true"
    assert rows(app, "SELECT count(*) FROM jobs WHERE kind = 'sync.validate'") == [(2,)]
    # And the same key with another body is a 422
    other = {"credentials": {"apiKey": "another-key-0123"}}
    status, _, answer = call(api, "PUT", path, app.clinic_id, other, key="cred-1")
    assert status == 422 and "Idempotency-Key" in answer["title"]


def test_a_job_cancel_retried_with_its_key_answers_the_first_cancel(app: App, api: Any) -> None:
    status, _, lead = call(
        api,
        "POST",
        "/leads",
        app.clinic_id,
        {"name": "A person", "email": "a@example.org", "consent": True},
    )
    assert status == 201, lead
    job = lead["data"]["jobId"]
    first = call(api, "POST", f"/jobs/{job}/cancel", app.clinic_id, key="cancel-1")
    second = call(api, "POST", f"/jobs/{job}/cancel", app.clinic_id, key="cancel-1")
    # Then the retry is the first answer (not a 409 "already ended")
    assert first[0] == second[0] == 200, (first, second)
    assert second[2]["data"] == first[2]["data"] and second[2]["data"]["status"] == "cancelled"
    # And without the key, a second cancel is the 409 it always was
    assert call(api, "POST", f"/jobs/{job}/cancel", app.clinic_id)[0] == 409


def test_a_dead_letter_replay_retried_with_its_key_replays_once(app: App, ops: Any) -> None:
    # Given a message on the notifications DLQ
    sqs = app.sqs()
    dlq = app.queue_url("NotificationsDLQ")
    sqs.send_message(QueueUrl=dlq, MessageBody=json.dumps({"kind": "nonsense"}))
    body = {"queue": "notifications", "all": True}
    roles = "[staff operator]"
    # When an operator replays everything twice with one key
    first = call(
        ops, "POST", "/ops/dead-letters/replay", app.clinic_id, body, key="replay-1", roles=roles
    )
    second = call(
        ops, "POST", "/ops/dead-letters/replay", app.clinic_id, body, key="replay-1", roles=roles
    )
    # Then the retry answers what the first replayed, and replays nothing itself
    assert first[0] == second[0] == 200, (first, second)
    assert len(first[2]["data"]["replayed"]) == 1
    assert second[2]["data"] == first[2]["data"]
    assert second[1].get("idempotent-replayed") == "true"
    source = app.queue_url("NotificationsQueue")
    attributes = sqs.get_queue_attributes(
        QueueUrl=source, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "1"


def test_a_key_taken_around_calls_outside_the_database(app: App) -> None:
    from frontdesk.errors import Conflict, IdempotencyKeyReused
    from frontdesk.platform import idempotency
    from frontdesk.platform.idempotency import IdempotencyRequest
    from frontdesk.services import get_services

    db = get_services().database
    request = IdempotencyRequest.of("outside-1", "replayDeadLetters", {"all": True})
    other_body = IdempotencyRequest.of("outside-1", "replayDeadLetters", {"all": False})
    assert request is not None and other_body is not None
    # Given a first request that took the key and is still calling out
    assert idempotency.begin(db, app.clinic_id, request) is None
    # When a retry comes meanwhile, or another body under the key
    with pytest.raises(Conflict):
        idempotency.begin(db, app.clinic_id, request)
    with pytest.raises(IdempotencyKeyReused):
        idempotency.begin(db, app.clinic_id, other_body)
    # Then after the first fails the key is free again, and after it finishes a retry gets
    # its stored result
    idempotency.abandon(db, app.clinic_id, request)
    assert idempotency.begin(db, app.clinic_id, request) is None
    idempotency.finish(db, app.clinic_id, request, {"replayed": ["m-1"]})
    assert idempotency.begin(db, app.clinic_id, request) == {"replayed": ["m-1"]}
    # And a key whose request died (never finished, older than the take-over age) is taken
    dead = IdempotencyRequest.of("outside-2", "replayDeadLetters", {"all": True})
    assert dead is not None
    assert idempotency.begin(db, app.clinic_id, dead) is None
    with psycopg.connect(app.database_url) as conn:
        conn.execute(
            "UPDATE idempotency_keys SET created_at = now() - interval '1 hour' WHERE key = %s",
            ("outside-2",),
        )
    assert idempotency.begin(db, app.clinic_id, dead) is None
