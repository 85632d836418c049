"""Assistant chat against real PostgreSQL, a moto server built from template.yaml and a real
chat-completions server on loopback (local/fake_llm.py): POST a question -> 202 -> llm
queue -> LlmWorker -> the model over HTTP -> the reply readable by GET."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pytest

from local.fake_llm import FakeLlm
from tests.integration.conftest import FORM_KEY, App
from tests.support import (
    LambdaContext,
    http_event,
    http_response,
    load_handler,
    reset_process_state,
    sqs_event,
    use_test_services,
)

API_KEY = "sk-test-frontdesk"


@pytest.fixture
def worker(app: App) -> Any:
    return load_handler("llm_worker")


@pytest.fixture
def llm() -> Iterator[FakeLlm]:
    with FakeLlm() as server:
        yield server


@pytest.fixture
def chat(app: App, llm: FakeLlm, monkeypatch: pytest.MonkeyPatch) -> App:
    """The app with LlmWorker pointed at the fake model, its key in Secrets Manager."""
    secret = boto3.client("secretsmanager", endpoint_url=app.moto_url).create_secret(
        Name=f"llm-key-{uuid.uuid4().hex[:8]}", SecretString=json.dumps({"apiKey": API_KEY})
    )
    settings = {
        "LLM_PROVIDER": "openai",
        "LLM_BASE_URL": llm.base_url,
        "LLM_SECRET_ARN": secret["ARN"],
        "LLM_MODEL": "fake-gpt",
        "LLM_TIMEOUT_SECONDS": "2",
        # A failed message reappears at once (even a 429's Retry-After is capped to 0).
        "LLM_RETRY_BASE_SECONDS": "0",
        "LLM_RETRY_MAX_SECONDS": "0",
        "LLM_BREAKER_FAILURE_THRESHOLD": "100",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    reset_process_state()
    return app


def call(api: Any, event: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    return http_response(api.handler(event, LambdaContext()))


def ask(api: Any, app: App, content: str = "How many new leads this week?", **headers: str) -> Any:
    status, response_headers, body = call(
        api,
        http_event(
            "POST",
            "/assistant/conversations",
            body={"content": content, "title": "Leads"},
            clinic_id=app.clinic_id,
            headers=headers,
        ),
    )
    assert status == 202, body
    assert response_headers["location"] == f"/assistant/messages/{body['data']['id']}"
    return body["data"]


def get_message(api: Any, app: App, message_id: str) -> Any:
    status, _, body = call(
        api, http_event("GET", f"/assistant/messages/{message_id}", clinic_id=app.clinic_id)
    )
    assert status == 200, body
    return body["data"]


def rows(app: App, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(app.database_url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def execute(app: App, sql: str, *params: Any) -> None:
    with psycopg.connect(app.database_url) as conn:
        conn.execute(sql, params)  # type: ignore[arg-type]


def poll(app: App, worker: Any) -> int:
    """One receive of the llm queue into LlmWorker, as Lambda's event source mapping does."""
    return app.poll("LlmWorker", worker)


def drain(app: App, worker: Any) -> int:
    return app.drain("LlmWorker", worker)


def queue_counts(app: App, logical_id: str) -> dict[str, int]:
    attributes = app.sqs().get_queue_attributes(
        QueueUrl=app.queue_url(logical_id), AttributeNames=["All"]
    )["Attributes"]
    return {
        "visible": int(attributes["ApproximateNumberOfMessages"]),
        "hidden": int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        "delayed": int(attributes["ApproximateNumberOfMessagesDelayed"]),
    }


def job_message_body(app: App, job_id: str) -> str:
    return json.dumps({"jobId": job_id, "kind": "assistant.reply", "clinicId": str(app.clinic_id)})


# ---------------------------------------------------------------- the happy path


