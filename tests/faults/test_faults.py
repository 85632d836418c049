"""Faults injected into the running system (real PostgreSQL, moto's server, the functions'
handlers polled like Lambda's event source mappings). Each test drives a fixed workload,
injects one fault, then checks the books: every accepted request has exactly its effects
(one lead, one job, one email, one reply), no more and no less."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pytest

from local.fake_llm import FakeLlm
from tests.integration.conftest import FORM_KEY, App, sent_emails
from tests.support import (
    LambdaContext,
    http_event,
    http_response,
    load_handler,
    reset_process_state,
    unreachable_publisher,
    use_test_services,
)


def person(i: int) -> dict[str, Any]:
    return {"name": f"Person {i}", "email": f"person{i}@example.org", "consent": True}


def post_leads(api: Any, count: int) -> list[dict[str, Any]]:
    accepted = []
    for i in range(count):
        event = http_event(
            "POST", "/public/leads", body=person(i), headers={"x-form-key": FORM_KEY}
        )
        status, _, body = http_response(api.handler(event, LambdaContext()))
        assert status == 201, body
        accepted.append(body["data"])
    return accepted


def drain(app: App, function_id: str, handler: Any, *, wait: int = 0, rounds: int = 10_000) -> int:
    """Poll the function's queue like Lambda until a receive finds nothing."""
    retry = None if function_id == "LlmWorker" else 0
    return app.drain(function_id, handler, wait=wait, rounds=rounds, retry_after_seconds=retry)


def one(app: App, sql: str, *params: Any) -> Any:
    with psycopg.connect(app.database_url) as conn:
        row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0] if len(row) == 1 else row


