"""Dead letters: listed with their reason without being consumed, replayed to their source
queue (operators only), processed once, and a second replay is harmless."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import FORM_KEY, App, sent_emails
from tests.support import (
    LambdaContext,
    http_event,
    http_response,
    reset_process_state,
    use_test_services,
)

PERSON = {"name": "Ada Lovelace", "email": "ada.lovelace@example.org", "consent": True}
POISON = '{"jobId": "not-a-uuid", "kind": "notify.lead_created"}'


class DownMailer:
    """SES refusing every email for now (a throttle, an outage): each is worth retrying."""

    def send_templated(self, *, sender: str, template: str, emails: Sequence[Any]) -> list[Any]:
        from frontdesk.notifications.channels import TransientDeliveryError

        return [TransientDeliveryError("ses throttled") for _ in emails]


def call(
    handler: Any,
    app: App,
    method: str,
    path: str,
    *,
    body: Any = None,
    roles: str = "[staff operator]",
    query: str = "",
) -> tuple[int, Any]:
    event = http_event(method, path, body=body, clinic_id=app.clinic_id, query=query)
    event["requestContext"]["authorizer"]["jwt"]["claims"]["roles"] = roles
    if query:
        event["queryStringParameters"] = dict(p.split("=", 1) for p in query.split("&"))
    status, _, answer = http_response(handler.handler(event, LambdaContext()))
    return status, answer


def drain(app: App, notify: Any) -> int:
    return app.drain("NotifyWorker", notify, retry_after_seconds=0)


def job_status(app: App, job_id: str) -> str:
    with psycopg.connect(app.database_url) as conn:
        row = conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return str(row[0])


def dlq_depth(app: App) -> int:
    attributes = app.sqs().get_queue_attributes(
        QueueUrl=app.queue_url("NotificationsDLQ"),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


@pytest.fixture
def dead(app: App, api: Any, notify: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A lead whose email failed maxReceiveCount times (job dead) and a poison message,
    both on the notifications DLQ."""
    use_test_services(mailer=DownMailer())
    event = http_event("POST", "/public/leads", body=PERSON, headers={"x-form-key": FORM_KEY})
    status, _, created = http_response(api.handler(event, LambdaContext()))
    assert status == 201
    app.sqs().send_message(QueueUrl=app.queue_url("NotificationsQueue"), MessageBody=POISON)
    assert drain(app, notify) == 2 * 5  # each tried maxReceiveCount times
    reset_process_state()
    assert job_status(app, created["data"]["jobId"]) == "dead"
    return {"jobId": created["data"]["jobId"]}


def test_dead_letters_are_listed_with_their_reason_without_being_consumed(
    app: App, ops: Any, dead: dict[str, Any]
) -> None:
    # Given a dead job's message and a poison message on the DLQ
    # When an admin lists the notifications DLQ twice
    status, first = call(ops, app, "GET", "/ops/dead-letters", query="queue=notifications")
    _, second = call(ops, app, "GET", "/ops/dead-letters", query="queue=notifications")
    # Then both are listed, with the reason and the receive count, and nothing was consumed
    assert status == 200
    letters = {letter["jobId"] or "poison": letter for letter in first["data"]}
    assert set(letters) == {dead["jobId"], "poison"}
    job_letter = letters[dead["jobId"]]
    assert job_letter["jobStatus"] == "dead"
    assert "ses throttled" in job_letter["reason"]
    assert job_letter["receiveCount"] >= 5
    assert "malformed notify message" in letters["poison"]["reason"]
    assert "jobId" in letters["poison"]["reason"]
    assert {m["messageId"] for m in second["data"]} == {m["messageId"] for m in first["data"]}
    assert dlq_depth(app) == 2