def test_the_conversation_is_stored_encrypted_and_older_plaintext_still_reads(
    chat: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    # Given a question (naming a patient) answered by the worker
    first = ask(api, chat, content="Did ada@example.org confirm?")
    drain(chat, worker)
    # Then the question, the reply and the title are ciphertext bound to their rows
    stored = rows(chat, "SELECT content, content_enc IS NOT NULL, dek IS NOT NULL FROM messages")
    assert sorted(stored) == [(None, True, True)] * 2
    assert rows(chat, "SELECT title, title_enc IS NOT NULL FROM conversations") == [(None, True)]
    # And a question stored in plaintext before encryption (a row written before 0009)
    execute(
        chat,
        """INSERT INTO messages (id, clinic_id, conversation_id, role, content, status,
                                 created_at, completed_at)
           VALUES (%s, %s, %s, 'user', 'An older question', 'done', now(), now())""",
        uuid.uuid4(),
        chat.clinic_id,
        first["conversationId"],
    )
    # When the conversation goes on
    status, _, asked = call(
        api,
        http_event(
            "POST",
            f"/assistant/conversations/{first['conversationId']}/messages",
            body={"content": "And since?"},
            clinic_id=chat.clinic_id,
        ),
    )
    assert status == 202, asked
    drain(chat, worker)
    # Then the model got the whole history, decrypted, the older plaintext question included
    sent = [m["content"] for m in llm.requests[-1]["messages"] if m["role"] != "system"]
    assert sent[0] == "Did ada@example.org confirm?" and sent[-2:] == [
        "An older question",
        "And since?",
    ]
    # And staff read every message and the title
    status, _, conversation = call(
        api,
        http_event(
            "GET", f"/assistant/conversations/{first['conversationId']}", clinic_id=chat.clinic_id
        ),
    )
    assert status == 200 and conversation["data"]["title"] == "Leads"
    contents = [m["content"] for m in conversation["data"]["messages"]]
    assert contents[0] == "Did ada@example.org confirm?" and "An older question" in contents
    assert all(contents) and len(contents) == 5
    assert get_message(api, chat, asked["data"]["id"])["content"].startswith("(fake model)")


def test_a_question_is_accepted_at_once_and_answered_by_the_worker(
    chat: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    # Given a lead this week, so the clinic has a number to talk about
    status, _, _ = call(
        api,
        http_event(
            "POST",
            "/public/leads",
            body={"name": "Ada", "email": "ada@example.org", "consent": True},
            headers={"x-form-key": FORM_KEY},
        ),
    )
    assert status == 201
    # When staff ask a question
    status, headers, body = call(
        api,
        http_event(
            "POST",
            "/assistant/conversations",
            body={"content": "How many new leads this week?"},
            clinic_id=chat.clinic_id,
        ),
    )
    # Then it is accepted with the reply's id, where to poll it, and when
    assert status == 202, body
    accepted = body["data"]
    assert headers["location"] == f"/assistant/messages/{accepted['id']}"
    assert headers["retry-after"] == "1"
    assert accepted["status"] == "queued" and body["meta"]["operation"] == "askAssistant"
    # And the question, the queued reply, the job and its relayed outbox row are stored
    assert rows(chat, "SELECT role, status FROM messages ORDER BY created_at") == [
        ("user", "done"),
        ("assistant", "queued"),
    ]
    assert rows(chat, "SELECT status, request_id FROM jobs WHERE id = %s", accepted["jobId"]) == [
        ("queued", body["meta"]["requestId"])
    ]
    assert rows(chat, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == [(0,)]
    assert get_message(api, chat, accepted["id"])["status"] == "queued"
    assert llm.calls == 0

    # When LlmWorker drains the queue
    assert drain(chat, worker) == 1
    # Then the reply is readable, with the model's numbers
    reply = get_message(api, chat, accepted["id"])
    assert reply["status"] == "done" and reply["content"].startswith("(fake model)")
    assert (reply["provider"], reply["model"]) == ("openai", "fake-gpt")
    assert reply["inputTokens"] > 0 and reply["outputTokens"] > 0 and reply["latencyMs"] >= 0
    assert reply["replyTo"] == accepted["questionId"]
    assert rows(chat, "SELECT status, attempts FROM jobs WHERE id = %s", accepted["jobId"]) == [
        ("succeeded", 1)
    ]
    # And the model got the key from Secrets Manager and the clinic's context
    assert llm.authorizations == [f"Bearer {API_KEY}"]
    sent = llm.requests[0]["messages"]
    assert sent[0]["role"] == "system" and "new leads this week: 1" in sent[0]["content"]
    assert sent[-1] == {"role": "user", "content": "How many new leads this week?"}

    # When a follow-up is asked in the same conversation
    conversation_id = accepted["conversationId"]
    status, _, body = call(
        api,
        http_event(
            "POST",
            f"/assistant/conversations/{conversation_id}/messages",
            body={"content": "And today?"},
            clinic_id=chat.clinic_id,
        ),
    )
    assert status == 202
    drain(chat, worker)
    # Then the model saw the history, and the conversation reads in order
    assert [m["role"] for m in llm.requests[1]["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
    ]
    status, _, history = call(
        api,
        http_event("GET", f"/assistant/conversations/{conversation_id}", clinic_id=chat.clinic_id),
    )
    assert status == 200
    assert [(m["role"], m["status"]) for m in history["data"]["messages"]] == [
        ("user", "done"),
        ("assistant", "done"),
        ("user", "done"),
        ("assistant", "done"),
    ]
    assert history["data"]["title"] is None
    # And another clinic sees none of it
    for path in (
        f"/assistant/conversations/{conversation_id}",
        f"/assistant/messages/{reply['id']}",
    ):
        status, _, _ = call(api, http_event("GET", path, clinic_id=chat.other_clinic_id))
        assert status == 404
    status, _, _ = call(
        api,
        http_event(
            "POST",
            f"/assistant/conversations/{conversation_id}/messages",
            body={"content": "Hello?"},
            clinic_id=chat.other_clinic_id,
        ),
    )
    assert status == 404


def test_idempotency_key_replays_the_202_and_enqueues_nothing_new(chat: App, api: Any) -> None:
    # Given a question posted with an Idempotency-Key
    first = ask(api, chat, **{"idempotency-key": "ask-1"})
    # When the client retries it
    status, headers, body = call(
        api,
        http_event(
            "POST",
            "/assistant/conversations",
            body={"content": "How many new leads this week?", "title": "Leads"},
            clinic_id=chat.clinic_id,
            headers={"idempotency-key": "ask-1"},
        ),
    )
    # Then the same answer comes back and nothing more is stored or sent
    assert status == 202 and body["data"] == first and headers["idempotent-replayed"] == "true"
    assert rows(chat, "SELECT count(*) FROM jobs") == [(1,)]
    assert rows(chat, "SELECT count(*) FROM outbox") == [(1,)]


# ---------------------------------------------------------------- failures


def test_transient_errors_are_retried_then_the_reply_succeeds(
    chat: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    # Given a model that answers 429, then 500, then normally
    llm.script(429, 500)
    accepted = ask(api, chat)
    # When the worker drains the queue (backoff base 0: each retry reappears at once)
    seen = drain(chat, worker)
    # Then it took three receives and three calls, and one reply was stored
    assert (seen, llm.calls) == (3, 3)
    reply = get_message(api, chat, accepted["id"])
    assert reply["status"] == "done" and reply["error"] is None
    assert rows(chat, "SELECT status, attempts FROM jobs WHERE id = %s", accepted["jobId"]) == [
        ("succeeded", 3)
    ]
    assert rows(chat, "SELECT count(*) FROM messages WHERE role = 'assistant'") == [(1,)]


def test_a_transient_error_hides_the_message_for_the_backoff(
    chat: App, api: Any, worker: Any, llm: FakeLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a backoff of at least 60 s and a model that times out (hangs past the deadline)
    monkeypatch.setenv("LLM_RETRY_BASE_SECONDS", "120")
    monkeypatch.setenv("LLM_RETRY_MAX_SECONDS", "300")
    monkeypatch.setenv("LLM_TIMEOUT_SECONDS", "0.3")
    reset_process_state()
    llm.hang()
    accepted = ask(api, chat)
    # When the worker tries once
    assert poll(chat, worker) == 1
    llm.release()
    # Then the message is back on the queue but invisible (ChangeMessageVisibility), the
    # reply is queued again with the reason, and the job shows the error
    assert queue_counts(chat, "LlmQueue") == {"visible": 0, "hidden": 1, "delayed": 0}
    assert poll(chat, worker) == 0
    reply = get_message(api, chat, accepted["id"])
    assert reply["status"] == "queued" and "timed out" in reply["error"]
    assert rows(chat, "SELECT status, error FROM jobs WHERE id = %s", accepted["jobId"]) == [
        ("running", "the model timed out: no text within 1 s")
    ]


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        (lambda llm: llm.script(400), "the model refused the request (HTTP 400)"),
        (lambda llm: setattr(llm, "refuse", True), "the model declined to answer this question"),
    ],
    ids=["http-400", "refusal"],
)
def test_a_permanent_error_fails_the_job_at_once(
    chat: App, api: Any, worker: Any, llm: FakeLlm, setup: Any, error: str
) -> None:
    # Given a model that refuses the request
    setup(llm)
    accepted = ask(api, chat)
    # When the worker drains the queue
    seen = drain(chat, worker)
    # Then one call was made, the message is gone, and the job failed with a readable error
    assert (seen, llm.calls) == (1, 1)
    reply = get_message(api, chat, accepted["id"])
    assert (reply["status"], reply["error"]) == ("failed", error)
    assert rows(chat, "SELECT status, error FROM jobs WHERE id = %s", accepted["jobId"]) == [
        ("failed", error)
    ]
    assert queue_counts(chat, "LlmQueue") == {"visible": 0, "hidden": 0, "delayed": 0}


def test_after_the_last_attempt_the_job_is_dead_and_the_message_dead_lettered(
    chat: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    # Given a model that fails every time
    llm.script(*[500] * 10)
    accepted = ask(api, chat)
    # When the worker drains the queue
    seen = drain(chat, worker)
    # Then it tried maxReceiveCount (5) times, the job is dead, the message in the DLQ
    assert (seen, llm.calls) == (5, 5)
    reply = get_message(api, chat, accepted["id"])
    assert reply["status"] == "failed" and "last attempt" in reply["error"]
    assert rows(chat, "SELECT status, attempts FROM jobs WHERE id = %s", accepted["jobId"]) == [
        ("dead", 5)
    ]
    dead = chat.sqs().receive_message(QueueUrl=chat.queue_url("LlmDLQ"))["Messages"]
    assert [json.loads(m["Body"])["jobId"] for m in dead] == [accepted["jobId"]]


# ---------------------------------------------------------------- the circuit breaker


def test_the_circuit_opens_lets_messages_wait_and_closes_after_the_cool_down(
    chat: App, api: Any, worker: Any, llm: FakeLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a breaker that opens after 2 failures, and retries far apart
    monkeypatch.setenv("LLM_BREAKER_FAILURE_THRESHOLD", "2")
    monkeypatch.setenv("LLM_BREAKER_COOLDOWN_SECONDS", "60")
    monkeypatch.setenv("LLM_RETRY_BASE_SECONDS", "120")
    monkeypatch.setenv("LLM_RETRY_MAX_SECONDS", "300")
    reset_process_state()
    llm.script(500, 500)
    first, second = ask(api, chat, "one?"), ask(api, chat, "two?")
    assert (poll(chat, worker), poll(chat, worker)) == (1, 1)
    assert rows(chat, "SELECT state, failures FROM circuit_breakers") == [("open", 2)]
    # When a third question arrives while the circuit is open (asked an hour ago, say)
    third = ask(api, chat, "three?")
    execute(chat, "UPDATE jobs SET updated_at = now() - interval '1 hour'")
    assert poll(chat, worker) == 1
    # Then the model is not called, no attempt is spent, and the message waits as a delayed
    # copy (the original is deleted, so its receive count is not spent either)
    assert llm.calls == 2
    assert rows(chat, "SELECT status, attempts FROM jobs WHERE id = %s", third["jobId"]) == [
        ("queued", 0)
    ]
    assert get_message(api, chat, third["id"])["status"] == "queued"
    assert queue_counts(chat, "LlmQueue") == {"visible": 0, "hidden": 2, "delayed": 1}
    # And its job says its message is live, so Housekeeping does not take it for lost
    assert rows(
        chat,
        "SELECT updated_at > now() - interval '1 minute' FROM jobs WHERE id = %s",
        third["jobId"],
    ) == [(True,)]

    # When the cool-down is over (made so here rather than waited for) and the delayed copy
    # arrives: the half-open probe goes through and succeeds
    execute(chat, "UPDATE circuit_breakers SET opened_until = now() - interval '1 second'")
    chat.sqs().send_message(
        QueueUrl=chat.queue_url("LlmQueue"), MessageBody=job_message_body(chat, third["jobId"])
    )
    assert poll(chat, worker) == 1
    # Then the reply is stored and the circuit is closed again
    assert get_message(api, chat, third["id"])["status"] == "done"
    assert rows(chat, "SELECT state, failures FROM circuit_breakers") == [("closed", 0)]
    assert {first["id"], second["id"]} == {
        str(r[0]) for r in rows(chat, "SELECT id FROM messages WHERE status = 'queued'")
    }


def test_the_breaker_lets_one_probe_through_and_reopens_when_it_fails(chat: App) -> None:
    from frontdesk.platform import breaker
    from frontdesk.platform.db import transaction
    from frontdesk.services import get_services

    db = get_services().database
    with transaction(db) as cur:
        # Given an open breaker whose cool-down is over
        assert breaker.record_failure(cur, "p", threshold=1, cooldown_seconds=60) == "open"
        assert not breaker.admit(cur, "p", probe_lease_seconds=30).allowed
        cur.execute("UPDATE circuit_breakers SET opened_until = now() - interval '1 second'")
        # When two callers ask / Then only the first gets the probe
        assert breaker.admit(cur, "p", probe_lease_seconds=30) == breaker.Admission(True, 0, True)
        waiting = breaker.admit(cur, "p", probe_lease_seconds=30)
        assert not waiting.allowed and waiting.wait_seconds > 0
        # When the probe fails / Then the breaker is open again for a full cool-down
        assert breaker.record_failure(cur, "p", threshold=5, cooldown_seconds=60) == "open"
        assert breaker.admit(cur, "p", probe_lease_seconds=30).wait_seconds > 50
        # When a later probe succeeds / Then it is closed and lets everyone through
        cur.execute("UPDATE circuit_breakers SET opened_until = now() - interval '1 second'")
        assert breaker.admit(cur, "p", probe_lease_seconds=30).probe
        breaker.record_success(cur, "p")
        assert breaker.admit(cur, "p", probe_lease_seconds=30) == breaker.Admission(True)


# ---------------------------------------------------------------- duplicates, cancel, budget


def test_duplicate_delivery_produces_one_reply(
    chat: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    from frontdesk.assistant import replies as assistant
    from frontdesk.assistant.llm import OfflineModel
    from frontdesk.platform.db import SingleConnectionDatabase
    from frontdesk.platform.queues import JobMessage
    from frontdesk.services import get_services

    accepted = ask(api, chat)
    body = job_message_body(chat, accepted["jobId"])
    # Given a second delivery arriving while the first is with the model (another container)
    other_container = SingleConnectionDatabase(lambda: chat.database_url)
    during_call: list[str] = []

    def duplicate_arrives(_: dict[str, Any]) -> None:
        result = assistant.answer(
            other_container,
            get_services().cipher,
            OfflineModel(),
            JobMessage.model_validate_json(body),
            assistant.WorkerPolicy(100, 60, 20),
            timeout_seconds=2,
            last_attempt=False,
            relay=get_services().handoff,
        )
        during_call.append(result.outcome)

    llm.on_request = duplicate_arrives
    # When the same message is delivered twice in a batch, and the relay's copy once more
    answer = worker.handler(sqs_event([body, body]), LambdaContext())
    llm.on_request = None
    drain(chat, worker)
    other_container.close()
    # Then the copy during the call stepped back, the later ones found the reply done, and
    # there is exactly one model call and one reply
    assert answer == {"batchItemFailures": []}
    assert during_call == ["busy"]
    assert llm.calls == 1
    assert rows(chat, "SELECT count(*), min(status) FROM messages WHERE role = 'assistant'") == [
        (1, "done")
    ]
    assert rows(chat, "SELECT status, attempts FROM jobs") == [("succeeded", 1)]


def test_cancel_before_processing_stops_the_reply(
    chat: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    # Given a queued question
    accepted = ask(api, chat)
    path = f"/jobs/{accepted['jobId']}/cancel"
    no_body = {"content-length": "0"}
    # When another clinic tries to cancel it / Then it is not found
    status, _, _ = call(
        api, http_event("POST", path, clinic_id=chat.other_clinic_id, headers=no_body)
    )
    assert status == 404
    # When staff cancel it
    status, _, body = call(api, http_event("POST", path, clinic_id=chat.clinic_id, headers=no_body))
    # Then the job is cancelled and the reply shows it at once
    assert status == 200 and body["data"]["status"] == "cancelled"
    assert body["meta"]["operation"] == "cancelJob"
    reply = get_message(api, chat, accepted["id"])
    assert reply["status"] == "failed" and "cancelled" in reply["error"]
    # When the worker gets the message
    assert drain(chat, worker) == 1
    # Then the model was never called and the reply stays failed
    assert llm.calls == 0
    assert rows(chat, "SELECT status FROM messages WHERE role = 'assistant'") == [("failed",)]
    # And cancelling again is a conflict
    status, _, problem = call(
        api, http_event("POST", path, clinic_id=chat.clinic_id, headers=no_body)
    )
    assert status == 409 and "cancelled" in problem["detail"]


def test_budget_exceeded_is_refused_before_anything_is_enqueued(
    chat: App, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a clinic allowed 2 questions a minute, which it has used this minute and the next
    monkeypatch.setenv("ASSISTANT_REQUESTS_PER_MINUTE", "2")
    monkeypatch.setenv("ASSISTANT_TOKENS_PER_DAY", "1000")
    reset_process_state()
    execute(
        chat,
        """INSERT INTO assistant_usage (clinic_id, period, period_start, requests)
           SELECT %s, 'minute', date_trunc('minute', now()) + m * interval '1 minute', 2
           FROM generate_series(0, 1) AS m""",
        chat.clinic_id,
    )

    def refused() -> tuple[int, dict[str, str], Any]:
        return call(
            api,
            http_event(
                "POST",
                "/assistant/conversations",
                body={"content": "one more?"},
                clinic_id=chat.clinic_id,
                headers={"idempotency-key": "over-budget"},
            ),
        )

    # When it asks once more
    status, headers, problem = refused()
    # Then it gets 429 with a Retry-After within the minute, and nothing was written
    assert status == 429 and problem["title"] == "Too many requests", problem
    assert 1 <= int(headers["retry-after"]) <= 60
    assert rows(
        chat,
        "SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM jobs) "
        "+ (SELECT count(*) FROM outbox) + (SELECT count(*) FROM conversations) "
        "+ (SELECT count(*) FROM idempotency_keys)",
    ) == [(0,)]
    # Given a new minute but the day's tokens used up
    execute(chat, "DELETE FROM assistant_usage")
    execute(
        chat,
        """INSERT INTO assistant_usage (clinic_id, period, period_start, tokens)
           VALUES (%s, 'day', date_trunc('day', now(), 'UTC'), 1000)""",
        chat.clinic_id,
    )
    # When it asks / Then it is refused until the next UTC day
    status, headers, problem = refused()
    assert status == 429 and "tokens a day" in problem["detail"]
    assert 1 <= int(headers["retry-after"]) <= 86_400
    # And another clinic is not affected
    status, _, _ = call(
        api,
        http_event(
            "POST",
            "/assistant/conversations",
            body={"content": "hello?"},
            clinic_id=chat.other_clinic_id,
        ),
    )
    assert status == 202


# ---------------------------------------------------------------- no transaction during the call


def test_no_transaction_is_open_while_the_worker_waits_for_the_model(
    chat: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    from frontdesk.platform.db import PooledDatabase
    from frontdesk.services import get_services

    # Given the worker on a pool, so a connection checked out during the call would show
    settings = get_services().settings
    pool = PooledDatabase(
        chat.database_url, settings.db_connect_timeout_seconds, settings.db_statement_timeout_ms, 2
    )
    use_test_services(database=pool)
    accepted = ask(api, chat)
    seen: list[dict[str, Any]] = []

    def look_at_the_database(_: dict[str, Any]) -> None:
        # Runs inside the model call, on the fake server's thread, on its own connection.
        with psycopg.connect(chat.database_url, application_name="observer") as conn:
            sessions = conn.execute(
                """SELECT state, xact_start FROM pg_stat_activity
                   WHERE application_name = 'frontdesk' AND datname = current_database()"""
            ).fetchall()
            reply_status = conn.execute(
                "SELECT status FROM messages WHERE id = %s", (accepted["id"],)
            ).fetchone()
        stats = pool._pool.get_stats()
        seen.append(
            {
                "sessions": sessions,
                "reply": reply_status,
                "checked_out": stats["pool_size"] - stats["pool_available"],
            }
        )

    llm.on_request = look_at_the_database
    # When the worker answers the question
    drain(chat, worker)
    # Then during the call: the reply showed 'thinking', every frontdesk session was idle
    # with no transaction, and no pooled connection was checked out
    (during,) = seen
    assert during["reply"] == ("thinking",)
    assert during["sessions"] and all(
        state == "idle" and xact_start is None for state, xact_start in during["sessions"]
    )
    assert during["checked_out"] == 0
    assert get_message(api, chat, accepted["id"])["status"] == "done"


# ---------------------------------------------------------------- streaming


def reply_events(app: App, reply_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The reply's events in the order the worker wrote them, as a subscribed client gets
    them (decrypted by `for_client`, as the PushWorker does); each one relayed."""
    from frontdesk.assistant.reply_events import for_client
    from frontdesk.services import get_services

    cipher = get_services().cipher
    found = rows(
        app,
        """SELECT payload, sent_at IS NOT NULL FROM outbox
           WHERE target = 'bus' AND payload -> 'detail' ->> 'replyId' = %s ORDER BY id""",
        reply_id,
    )
    assert all(sent for _, sent in found), "every event was relayed as it was committed"
    return [(p["detailType"], for_client(cipher, p["detailType"], p["detail"])) for p, _ in found]


def deltas_of(events: list[tuple[str, dict[str, Any]]], attempt: int) -> list[dict[str, Any]]:
    return [d for t, d in events if t == "assistant.reply.delta" and d["attempt"] == attempt]


def dones(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [d for t, d in events if t == "assistant.reply.done"]


def relayed(app: App, reply_id: str) -> int:
    found = rows(
        app,
        """SELECT count(*) FROM outbox
           WHERE payload -> 'detail' ->> 'replyId' = %s AND sent_at IS NOT NULL""",
        reply_id,
    )
    return int(found[0][0])


def wait_until(condition: Any, seconds: float = 10) -> bool:
    """Poll until `condition()` holds (True) or `seconds` pass (False): a wait, not a timing."""
    import threading
    import time

    give_up = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > give_up:
            return False
        threading.Event().wait(0.01)
    return True


@pytest.fixture
def every_chunk(chat: App, monkeypatch: pytest.MonkeyPatch) -> App:
    """Deltas not coalesced: one per token the model sends, so counts are exact. Each is
    relayed within a generous budget (never left to the sweeper on a loaded machine), and the
    model may wait for that between tokens (tests look at the database meanwhile)."""
    monkeypatch.setenv("LLM_DELTA_INTERVAL_MS", "0")
    monkeypatch.setenv("RELAY_READ_TIMEOUT_SECONDS", "10")
    monkeypatch.setenv("RELAY_BUDGET_SECONDS", "30")
    monkeypatch.setenv("LLM_TIMEOUT_SECONDS", "15")
    reset_process_state()
    return chat


def test_a_reply_streams_as_deltas_then_done_with_the_text_that_is_stored(
    every_chunk: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    # Given a model that streams 12 tokens and quotes the question, which names a patient
    llm.tokens, llm.echo = 12, True
    accepted = ask(api, every_chunk, content="Did ada@example.org confirm for 9:00?")
    # When the worker answers
    assert drain(every_chunk, worker) == 1
    # Then the model was asked for a stream, with its usage
    assert llm.requests[0]["stream"] is True
    assert llm.requests[0]["stream_options"] == {"include_usage": True}
    # And staff got 12 deltas in order, then done, each relayed as it was committed
    events = reply_events(every_chunk, accepted["id"])
    deltas = deltas_of(events, 1)
    assert [d["seq"] for d in deltas] == list(range(1, 13))
    assert [t for t, _ in events] == ["assistant.reply.delta"] * 12 + ["assistant.reply.done"]
    assert not any(d["reset"] for d in deltas)
    assert len({d["eventId"] for _, d in events}) == 13
    (done,) = dones(events)
    # And the deltas joined, the done event's content and the stored reply are the same text
    reply = get_message(api, every_chunk, accepted["id"])
    assert reply["status"] == "done" and "ada@example.org" in reply["content"]
    assert "".join(d["delta"] for d in deltas) == reply["content"] == done["content"]
    assert (done["status"], done["attempt"], done["error"]) == ("done", 1, None)
    assert done["conversationId"] == accepted["conversationId"]
    assert done["jobId"] == accepted["jobId"] and done["clinicId"] == str(every_chunk.clinic_id)
    # And the usage came from the stream's last chunk
    assert reply["outputTokens"] == len(reply["content"]) // 4 + 1
    # And no event holds the text in plaintext: only ids, counters and ciphertext
    payloads = rows(every_chunk, "SELECT payload::text FROM outbox WHERE target = 'bus'")
    assert payloads and not any("ada@example.org" in p or "fake model" in p for (p,) in payloads)


def test_chunks_arriving_together_are_coalesced(
    chat: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    # Given a model that sends its 30 tokens at once, and deltas at most every 250 ms
    llm.tokens = 30
    accepted = ask(api, chat)
    drain(chat, worker)
    # Then the first token went at once and the rest in far fewer deltas than tokens
    deltas = deltas_of(reply_events(chat, accepted["id"]), 1)
    assert 2 <= len(deltas) < 30
    assert deltas[0]["delta"] == "(fake "
    content = get_message(api, chat, accepted["id"])["content"]
    assert "".join(d["delta"] for d in deltas) == content


def test_a_stream_cut_mid_way_is_streamed_again_with_reset_and_stored_once(
    every_chunk: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    # Given a model whose first stream drops its connection after 4 tokens
    llm.tokens = 10
    llm.cut_stream(after_tokens=4)
    accepted = ask(api, every_chunk)
    # When the worker drains the queue (the retry reappears at once)
    assert drain(every_chunk, worker) == 2
    # Then the first attempt streamed 4 deltas, the second streamed again from the start,
    # its first delta saying reset
    events = reply_events(every_chunk, accepted["id"])
    first, second = deltas_of(events, 1), deltas_of(events, 2)
    assert [(d["seq"], d["reset"]) for d in first] == [
        (1, False),
        (2, False),
        (3, False),
        (4, False),
    ]
    assert [d["seq"] for d in second] == list(range(1, 11))
    assert [d["reset"] for d in second] == [True] + [False] * 9
    # And one done, one stored reply: the second attempt's text
    (done,) = dones(events)
    reply = get_message(api, every_chunk, accepted["id"])
    assert (done["status"], done["attempt"]) == ("done", 2)
    assert "".join(d["delta"] for d in second) == reply["content"] == done["content"]
    assert rows(every_chunk, "SELECT count(*) FROM messages WHERE role = 'assistant'") == [(1,)]
    assert rows(
        every_chunk, "SELECT status, attempts, error FROM jobs WHERE id = %s", accepted["jobId"]
    ) == [("succeeded", 2, None)]


def test_a_worker_that_dies_mid_stream_leaves_the_retry_to_stream_again_from_the_start(
    every_chunk: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    from frontdesk.assistant import replies
    from frontdesk.assistant.llm import ChatStream, ChatTurn
    from frontdesk.platform.queues import JobMessage
    from frontdesk.services import get_services

    class Killed(BaseException):
        """The process ending mid-stream: nothing after it runs (no except, no cleanup)."""

    class DiesAfterThreeDeltas:
        def __init__(self, model: Any) -> None:
            self.model, self.provider, self.breaker_name = model, model.provider, model.breaker_name

        def stream(self, system: str, turns: list[ChatTurn], **kwargs: Any) -> ChatStream:
            for n, piece in enumerate(self.model.stream(system, turns, **kwargs), start=1):
                yield piece
                if n == 3:
                    raise Killed

    llm.tokens = 8
    accepted = ask(api, every_chunk)
    services = get_services()
    message = JobMessage.model_validate_json(job_message_body(every_chunk, accepted["jobId"]))
    # Given a worker that dies after its third delta
    with pytest.raises(Killed):
        replies.answer(
            services.database,
            services.cipher,
            DiesAfterThreeDeltas(services.chat_model),  # type: ignore[arg-type]
            message,
            replies.WorkerPolicy(100, 60, 20, delta_interval_seconds=0),
            timeout_seconds=2,
            last_attempt=False,
            relay=services.handoff,
        )
    # Then its claim holds the reply for a while: another delivery steps back
    assert rows(every_chunk, "SELECT status FROM messages WHERE id = %s", accepted["id"]) == [
        ("thinking",)
    ]
    assert drain(every_chunk, worker) == 1 and llm.calls == 1
    # When the claim has expired (the message comes back after the visibility timeout, well
    # after the claim: made so here) and the message is delivered again
    execute(every_chunk, "UPDATE messages SET claimed_until = now() - interval '1 second'")
    every_chunk.sqs().send_message(
        QueueUrl=every_chunk.queue_url("LlmQueue"),
        MessageBody=message.model_dump_json(by_alias=True),
    )
    assert drain(every_chunk, worker) == 1
    # Then the retry streamed from the start with reset, and the reply was stored once
    events = reply_events(every_chunk, accepted["id"])
    assert [d["seq"] for d in deltas_of(events, 1)] == [1, 2, 3]
    second = deltas_of(events, 2)
    assert second[0]["reset"] and [d["seq"] for d in second] == list(range(1, 9))
    (done,) = dones(events)
    reply = get_message(api, every_chunk, accepted["id"])
    assert "".join(d["delta"] for d in second) == reply["content"] == done["content"]
    assert rows(every_chunk, "SELECT status, attempts FROM jobs") == [("succeeded", 2)]


@pytest.mark.parametrize(
    ("error_type", "job", "reply_status"),
    [
        ("server_error", ("succeeded", 2), "done"),
        ("invalid_request_error", ("failed", 1), "failed"),
    ],
    ids=["transient", "permanent"],
)
def test_an_error_during_a_stream_is_retried_or_fails_the_reply(
    every_chunk: App,
    api: Any,
    worker: Any,
    llm: FakeLlm,
    error_type: str,
    job: tuple[str, int],
    reply_status: str,
) -> None:
    # Given a model whose first stream reports an error after 3 tokens
    llm.tokens = 6
    llm.fail_stream(after_tokens=3, error_type=error_type)
    accepted = ask(api, every_chunk)
    # When the worker drains the queue
    drain(every_chunk, worker)
    # Then a server error is retried (streamed again, stored) and an invalid request fails
    assert rows(
        every_chunk, "SELECT status, attempts FROM jobs WHERE id = %s", accepted["jobId"]
    ) == [job]
    reply = get_message(api, every_chunk, accepted["id"])
    assert reply["status"] == reply_status
    events = reply_events(every_chunk, accepted["id"])
    assert len(deltas_of(events, 1)) == 3
    (done,) = dones(events)
    assert done["status"] == reply_status
    if reply_status == "failed":
        assert (
            done["error"]
            == reply["error"]
            == ("the model refused the request mid-stream (invalid_request_error)")
        )
        assert done["content"] is None and reply["content"] is None
    else:
        assert deltas_of(events, 2)[0]["reset"] and done["content"] == reply["content"]


def test_no_deltas_after_a_failed_relay_and_done_still_comes(
    every_chunk: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    from frontdesk.platform import outbox
    from frontdesk.services import get_services
    from tests.support import unreachable_publisher

    # Given a question asked, then EventBridge unreachable for the worker
    llm.tokens = 6
    accepted = ask(api, every_chunk)
    settings = get_services().settings
    use_test_services(relay_publisher=unreachable_publisher(settings.queue_urls()))
    # When the worker answers
    assert drain(every_chunk, worker) == 1
    # Then the attempt's first relay (its job's start event) failed, so it wrote no deltas,
    # but the reply was stored and its done event written, waiting for the sweeper with the
    # job's events
    reply = get_message(api, every_chunk, accepted["id"])
    assert reply["status"] == "done"
    waiting = rows(
        every_chunk,
        """SELECT payload ->> 'detailType', sent_at IS NULL FROM outbox
           WHERE target = 'bus' ORDER BY id""",
    )
    assert sorted(waiting) == [
        ("assistant.reply.done", True),
        ("job.completed", True),
        ("job.progress", True),
    ]
    # When the sweeper runs with EventBridge back / Then done brings the whole reply
    sent = outbox.sweep(get_services().database, get_services().publisher, min_age_seconds=0)
    assert len(sent.sent) == sum(1 for _, unsent in waiting if unsent)
    events = reply_events(every_chunk, accepted["id"])
    assert dones(events)[0]["content"] == reply["content"]


def test_every_failed_reply_ends_with_a_done_event(
    every_chunk: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    # Given a question the model refuses, and one it fails on every time
    llm.script(400)
    refused = ask(api, every_chunk, "one?")
    drain(every_chunk, worker)
    llm.script(*[500] * 5)
    dead = ask(api, every_chunk, "two?")
    drain(every_chunk, worker)
    # Then each reply's failure was told, with the reply's error, once
    for accepted, attempt in ((refused, 1), (dead, 5)):
        events = reply_events(every_chunk, accepted["id"])
        reply = get_message(api, every_chunk, accepted["id"])
        assert [(t, d["status"], d["attempt"], d["error"]) for t, d in events] == [
            ("assistant.reply.done", "failed", attempt, reply["error"])
        ]


def test_a_job_cancelled_mid_stream_stops_the_stream(
    every_chunk: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    # Given a model streaming 20 tokens, and staff cancelling the job as it sends the 4th
    llm.tokens = 20
    accepted = ask(api, every_chunk)

    def cancel(token: int) -> None:
        """Once the worker has sent the deltas of the first 3 tokens, cancel."""
        if token == 4:
            wait_until(lambda: relayed(every_chunk, accepted["id"]) == 3)
            execute(
                every_chunk,
                "UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE id = %s",
                accepted["jobId"],
            )

    llm.on_token = cancel
    # When the worker answers
    drain(every_chunk, worker)
    # Then the stream stopped at the first delta after the cancel: the reply reads failed,
    # a done says so, and nothing was stored
    events = reply_events(every_chunk, accepted["id"])
    assert len(deltas_of(events, 1)) == 3
    (done,) = dones(events)
    reply = get_message(api, every_chunk, accepted["id"])
    assert (reply["status"], reply["content"]) == ("failed", None)
    assert done["status"] == "failed" and done["error"] == reply["error"]
    assert "cancelled" in reply["error"]
    assert rows(every_chunk, "SELECT status FROM jobs") == [("cancelled",)]


def test_no_transaction_is_open_between_chunks_of_the_stream(
    every_chunk: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    from frontdesk.platform.db import PooledDatabase
    from frontdesk.services import get_services

    # Given the worker on a pool, and a model that streams 6 tokens
    settings = get_services().settings
    pool = PooledDatabase(
        every_chunk.database_url,
        settings.db_connect_timeout_seconds,
        settings.db_statement_timeout_ms,
        2,
    )
    use_test_services(database=pool)
    llm.tokens = 6
    accepted = ask(api, every_chunk)
    seen: list[dict[str, Any]] = []

    def now() -> dict[str, Any]:
        with psycopg.connect(every_chunk.database_url, application_name="observer") as conn:
            sessions = conn.execute(
                """SELECT state, xact_start FROM pg_stat_activity
                   WHERE application_name = 'frontdesk' AND datname = current_database()"""
            ).fetchall()
        stats = pool._pool.get_stats()
        return {
            "relayed": relayed(every_chunk, accepted["id"]),
            "idle": bool(sessions) and all(s == "idle" and x is None for s, x in sessions),
            "checked_out": stats["pool_size"] - stats["pool_available"],
        }

    def between_chunks(token: int) -> None:
        """Before token n (n > 1) the worker has the n - 1 before it and waits for the
        model: once their deltas are relayed, it must hold nothing while it waits."""
        if token > 1:
            expected = {"relayed": token - 1, "idle": True, "checked_out": 0}
            wait_until(lambda: now() == expected)
            seen.append(now())

    llm.on_token = between_chunks
    # When the worker answers
    drain(every_chunk, worker)
    # Then before every chunk after the first, the deltas so far were relayed, every
    # frontdesk session was idle with no transaction, and no pooled connection was out
    assert seen == [{"relayed": n, "idle": True, "checked_out": 0} for n in range(1, 6)]
    assert get_message(api, every_chunk, accepted["id"])["status"] == "done"
