"""A job's changes are events: the jobs table's trigger writes them to the outbox in the
transaction that made the change, the unit of work hands them off with its own rows, and
the bus routes them to the push queue."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from frontdesk.platform import jobs
from frontdesk.platform.queues import JobKind, Queue, parse
from tests.integration.conftest import App
from tests.support import LambdaContext, load_handler, sqs_event


def pushed(app: App) -> list[Any]:
    sqs = app.sqs()
    answer = sqs.receive_message(
        QueueUrl=app.queue_url("PushQueue"), MaxNumberOfMessages=10, WaitTimeSeconds=1
    )
    return [parse(Queue.PUSH, m["Body"]) for m in answer.get("Messages", [])]


def test_a_jobs_progress_and_end_reach_the_push_queue_without_its_payload(app: App) -> None:
    from frontdesk.services import get_services

    services = get_services()
    # Given a job (its creation is no change of status: no event)
    with services.unit_of_work(request_id="req-1") as uow:
        job_id = uow.start_job(JobKind.SYNC_FETCH, app.clinic_id, {"secret": "payload"})
    # When a worker reports progress, then finishes it, each in a unit of work
    with services.unit_of_work() as uow:
        jobs.set_progress(uow.cur, job_id, percent=40, message="4/10 fetched")
    with services.unit_of_work() as uow:
        jobs.finish(uow.cur, job_id, status="succeeded", result={"created": 10})
    # Then both events were relayed at once (the outbox rows are sent)...
    with services.database.connection() as conn:
        rows = conn.execute(
            """SELECT payload ->> 'detailType' AS type, sent_at IS NOT NULL AS sent
               FROM outbox WHERE target = 'bus' ORDER BY id"""
        ).fetchall()
    assert [(r["type"], r["sent"]) for r in rows] == [
        ("job.progress", True),
        ("job.completed", True),
    ]
    # ...and the bus routed them to the push queue, for this clinic, without the payload
    events = {e.detail_type.value: e for e in pushed(app) + pushed(app)}
    assert set(events) == {"job.progress", "job.completed"}
    progress = events["job.progress"].detail
    assert progress["jobId"] == str(job_id) and progress["progress"] == 40
    assert progress["progressMessage"] == "4/10 fetched" and progress["status"] == "queued"
    assert events["job.completed"].clinic_id == app.clinic_id
    assert "payload" not in json.dumps([e.detail for e in events.values()])
    assert "created" not in json.dumps([e.detail for e in events.values()])


def test_a_change_rolled_back_publishes_nothing(app: App) -> None:
    from frontdesk.services import get_services

    services = get_services()
    with services.unit_of_work() as uow:
        job_id = uow.start_job(JobKind.SYNC_FETCH, app.clinic_id, {})
    # Given a unit of work that changes the job and then fails
    try:
        with services.unit_of_work() as uow:
            jobs.set_progress(uow.cur, job_id, percent=10, message="started")
            raise RuntimeError("the worker crashed")
    except RuntimeError:
        pass
    # Then no event was written, and none reached the push queue
    with services.database.connection() as conn:
        count = conn.execute("SELECT count(*) AS n FROM outbox WHERE target = 'bus'").fetchone()
    assert count is not None and count["n"] == 0
    assert pushed(app) == []


def test_a_reply_event_whose_text_is_not_its_own_is_dead_lettered_with_the_reason(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    from frontdesk.assistant import reply_events
    from frontdesk.services import get_services

    services = get_services()
    conversation, reply = uuid.uuid4(), uuid.uuid4()
    # Given a screen following a conversation
    with services.database.connection() as conn:
        conn.execute(
            """INSERT INTO websocket_connections (connection_id, clinic_id, subject, topics)
               VALUES ('screen=', %s, 'staff', %s)""",
            (app.clinic_id, [f"conversation:{conversation}"]),
        )
    # And a delta whose ciphertext was made for another position of the reply (seq 1 sent
    # as seq 2: the associated data no longer matches)
    ref = reply_events.ReplyRef(reply, conversation, app.clinic_id, uuid.uuid4())
    detail = reply_events.delta(ref, services.cipher.data_key(), attempt=1, seq=1, text="Hi")
    body = {
        "id": "e1",
        "source": "frontdesk",
        "detail-type": "assistant.reply.delta",
        "detail": {**detail, "seq": 2, "eventId": str(uuid.uuid4())},
    }
    # When PushWorker takes it
    worker = load_handler("push_worker")
    event = sqs_event([json.dumps(body)])
    answer = worker.handler(event, LambdaContext())
    # Then its record fails as a rejection (dead-lettered after the last receive) with the
    # reason, and no text of the reply is in the log
    failed = [f["itemIdentifier"] for f in answer["batchItemFailures"]]
    assert failed == [event["Records"][0]["messageId"]]
    rejected = [r for r in caplog.records if r.getMessage() == "message rejected"]
    assert [getattr(r, "reason", "") for r in rejected] == [
        "the reply's text cannot be opened (InvalidTag)"
    ]
    assert "Hi" not in caplog.text
