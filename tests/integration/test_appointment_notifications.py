"""Patient notifications and reminders: EventBridge rule -> notifications queue ->
NotifyWorker -> SES email + SNS SMS, once each; the reminder schedule run twice."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import psycopg

from tests.integration.conftest import App, sent_emails
from tests.integration.test_appointments import DAY, at, booking, new_doctor, new_patient
from tests.integration.test_appointments import call as call  # the fixture
from tests.integration.test_lead_slice import drain_notifications
from tests.support import LambdaContext, load_handler, sqs_event


def sms_sent(moto_url: str) -> list[tuple[str, str]]:
    """(phone, message) of every SMS SNS accepted during this test (the `stack` fixture
    starts the count), from moto's data API ("sns" -> "SMS")."""
    with urllib.request.urlopen(f"{moto_url}/moto-api/data.json") as answer:  # noqa: S310
        sms = json.load(answer).get("sns", {}).get("SMS", [])
    return [(m["phone_number"], m["message"]) for m in sms]


def both_channels(app: App) -> None:
    with psycopg.connect(app.database_url) as conn:
        conn.execute("UPDATE clinics SET notify_patients_by_sms = true")


def test_a_booking_confirms_by_email_and_sms_once(app: App, call: Any, notify: Any) -> None:
    # Given a clinic that notifies patients by email and SMS, and a booking
    both_channels(app)
    doctor, patient = new_doctor(call), new_patient(call)
    status, _, _ = call("POST", "/appointments", booking(doctor, patient, at(9)))
    assert status == 201
    # When NotifyWorker drains the queue the rule delivered the event to
    assert drain_notifications(app, notify) == 1
    # Then the patient got one email and one SMS, naming the doctor and the local time
    emails = [e for e in sent_emails(app.moto_url) if e.to == ("ada@example.org",)]
    assert len(emails) == 1
    assert emails[0].data["patientName"] == "Ada Lovelace"
    assert "Dr. Who" in emails[0].data["message"] and "09:00 (UTC)" in emails[0].data["message"]
    assert emails[0].data["subject"] == "Your appointment is booked"
    texts = sms_sent(app.moto_url)
    assert len(texts) == 1 and texts[0][0] == "+442079460958" and "is booked" in texts[0][1]
    # When the same event arrives again (SQS redelivery, or the outbox re-publishing it)
    with psycopg.connect(app.database_url) as conn:
        (payload,) = conn.execute("SELECT payload FROM outbox").fetchone()  # type: ignore[misc]
    envelope = {
        "version": "0",
        "id": "another-eventbridge-id",
        "detail-type": payload["detailType"],
        "source": "frontdesk",
        "account": "123456789012",
        "time": "2026-01-01T00:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": payload["detail"],
    }
    answer = notify.handler(sqs_event([json.dumps(envelope)] * 2), LambdaContext())
    # Then nothing fails and nothing more is sent
    assert answer == {"batchItemFailures": []}
    assert len([e for e in sent_emails(app.moto_url) if e.to == ("ada@example.org",)]) == 1
    assert len(sms_sent(app.moto_url)) == 1
    with psycopg.connect(app.database_url) as conn:
        sent = conn.execute(
            "SELECT channel FROM notification_deliveries WHERE status = 'sent' ORDER BY channel"
        ).fetchall()
    assert sent == [("email",), ("sms",)]


def test_reminder_schedule_run_twice_enqueues_one_reminder_each(
    app: App, call: Any, notify: Any
) -> None:
    # Given an appointment 20 h ahead (booked days ago), one 1 h ahead, and a cancelled one
    doctor = new_doctor(call)
    ids = []
    for hour in (9, 10, 11):
        _, _, booked = call("POST", "/appointments", booking(doctor, new_patient(call), at(hour)))
        ids.append(booked["data"]["id"])
    call("PATCH", f"/appointments/{ids[2]}", {"status": "cancelled"})
    with psycopg.connect(app.database_url) as conn:
        for appointment, hours_ahead in zip(ids, (20, 1, 20), strict=True):
            conn.execute(
                """UPDATE appointments SET scheduled_at = now() - interval '3 days',
                          starts_at = date_trunc('minute', now()) + make_interval(hours => %s),
                          ends_at = date_trunc('minute', now())
                                    + make_interval(hours => %s, mins => 30)
                   WHERE id = %s""",
                (hours_ahead, hours_ahead, appointment),
            )
        conn.execute("DELETE FROM outbox")
    assert drain_notifications(app, notify) == 4  # the confirmations and the cancellation
    reminders = load_handler("reminders")
    # When the schedule runs twice
    first = reminders.handler({}, LambdaContext())
    second = reminders.handler({}, LambdaContext())
    # Then the first enqueues the 24 h reminder of one and the 2 h reminder of the other,
    # the second nothing, and the cancelled appointment gets none
    assert (first, second) == ({"enqueued": 2}, {"enqueued": 0})
    with psycopg.connect(app.database_url) as conn:
        reminded = conn.execute(
            "SELECT appointment_id::text, reminder_window FROM appointment_reminders"
        ).fetchall()
        queued = conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL").fetchone()
    assert sorted(reminded) == sorted([(ids[0], "24h"), (ids[1], "2h")])
    assert queued == (2,)
    # And NotifyWorker sends one reminder email per reminder
    assert drain_notifications(app, notify) == 2
    reminders_sent = [
        e for e in sent_emails(app.moto_url) if "Reminder" in e.data.get("message", "")
    ]
    assert len(reminders_sent) == 2


def test_a_cancelled_appointment_is_not_reminded(app: App, call: Any, notify: Any) -> None:
    # Given a reminder enqueued, then the appointment cancelled before it was delivered
    doctor, patient = new_doctor(call), new_patient(call)
    _, _, booked = call("POST", "/appointments", booking(doctor, patient, at(9, day=DAY)))
    appointment = booked["data"]["id"]
    assert drain_notifications(app, notify) == 1  # the confirmation
    with psycopg.connect(app.database_url) as conn:
        conn.execute(
            """UPDATE appointments SET scheduled_at = now() - interval '3 days',
                      starts_at = now() + interval '1 hour', ends_at = now() + interval '90 min'
               WHERE id = %s""",
            (appointment,),
        )
    assert load_handler("reminders").handler({}, LambdaContext()) == {"enqueued": 1}
    call("PATCH", f"/appointments/{appointment}", {"status": "cancelled"})
    # When NotifyWorker drains the queue (the reminder, the cancellation)
    assert drain_notifications(app, notify) == 2
    # Then the patient got the confirmation and the cancellation, but no reminder
    subjects = sorted(e.data["subject"] for e in sent_emails(app.moto_url) if e.template)
    assert subjects == ["Your appointment is booked", "Your appointment is cancelled"]