@pytest.mark.slow
def test_replay_moves_chosen_messages_back_and_they_are_processed_once(
    app: App, ops: Any, notify: Any, dead: dict[str, Any]
) -> None:
    # Given SES works again and the dead job's message is chosen by its id
    _, listed = call(ops, app, "GET", "/ops/dead-letters")
    chosen = next(m["messageId"] for m in listed["data"] if m["jobId"] == dead["jobId"])
    # When an admin replays it, and then the same request again
    status, replayed = call(
        ops,
        app,
        "POST",
        "/ops/dead-letters/replay",
        body={"queue": "notifications", "messageIds": [chosen]},
    )
    # (the job queued again is an event for its screens: it left with the answer)
    with psycopg.connect(app.database_url) as conn:
        unsent = conn.execute(
            "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND strpos(payload::text, %s) > 0",
            (dead["jobId"],),
        ).fetchone()
    assert unsent == (0,)
    _, again = call(
        ops,
        app,
        "POST",
        "/ops/dead-letters/replay",
        body={"queue": "notifications", "messageIds": [chosen]},
    )
    drained = drain(app, notify)
    # Then the first moved it (and queued the job again), the second found nothing to move
    assert status == 200
    assert replayed["data"] == {"replayed": [chosen], "notFound": [], "jobsRequeued": 1}
    assert again["data"] == {"replayed": [], "notFound": [chosen], "jobsRequeued": 0}
    # And the worker sent the email exactly once; the poison message stays on the DLQ
    assert drained == 1
    assert len(sent_emails(app.moto_url)) == 1
    assert job_status(app, dead["jobId"]) == "succeeded"
    assert dlq_depth(app) == 1


def test_replaying_everything_twice_sends_each_email_once(
    app: App, ops: Any, notify: Any, dead: dict[str, Any]
) -> None:
    # Given the dead job's message is replayed with everything else, and the copy delivered
    # once more by a replay racing the first (the consumer is idempotent)
    _, first = call(
        ops, app, "POST", "/ops/dead-letters/replay", body={"queue": "notifications", "all": True}
    )
    body = json.dumps(
        {"jobId": dead["jobId"], "kind": "notify.lead_created", "clinicId": str(app.clinic_id)}
    )
    app.sqs().send_message(QueueUrl=app.queue_url("NotificationsQueue"), MessageBody=body)
    drain(app, notify)
    _, second = call(
        ops, app, "POST", "/ops/dead-letters/replay", body={"queue": "notifications", "all": True}
    )
    drain(app, notify)
    # Then both messages were replayed the first time, the poison one dead-lettered again
    # and replayed again, and the email went out once
    assert len(first["data"]["replayed"]) == 2
    assert len(second["data"]["replayed"]) == 1
    assert len(sent_emails(app.moto_url)) == 1
    assert job_status(app, dead["jobId"]) == "succeeded"


def test_dead_letter_routes_need_the_operator_role(app: App, ops: Any) -> None:
    # Given a clinic admin's token: dead letters belong to every clinic, so not enough
    # When it lists or replays dead letters
    listed, problem = call(ops, app, "GET", "/ops/dead-letters", roles="[staff admin]")
    replayed, _ = call(
        ops, app, "POST", "/ops/dead-letters/replay", body={"all": True}, roles="[staff admin]"
    )
    # Then both are refused
    assert (listed, replayed) == (403, 403)
    assert "operator role" in problem["detail"]


def test_unknown_queue_is_404_and_an_empty_choice_is_422(app: App, ops: Any) -> None:
    status, problem = call(ops, app, "GET", "/ops/dead-letters", query="queue=nope")
    assert status == 404 and "nope" in problem["detail"]
    status, _ = call(ops, app, "POST", "/ops/dead-letters/replay", body={"queue": "llm"})
    assert status == 422
    status, _ = call(ops, app, "POST", "/ops/dead-letters/replay", body={"all": True, "extra": 1})
    assert status == 422


@pytest.mark.slow
def test_the_cli_lists_and_replays_through_the_api(
    app: App, ops: Any, dead: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from local.dead_letters import run

    def through_api(method: str, path: str, body: Any) -> tuple[int, Any]:
        path, _, query = path.partition("?")
        return call(ops, app, method, path, body=body, query=query)

    # Given the dead letters of the fixture
    # When the CLI lists them, replays everything, and replays again
    assert run(["list", "--queue", "notifications"], through_api) == 0
    listed = capsys.readouterr().out
    assert run(["replay", "--all"], through_api) == 0
    replayed = capsys.readouterr().out
    assert run(["replay", "--queue", "notifications", "--all"], through_api) == 0
    again = capsys.readouterr().out
    # Then it shows each with its reason, then what moved, then that nothing was left
    assert dead["jobId"] in listed and "malformed notify message" in listed
    assert "2 dead letter(s)" in listed
    assert replayed.startswith("replayed 2, jobs queued again 1")
    assert again.startswith("replayed 0")