def queue_depth(app: App, logical_id: str) -> int:
    attributes = app.sqs().get_queue_attributes(
        QueueUrl=app.queue_url(logical_id),
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


def lead_books(app: App, accepted: list[dict[str, Any]]) -> dict[str, int]:
    """What the accepted leads produced; balanced when every value equals len(accepted)."""
    ids = [a["id"] for a in accepted]
    jobs = [a["jobId"] for a in accepted]
    emails = [e for e in sent_emails(app.moto_url) if e.data.get("leadId") in set(ids)]
    return {
        "leads": one(app, "SELECT count(*) FROM leads WHERE id = ANY(%s::uuid[])", ids),
        "jobs succeeded": one(
            app,
            "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND status = 'succeeded'",
            jobs,
        ),
        "deliveries sent": one(
            app,
            """SELECT count(*) FROM notification_deliveries
               WHERE job_id = ANY(%s::uuid[]) AND status = 'sent'""",
            jobs,
        ),
        "emails": len(emails),
        "emails to distinct leads": len({e.data["leadId"] for e in emails}),
    }


# ---------------------------------------------------------------- SQS unreachable


@pytest.mark.slow
def test_sqs_unreachable_after_commit_the_sweeper_delivers_everything(
    app: App, api: Any, notify: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given SQS and EventBridge unreachable from the API right after its commits
    use_test_services(
        relay_publisher=unreachable_publisher(
            {"notifications": app.queue_url("NotificationsQueue")}
        )
    )
    # When 100 leads are posted (each still answered 201) and nothing reached the queue
    accepted = post_leads(api, 100)
    assert queue_depth(app, "NotificationsQueue") == 0
    assert one(app, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 200  # job + event
    # When SQS is back and the sweeper runs, then NotifyWorker drains the queue
    monkeypatch.setenv("OUTBOX_SWEEP_MIN_AGE_SECONDS", "0")
    reset_process_state()
    swept = load_handler("outbox_sweeper").handler({}, LambdaContext())
    drain(app, "NotifyWorker", notify)
    # Then every accepted lead has exactly its job, delivery and email
    assert swept["sent"] == 200 and swept["failed"] == 0
    assert one(app, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
    assert set(lead_books(app, accepted).values()) == {100}


# ---------------------------------------------------------------- duplicates


def test_every_message_delivered_twice_the_books_still_balance(
    app: App, api: Any, notify: Any
) -> None:
    # Given 50 leads whose notification messages are all on the queue twice
    accepted = post_leads(api, 50)
    sqs, url = app.sqs(), app.queue_url("NotificationsQueue")
    bodies = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        bodies += [m["Body"] for m in batch]
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)
            ],
        )
    assert len(bodies) == 50
    for body in bodies + bodies:
        sqs.send_message(QueueUrl=url, MessageBody=body)
    # When NotifyWorker drains the queue
    assert drain(app, "NotifyWorker", notify) == 100
    # Then each lead got one email, no more
    assert set(lead_books(app, accepted).values()) == {50}


# ---------------------------------------------------------------- a poison message


def test_a_poison_message_in_a_batch_of_ten_nine_succeed_and_it_is_dead_lettered(
    app: App, api: Any, notify: Any
) -> None:
    from frontdesk.ops import dead_letters
    from frontdesk.services import get_services

    # Given nine good messages and one poison message in one batch
    accepted = post_leads(api, 9)
    poison = json.dumps({"jobId": str(uuid.uuid4()), "kind": "notify.unknown"})
    app.sqs().send_message(QueueUrl=app.queue_url("NotificationsQueue"), MessageBody=poison)
    # When NotifyWorker polls (failed records reappear at once) until the queue is empty
    seen = drain(app, "NotifyWorker", notify)
    # Then the nine succeeded once each, the poison was tried maxReceiveCount (5) times
    assert seen == 9 + 5
    assert set(lead_books(app, accepted).values()) == {9}
    # And it is on the DLQ, listed with the worker's reason
    letters = dead_letters.list_dead_letters(
        get_services().database,
        app.sqs(),
        dead_letters.queues(get_services().settings.dead_letter_queues(), "notifications"),
    )
    assert len(letters) == 1
    assert letters[0].reason == "malformed notify message (body: union_tag_invalid)"


# ---------------------------------------------------------------- the model provider fails


@pytest.fixture
def llm() -> Iterator[FakeLlm]:
    with FakeLlm() as server:
        yield server


@pytest.mark.slow
def test_model_outage_opens_the_breaker_nothing_is_dead_lettered_all_answered_after(
    app: App, llm: FakeLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = boto3.client("secretsmanager", endpoint_url=app.moto_url).create_secret(
        Name=f"llm-key-{uuid.uuid4().hex[:8]}", SecretString=json.dumps({"apiKey": "k"})
    )
    for name, value in {
        "LLM_PROVIDER": "openai",
        "LLM_BASE_URL": llm.base_url,
        "LLM_SECRET_ARN": secret["ARN"],
        "LLM_TIMEOUT_SECONDS": "2",
        "LLM_RETRY_BASE_SECONDS": "0",
        "LLM_RETRY_MAX_SECONDS": "0",
        "LLM_BREAKER_FAILURE_THRESHOLD": "3",
        "LLM_BREAKER_COOLDOWN_SECONDS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    reset_process_state()
    api, worker = load_handler("api"), load_handler("llm_worker")
    # Given the model answering 500 to the next 12 calls (an outage), then recovering
    llm.script(*([500] * 12))
    # When 20 questions are asked and LlmWorker polls until the queue is empty
    accepted = []
    for i in range(20):
        event = http_event(
            "POST",
            "/assistant/conversations",
            body={"content": f"Question {i}?"},
            clinic_id=app.clinic_id,
        )
        status, _, body = http_response(api.handler(event, LambdaContext()))
        assert status == 202, body
        accepted.append(body["data"])
    breaker_opened = False
    # Bounded by time, not by rounds: how many receives the outage takes depends on the
    # machine's speed (waiting messages come back after the breaker's cool-down).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        received = drain(app, "LlmWorker", worker, wait=1, rounds=1)
        if one(app, "SELECT count(*) FROM circuit_breakers WHERE state = 'open'"):
            breaker_opened = True
        if received == 0 and queue_depth(app, "LlmQueue") == 0:
            break
    # Then the circuit opened during the outage, nothing was dead-lettered or given up on,
    # and every question has exactly one reply
    ids = [a["id"] for a in accepted]
    assert breaker_opened
    assert queue_depth(app, "LlmDLQ") == 0
    assert one(app, "SELECT count(*) FROM jobs WHERE status IN ('dead', 'failed')") == 0
    assert (
        one(
            app, "SELECT count(*) FROM messages WHERE id = ANY(%s::uuid[]) AND status = 'done'", ids
        )
        == 20
    )
    assert one(app, "SELECT count(*) FROM messages WHERE role = 'assistant'") == 20
    assert llm.calls == 12 + 20


# ---------------------------------------------------------------- a worker killed


_KILLED_WORKER = """
import os, signal, boto3
from frontdesk.notifications import channels
from local.sqs_source import poll_once
from tests.support import LambdaContext, load_handler

def killed(self, **kwargs):
    # The claims are committed; the process dies before SES is called (SIGKILL: no cleanup).
    os.kill(os.getpid(), signal.SIGKILL)

channels.SesMailer.send_templated = killed
notify = load_handler("notify_worker")
poll_once(
    boto3.client("sqs", endpoint_url=os.environ["AWS_ENDPOINT_URL"]),
    queue_url=os.environ["KILL_QUEUE_URL"], queue_arn=os.environ["KILL_QUEUE_ARN"],
    region="us-east-1", batch_size=10, partial_batch_response=True,
    invoke=lambda event: notify.handler(event, LambdaContext()), wait_seconds=1,
)
"""


@pytest.mark.slow
def test_a_worker_killed_mid_batch_its_records_are_redelivered_and_processed_once(
    app: App, api: Any, notify: Any
) -> None:
    import signal
    import subprocess
    import sys

    from tests.support import REPO

    # Given 30 leads, and the queue's visibility timeout shortened to 2 s for the test
    accepted = post_leads(api, 30)
    url = app.queue_url("NotificationsQueue")
    app.sqs().set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "2"})
    source = next(
        s for s in app.stack.sqs_event_sources() if s.function_logical_id == "NotifyWorker"
    )
    # When a NotifyWorker process takes a batch of ten and is killed in the middle of it
    worker = subprocess.run(
        [sys.executable, "-c", _KILLED_WORKER],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": f"{REPO / 'layers' / 'frontdesk'}:{REPO}",
            "KILL_QUEUE_URL": url,
            "KILL_QUEUE_ARN": source.queue_arn,
        },
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert worker.returncode == -signal.SIGKILL, worker.stderr[-2000:]
    held = one(app, "SELECT count(*) FROM notification_deliveries WHERE status = 'sending'")
    assert held == 10 and sent_emails(app.moto_url) == []
    # And its claims expire (120 s, shorter than the real 181 s visibility timeout: made so
    # here rather than waited for) while the other workers go on
    with psycopg.connect(app.database_url) as conn:
        conn.execute("UPDATE notification_deliveries SET claimed_until = now() - interval '1 s'")
    for _ in range(30):
        drain(app, "NotifyWorker", notify, wait=1)
        if queue_depth(app, "NotificationsQueue") == 0:
            break
    # Then the killed batch was redelivered and every lead got exactly one email
    assert queue_depth(app, "NotificationsDLQ") == 0
    assert set(lead_books(app, accepted).values()) == {30}


_KILLED_MID_STREAM = """
import os, signal, boto3, psycopg
from frontdesk.platform import handoff
from local.sqs_source import poll_once
from tests.support import LambdaContext, load_handler

relay_now = handoff.RelayNow.submit
deltas = []

def submit(self, outbox_ids):
    relay_now(self, outbox_ids)
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        deltas.extend(conn.execute(
            "SELECT id FROM outbox WHERE id = ANY(%s)"
            " AND payload ->> 'detailType' = 'assistant.reply.delta'",
            (list(outbox_ids),),
        ).fetchall())
    if len(deltas) >= 3:  # three deltas relayed, the model still streaming: SIGKILL
        os.kill(os.getpid(), signal.SIGKILL)

handoff.RelayNow.submit = submit
worker = load_handler("llm_worker")
poll_once(
    boto3.client("sqs", endpoint_url=os.environ["AWS_ENDPOINT_URL"]),
    queue_url=os.environ["KILL_QUEUE_URL"], queue_arn=os.environ["KILL_QUEUE_ARN"],
    region="us-east-1", batch_size=1, partial_batch_response=True,
    invoke=lambda event: worker.handler(event, LambdaContext()), wait_seconds=1,
)
"""


@pytest.mark.slow
def test_an_llm_worker_killed_mid_stream_the_retry_streams_again_and_stores_once(
    app: App, llm: FakeLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import subprocess
    import sys

    from frontdesk.assistant.reply_events import for_client
    from frontdesk.services import get_services
    from tests.support import REPO

    for name, value in {
        "LLM_PROVIDER": "openai",
        "LLM_BASE_URL": llm.base_url,
        "LLM_API_KEY": "k",
        "LLM_DELTA_INTERVAL_MS": "0",
    }.items():
        monkeypatch.setenv(name, value)
    reset_process_state()
    api, worker = load_handler("api"), load_handler("llm_worker")
    # Given a question, a model streaming 12 tokens, and the llm queue's visibility timeout
    # shortened to 2 s for the test (360 s in the template)
    llm.tokens = 12
    event = http_event(
        "POST", "/assistant/conversations", body={"content": "Leads?"}, clinic_id=app.clinic_id
    )
    status, _, body = http_response(api.handler(event, LambdaContext()))
    assert status == 202, body
    reply_id = body["data"]["id"]
    url = app.queue_url("LlmQueue")
    app.sqs().set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "2"})
    source = next(s for s in app.stack.sqs_event_sources() if s.function_logical_id == "LlmWorker")
    # When an LlmWorker process is SIGKILLed after relaying its third delta, mid-stream
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_STREAM],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": f"{REPO / 'layers' / 'frontdesk'}:{REPO}",
            "KILL_QUEUE_URL": url,
            "KILL_QUEUE_ARN": source.queue_arn,
        },
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert one(app, "SELECT status FROM messages WHERE id = %s", reply_id) == "thinking"
    # And its claim expires (the call's timeout + 15 s, well before the real visibility
    # timeout: made so here rather than waited for) before SQS shows the message again
    with psycopg.connect(app.database_url) as conn:
        conn.execute("UPDATE messages SET claimed_until = now() - interval '1 s'")
    deadline = time.monotonic() + 30
    while one(app, "SELECT status FROM messages WHERE id = %s", reply_id) != "done":
        assert time.monotonic() < deadline, "the message never came back"
        drain(app, "LlmWorker", worker, wait=1, rounds=1)
    # Then the retry streamed from the start, saying reset, and the reply is stored once
    with psycopg.connect(app.database_url) as conn:
        events = [
            for_client(get_services().cipher, p["detailType"], p["detail"])
            for (p,) in conn.execute(
                """SELECT payload FROM outbox
                   WHERE payload -> 'detail' ->> 'replyId' = %s ORDER BY id""",
                (reply_id,),
            )
        ]
    deltas = [(e["attempt"], e["seq"], e["reset"]) for e in events if "seq" in e]
    assert deltas[:3] == [(1, 1, False), (1, 2, False), (1, 3, False)]
    assert deltas[3:] == [(2, 1, True)] + [(2, seq, False) for seq in range(2, 13)]
    (done,) = [e for e in events if "status" in e]
    second = "".join(e["delta"] for e in events if e.get("attempt") == 2 and "seq" in e)
    assert (done["status"], done["attempt"], done["content"]) == ("done", 2, second)
    assert one(app, "SELECT count(*) FROM messages WHERE role = 'assistant'") == 1
    assert one(app, "SELECT status, attempts FROM jobs") == ("succeeded", 2)
    assert llm.calls == 2
