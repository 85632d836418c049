"""A job's changes are events: the jobs table's trigger writes them to the outbox in the
transaction that made the change, the unit of work hands them off with its own rows, and
the bus routes them to the push queue."""

from __future__ import annotations

import json
from typing import Any

from frontdesk.platform import jobs
from frontdesk.platform.queues import JobKind, Queue, parse
from tests.integration.conftest import App


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
