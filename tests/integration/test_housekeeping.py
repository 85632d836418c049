"""Housekeeping against real PostgreSQL and moto: jobs whose message is lost are rescued
through the outbox, or given up on after a few rescues, and operators see them; rows that
grow forever are deleted after their retention."""

from __future__ import annotations

import uuid
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
)

LEAD = {"name": "Grace Hopper", "email": "grace.hopper@example.org", "consent": True}


def call(api: Any, event: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    return http_response(api.handler(event, LambdaContext()))


def rows(app: App, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(app.database_url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def execute(app: App, sql: str, *params: Any) -> None:
    with psycopg.connect(app.database_url) as conn:
        conn.execute(sql, params)  # type: ignore[arg-type]


def run(task: str) -> dict[str, Any]:
    answer: dict[str, Any] = load_handler("housekeeping").handler({"task": task}, LambdaContext())
    return answer


def lose_messages(app: App) -> None:
    """The queues lose what they hold (a purge, a bug), and an hour passes."""
    with pytest.MonkeyPatch.context() as patch:
        # moto refuses a second purge within 60 s, as SQS does, unless told otherwise.
        patch.setenv("MOTO_SQS_ENFORCE_STRICT_QUEUE_PURGE_BEHAVIOUR", "false")
        for queue in ("NotificationsQueue", "LlmQueue", "SyncQueue"):
            app.sqs().purge_queue(QueueUrl=app.queue_url(queue))
    execute(app, "UPDATE jobs SET updated_at = updated_at - interval '2 hours'")


def stuck(ops: Any, app: App) -> dict[str, Any]:
    event = http_event("GET", "/ops/jobs/stuck", clinic_id=app.clinic_id)
    event["requestContext"]["authorizer"]["jwt"]["claims"]["roles"] = "[staff operator]"
    status, _, answer = call(ops, event)
    assert status == 200, answer
    data: dict[str, Any] = answer["data"]
    return data


def test_a_job_whose_message_was_lost_is_rescued_once_and_done(
    app: App, api: Any, ops: Any, notify: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a lead whose notification message was sent, then lost with the queue
    status, _, created = call(
        api, http_event("POST", "/public/leads", body=LEAD, headers={"x-form-key": FORM_KEY})
    )
    assert status == 201, created
    job_id = created["data"]["jobId"]
    lose_messages(app)
    # Then operators see it overdue
    [kind] = stuck(ops, app)["kinds"]
    assert (kind["kind"], kind["status"], kind["overdue"], kind["rescued"]) == (
        "notify.lead_created",
        "queued",
        1,
        0,
    )
    # When Housekeeping's rescue runs, twice (the second finds its deadline started anew)
    assert run("rescue") == {"task": "rescue", "rescued": 1, "givenUp": 0}
    assert run("rescue") == {"task": "rescue", "rescued": 0, "givenUp": 0}
    # Then its message went through the outbox again, sent at once
    assert rows(
        app,
        "SELECT count(*), bool_and(sent_at IS NOT NULL) FROM outbox WHERE payload->>'jobId' = %s",
        job_id,
    ) == [(2, True)]
    # And NotifyWorker does the job: one email, the job succeeded, counted as rescued once
    assert app.drain("NotifyWorker", notify) == 1
    assert len(sent_emails(app.moto_url)) == 1
    assert rows(app, "SELECT status, rescues FROM jobs WHERE id = %s", job_id) == [("succeeded", 1)]
    assert stuck(ops, app)["kinds"] == []


def test_a_job_still_in_the_outbox_is_left_to_the_sweeper(app: App, api: Any, ops: Any) -> None:
    # Given a job whose message never left the outbox (SQS was down), an hour ago
    status, _, _ = call(
        api, http_event("POST", "/public/leads", body=LEAD, headers={"x-form-key": FORM_KEY})
    )
    assert status == 201
    execute(app, "UPDATE outbox SET sent_at = NULL")
    lose_messages(app)
    # When the rescue runs / Then it leaves the job alone: the sweeper will send it
    assert run("rescue")["rescued"] == 0
    [kind] = stuck(ops, app)["kinds"]
    assert (kind["overdue"], kind["waitingInOutbox"]) == (0, 1)


def test_a_job_lost_after_every_rescue_is_given_up_with_the_reason(
    app: App, api: Any, ops: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given at most two rescues, and an assistant question whose message keeps getting lost
    monkeypatch.setenv("JOB_MAX_RESCUES", "2")
    reset_process_state()
    status, _, asked = call(
        api,
        http_event(
            "POST",
            "/assistant/conversations",
            body={"content": "How many leads today?"},
            clinic_id=app.clinic_id,
        ),
    )
    assert status == 202, asked
    # When it is lost, rescued, lost, rescued, lost
    outcomes = []
    for _ in range(3):
        lose_messages(app)
        outcomes.append(run("rescue"))
    # Then the third time it is given up: dead with the reason, its reply failed
    assert [(o["rescued"], o["givenUp"]) for o in outcomes] == [(1, 0), (1, 0), (0, 1)]
    ((status_, error, rescues),) = rows(
        app, "SELECT status, error, rescues FROM jobs WHERE id = %s", asked["data"]["jobId"]
    )
    assert (status_, rescues) == ("dead", 2) and error.startswith("given up by Housekeeping")
    _, _, reply = call(
        api,
        http_event("GET", f"/assistant/messages/{asked['data']['id']}", clinic_id=app.clinic_id),
    )
    assert reply["data"]["status"] == "failed" and "given up" in reply["data"]["error"]
    # And whoever waits for the reply is told: assistant.reply.done, failed, with the error
    ((detail,),) = rows(
        app,
        """SELECT payload -> 'detail' FROM outbox
           WHERE payload ->> 'detailType' = 'assistant.reply.done'""",
    )
    assert (detail["replyId"], detail["status"], detail["error"]) == (
        asked["data"]["id"],
        "failed",
        reply["data"]["error"],
    )
    # And operators see it counted
    report = stuck(ops, app)
    assert report["givenUpLastDay"] == 1 and report["maxRescues"] == 2
    assert report["kinds"] == []


def test_retention_deletes_old_rows_of_every_table_and_keeps_the_rest(
    app: App, api: Any, ops: Any, notify: Any
) -> None:
    # Given two of everything that grows: one past its retention, one recent
    for key in ("old-key", "new-key"):
        status, _, _ = call(
            api,
            http_event(
                "POST",
                "/public/leads",
                body={**LEAD, "email": f"{key}@example.org"},
                headers={"x-form-key": FORM_KEY, "idempotency-key": key},
            ),
        )
        assert status == 201
    app.drain("NotifyWorker", notify)
    execute(
        app,
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'"
        " WHERE key = 'old-key'",
    )
    execute(
        app,
        "UPDATE outbox SET sent_at = now() - interval '8 days'"
        " WHERE id = (SELECT min(id) FROM outbox)",
    )
    account = uuid.uuid4()
    execute(
        app,
        """INSERT INTO provider_accounts (id, clinic_id, provider, api_base_url, credentials_enc,
                                          webhook_secret_enc, dek, kms_key_id)
           VALUES (%s, %s, 'generic', 'https://provider.example', '', '', '', '')""",
        account,
        app.clinic_id,
    )
    for delivery, age in (("old", "31 days"), ("new", "1 day")):
        execute(
            app,
            """INSERT INTO webhook_deliveries (account_id, delivery_id, clinic_id, via, resource,
                                               external_id, received_at)
               VALUES (%s, %s, %s, 'webhook', 'lead', 'x', now() - %s::interval)""",
            account,
            delivery,
            app.clinic_id,
            age,
        )
    endpoint = uuid.uuid4()
    execute(
        app,
        """INSERT INTO webhook_endpoints (id, clinic_id, url, event_types, secret_enc, dek,
                                          kms_key_id)
           VALUES (%s, %s, 'https://hooks.example/in', '{lead.created}', '', '', '')""",
        endpoint,
        app.clinic_id,
    )
    for status, age in (("delivered", "31 days"), ("retrying", "31 days"), ("failed", "1 day")):
        execute(
            app,
            """INSERT INTO outbound_webhook_deliveries (id, clinic_id, endpoint_id, event_id,
                   event_type, payload, status, delivered_at, created_at)
               VALUES (gen_random_uuid(), %s, %s, gen_random_uuid(), 'lead.created', '{}', %s,
                       CASE WHEN %s = 'delivered' THEN now() END, now() - %s::interval)""",
            app.clinic_id,
            endpoint,
            status,
            status,
            age,
        )
    # A delivery replayed twice, all past the retention: the replays go first
    execute(
        app,
        """WITH original AS (
               INSERT INTO outbound_webhook_deliveries (id, clinic_id, endpoint_id, event_id,
                   event_type, payload, status, delivered_at, created_at)
               VALUES (gen_random_uuid(), %s, %s, gen_random_uuid(), 'lead.created', '{}',
                       'cancelled', NULL, now() - interval '32 days')
               RETURNING id, clinic_id, endpoint_id, event_id)
           INSERT INTO outbound_webhook_deliveries (id, clinic_id, endpoint_id, event_id,
               event_type, payload, status, delivered_at, created_at, replay_of)
           SELECT gen_random_uuid(), clinic_id, endpoint_id, event_id, 'lead.created', '{}',
                  'delivered', now(), now() - interval '31 days', id
           FROM original, generate_series(1, 2)""",
        app.clinic_id,
        endpoint,
    )
    for period, start in (
        ("minute", "now() - interval '2 hours'"),
        ("minute", "date_trunc('minute', now())"),
        ("day", "date_trunc('day', now()) - interval '91 days'"),
        ("day", "date_trunc('day', now())"),
    ):
        execute(
            app,
            f"""INSERT INTO assistant_usage (clinic_id, period, period_start, requests)
                VALUES (%s, %s, {start}, 1)""",
            app.clinic_id,
            period,
        )
    csv = "name,email\nAda,ada@example.org\n"
    for age in ("15 days", "1 day"):
        status, _, accepted = call(
            api,
            http_event(
                "POST",
                "/leads/imports",
                body=csv,
                clinic_id=app.clinic_id,
                headers={"content-type": "text/csv"},
            ),
        )
        assert status == 202, accepted
        execute(
            app,
            "UPDATE jobs SET status = 'dead', finished_at = now() - %s::interval WHERE id = %s",
            age,
            accepted["data"]["jobId"],
        )
    for connection, expires_in in (("closed=", "-1 minute"), ("open=", "1 hour")):
        execute(
            app,
            """INSERT INTO websocket_connections (connection_id, clinic_id, subject, expires_at)
               VALUES (%s, %s, 'staff', now() + %s::interval)""",
            connection,
            app.clinic_id,
            expires_in,
        )
    for name, created, expires in (("old", "2 days", "1 day"), ("new", "1 hour", "-23 hours")):
        execute(
            app,
            """INSERT INTO assistant_reply_cache (clinic_id, key, answer_enc, dek, kms_key_id,
                                                  created_at, expires_at)
               VALUES (%s, %s, '\\x00', '\\x00', 'k', now() - %s::interval,
                       now() - %s::interval)""",
            app.clinic_id,
            name.encode().ljust(32, b"-"),
            created,
            expires,
        )
    for name, expires_in in (("rotated-out", "-1 minute"), ("rotating", "1 hour")):
        execute(
            app,
            """INSERT INTO webhook_endpoints (id, clinic_id, url, event_types, secret_enc, dek,
                   kms_key_id, description, previous_secret_enc, previous_dek,
                   previous_secret_expires_at)
               VALUES (gen_random_uuid(), %s, 'https://hooks.example/in', '{lead.created}',
                       '', '', '', %s, '\x01', '\x01', now() + %s::interval)""",
            app.clinic_id,
            name,
            expires_in,
        )
    for name, status, age in (
        ("old-sent", "sent", "91 days"),
        ("old-failed", "failed", "91 days"),
        ("old-sending", "sending", "91 days"),
        ("recent-sent", "sent", "89 days"),
    ):
        execute(
            app,
            """INSERT INTO notification_deliveries (notification_id, clinic_id, channel, status,
                                                    created_at, updated_at)
               VALUES (%s, %s, 'email', %s, now() - %s::interval, now() - %s::interval)""",
            name,
            app.clinic_id,
            status,
            age,
            age,
        )
    unsent = rows(app, "SELECT id FROM outbox WHERE sent_at IS NULL ORDER BY id")
    # When Housekeeping's retention runs
    done = run("retention")
    # Then what is past each table's retention is gone, and nothing else
    assert {k: v for k, v in done.items() if k != "task"} == {
        "outbox": 1,
        "idempotency_keys": 1,
        "webhook_deliveries": 1,
        "outbound_webhook_deliveries": 3,
        "assistant_usage": 2,
        "lead_import_parts": 1,
        "notification_deliveries": 2,
        "websocket_connections": 1,
        "assistant_reply_cache": 1,
        "webhook_previous_secrets": 1,
        "encrypted_plaintext": 0,
    }
    assert rows(
        app,
        "SELECT description, previous_secret_enc IS NOT NULL FROM webhook_endpoints"
        " WHERE description IS NOT NULL ORDER BY description",
    ) == [("rotated-out", False), ("rotating", True)]
    assert rows(app, "SELECT key FROM assistant_reply_cache") == [(b"new".ljust(32, b"-"),)]
    assert rows(
        app,
        "SELECT notification_id FROM notification_deliveries WHERE notification_id IN"
        " ('old-sent', 'old-failed', 'old-sending', 'recent-sent') ORDER BY 1",
    ) == [("old-sending",), ("recent-sent",)]
    assert rows(app, "SELECT connection_id FROM websocket_connections") == [("open=",)]
    assert rows(app, "SELECT key FROM idempotency_keys") == [("new-key",)]
    assert rows(app, "SELECT delivery_id FROM webhook_deliveries") == [("new",)]
    assert rows(app, "SELECT status FROM outbound_webhook_deliveries ORDER BY status") == [
        ("cancelled",),  # the replayed one, next run
        ("failed",),
        ("retrying",),
    ]
    assert rows(app, "SELECT count(*) FROM assistant_usage") == [(2,)]
    assert rows(app, "SELECT count(*) FROM lead_import_parts") == [(1,)]
    # (the jobs' events written by the UPDATEs above were never sent: they stay)
    assert rows(app, "SELECT id FROM outbox WHERE sent_at IS NULL ORDER BY id") == unsent
    assert len(unsent) == 2


def test_retention_encrypts_conversations_stored_in_plaintext(app: App, api: Any, ops: Any) -> None:
    # Given a conversation stored before questions were encrypted (migration 0009)
    conversation, question = uuid.uuid4(), uuid.uuid4()
    execute(
        app,
        """INSERT INTO conversations (id, clinic_id, title) VALUES (%s, %s, 'Ada Lovelace')""",
        conversation,
        app.clinic_id,
    )
    execute(
        app,
        """INSERT INTO messages (id, clinic_id, conversation_id, role, content, status)
           VALUES (%s, %s, %s, 'user', 'Did ada@example.org call?', 'done')""",
        question,
        app.clinic_id,
        conversation,
    )
    # When the retention runs
    assert run("retention")["encrypted_plaintext"] == 2
    # Then no plaintext is left, and staff read the same words
    assert rows(app, "SELECT content FROM messages") == [(None,)]
    assert rows(app, "SELECT title FROM conversations") == [(None,)]
    _, _, read = call(
        api,
        http_event("GET", f"/assistant/conversations/{conversation}", clinic_id=app.clinic_id),
    )
    assert read["data"]["title"] == "Ada Lovelace"
    assert read["data"]["messages"][0]["content"] == "Did ada@example.org call?"
