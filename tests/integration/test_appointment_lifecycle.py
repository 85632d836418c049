"""The lifecycle of appointments and doctors through ApiFunction's handler, against real
PostgreSQL: reading one appointment, recording its outcome (completed, no-show) only from
its start, a doctor's changes and provider ids, and a deactivated doctor who takes no new
booking (refused by the database itself, also under concurrency) and whose appointments
still to come are listed for rebooking, never cancelled."""

# The fixtures (call, doctor, patient, pooled) are test_appointments' own, imported by name:
# pytest finds them here, and the parameters that name them are not redefinitions.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import App
from tests.integration.test_appointments import (  # noqa: F401
    DAY,
    HOURS,
    Call,
    at,
    booking,
    call,
    doctor,
    new_doctor,
    new_patient,
    patient,
    pooled,
    rows,
)


def z(value: str) -> str:
    return value.replace("+00:00", "Z")


def events(app: App) -> list[str]:
    return [r[0] for r in rows(app, "SELECT payload->>'detailType' FROM outbox ORDER BY id")]


def book(call: Call, doctor: str, patient: str, hour: int) -> str:
    status, _, booked = call("POST", "/appointments", booking(doctor, patient, at(hour)))
    assert status == 201, booked
    appointment: str = booked["data"]["id"]
    return appointment


def move_to_the_past(app: App, appointment: str, minutes_ago: int = 60) -> None:
    """An appointment that has begun (the API books only future slots)."""
    with psycopg.connect(app.database_url) as conn:
        conn.execute(
            """UPDATE appointments
               SET starts_at = now() - make_interval(mins => %s),
                   ends_at = now() - make_interval(mins => %s) + interval '30 minutes'
               WHERE id = %s""",
            (minutes_ago, minutes_ago, appointment),
        )


# ---------------------------------------------------------------- one appointment


def test_one_appointment_is_read_decrypted_and_only_by_its_clinic(
    app: App, call: Call, doctor: str, patient: str
) -> None:
    # Given a booked appointment
    appointment = book(call, doctor, patient, 9)
    # When its clinic reads it
    status, _, found = call("GET", f"/appointments/{appointment}")
    # Then the patient's name is decrypted and the times and state are there
    assert status == 200, found
    data = found["data"]
    assert (data["patientName"], data["doctorName"], data["status"]) == (
        "Ada Lovelace",
        "Dr. Who",
        "booked",
    )
    assert (data["startsAt"], data["cancelledAt"], data["outcomeAt"]) == (z(at(9)), None, None)
    assert found["meta"]["affectedIds"] == [appointment]
    # When another clinic, or anyone with an unknown id, reads it / Then 404
    assert call("GET", f"/appointments/{appointment}", clinic=app.other_clinic_id)[0] == 404
    assert call("GET", f"/appointments/{uuid.uuid4()}")[0] == 404
    assert call("GET", "/appointments/not-a-uuid")[0] == 422


# ---------------------------------------------------------------- outcome


def test_an_outcome_is_recorded_only_from_the_start_and_is_final(
    app: App, call: Call, doctor: str, patient: str
) -> None:
    # Given an appointment that has not begun
    appointment = book(call, doctor, patient, 9)
    # When it is marked a no-show or completed / Then 409, saying why, and nothing changes
    for outcome in ("no_show", "completed"):
        status, _, refused = call("PATCH", f"/appointments/{appointment}", {"status": outcome})
        assert status == 409, refused
        assert "has not begun" in refused["detail"]
    assert events(app) == ["appointment.booked"]
    assert rows(app, "SELECT status, outcome_at FROM appointments") == [("booked", None)]
    # Given it has begun
    move_to_the_past(app, appointment)
    # When it is marked a no-show (with an Idempotency-Key), and the request is retried
    first = call(
        "PATCH", f"/appointments/{appointment}", {"status": "no_show"}, **{"idempotency-key": "n"}
    )
    again = call(
        "PATCH", f"/appointments/{appointment}", {"status": "no_show"}, **{"idempotency-key": "n"}
    )
    # Then it is a no-show, once: one event, the retry answered from the first
    assert first[0] == 200 and first[2]["data"]["status"] == "no_show", first
    assert first[2]["meta"]["operation"] == "markNoShow"
    assert again[0] == 200 and again[1].get("idempotent-replayed") == "true"
    assert again[2]["data"] == first[2]["data"]
    assert events(app) == ["appointment.booked", "appointment.no_show"]
    ((detail, sent),) = rows(
        app,
        """SELECT payload->'detail', sent_at IS NOT NULL FROM outbox
           WHERE payload->>'detailType' = 'appointment.no_show'""",
    )
    assert detail["appointmentId"] == appointment and "eventId" in detail and sent
    _, _, read = call("GET", f"/appointments/{appointment}")
    assert read["data"]["status"] == "no_show" and read["data"]["outcomeAt"] is not None
    # When anything else is asked of it / Then 409: an outcome is final
    for change in ({"status": "completed"}, {"status": "cancelled"}, {"status": "no_show"}):
        status, _, refused = call("PATCH", f"/appointments/{appointment}", change)
        assert status == 409, (change, refused)
    assert call("PATCH", f"/appointments/{appointment}", {"startsAt": at(11)})[0] == 409
    assert events(app) == ["appointment.booked", "appointment.no_show"]


def test_a_begun_appointment_is_completed_and_a_cancelled_one_cannot_be(
    app: App, call: Call, doctor: str, patient: str
) -> None:
    # Given one appointment that has begun and one cancelled
    begun = book(call, doctor, patient, 9)
    move_to_the_past(app, begun, minutes_ago=10)
    cancelled = book(call, doctor, patient, 10)
    assert call("PATCH", f"/appointments/{cancelled}", {"status": "cancelled"})[0] == 200
    # When both are completed
    status, _, completed = call("PATCH", f"/appointments/{begun}", {"status": "completed"})
    refused = call("PATCH", f"/appointments/{cancelled}", {"status": "completed"})
    # Then the begun one is, with its event; the cancelled one is a 409 naming its status
    assert status == 200 and completed["data"]["status"] == "completed", completed
    assert completed["meta"]["operation"] == "completeAppointment"
    assert refused[0] == 409 and "cancelled" in refused[2]["detail"]
    assert events(app)[-1] == "appointment.completed"
    assert events(app).count("appointment.completed") == 1
    # And another clinic can neither complete it nor learn it exists
    status, _, _ = call(
        "PATCH", f"/appointments/{begun}", {"status": "no_show"}, clinic=app.other_clinic_id
    )
    assert status == 404


def test_the_database_itself_refuses_what_the_lifecycle_does_not_allow(
    app: App, call: Call, doctor: str, patient: str
) -> None:
    # Given a future appointment and a completed one
    future = book(call, doctor, patient, 9)
    done = book(call, doctor, patient, 10)
    move_to_the_past(app, done)
    assert call("PATCH", f"/appointments/{done}", {"status": "completed"})[0] == 200
    refusals = {
        "a no-show before its start": (
            "UPDATE appointments SET status = 'no_show' WHERE id = %s",
            future,
            "appointments_outcome_after_start",
        ),
        "completed back to booked": (
            "UPDATE appointments SET status = 'booked' WHERE id = %s",
            done,
            "appointments_status_transition",
        ),
        "a completed one moved": (
            "UPDATE appointments SET starts_at = starts_at + interval '1 day',"
            " ends_at = ends_at + interval '1 day' WHERE id = %s",
            done,
            "appointments_status_transition",
        ),
    }
    for what, (sql, appointment, rule) in refusals.items():
        # When SQL that bypasses the API tries it / Then the trigger refuses it by its rule
        with (
            psycopg.connect(app.database_url) as conn,
            pytest.raises(psycopg.errors.CheckViolation) as refused,
        ):
            conn.execute(sql, (appointment,))
        assert refused.value.diag.constraint_name == rule, what


# ---------------------------------------------------------------- doctors


def test_a_doctor_is_updated_and_their_provider_ids_are_unique_per_provider(
    app: App, call: Call, doctor: str, patient: str
) -> None:
    # Given an appointment still to come with the doctor, and a second doctor
    appointment = book(call, doctor, patient, 9)
    other = new_doctor(call, name="Dr. Other")
    # When the doctor's name, specialty, hours and provider ids change
    patch = {
        "name": "Dr. Who-Smith",
        "specialty": None,
        "workingHours": [{"weekday": d, "start": "09:00", "end": "12:00"} for d in range(1, 8)],
        "providerIds": {"generic": "doc-1", "other-board": "77"},
    }
    status, _, updated = call("PATCH", f"/doctors/{doctor}", patch, **{"idempotency-key": "u"})
    # Then the answer and a read show the change
    assert status == 200, updated
    data = updated["data"]
    assert (data["name"], data["specialty"], data["slotMinutes"]) == ("Dr. Who-Smith", None, 30)
    assert data["providerIds"] == {"generic": "doc-1", "other-board": "77"}
    assert {(h["start"], h["end"]) for h in data["workingHours"]} == {("09:00", "12:00")}
    assert call("GET", f"/doctors/{doctor}")[2]["data"] == data
    # And the appointment still to come shows the new name; the event names what changed
    assert call("GET", f"/appointments/{appointment}")[2]["data"]["doctorName"] == "Dr. Who-Smith"
    ((detail,),) = rows(
        app, "SELECT payload->'detail' FROM outbox WHERE payload->>'detailType' = 'doctor.updated'"
    )
    assert detail["changed"] == ["name", "providerIds", "specialty", "workingHours"]
    # When the other doctor takes the same id at the same provider / Then 409, nothing changes
    status, _, refused = call("PATCH", f"/doctors/{other}", {"providerIds": {"generic": "doc-1"}})
    assert status == 409, refused
    assert call("GET", f"/doctors/{other}")[2]["data"]["providerIds"] == {}
    # When it takes the same id at another provider / Then that is fine
    status, _, _ = call("PATCH", f"/doctors/{other}", {"providerIds": {"third": "doc-1"}})
    assert status == 200
    # When the first doctor's id is removed (null) / Then it is gone, the other kept
    status, _, removed = call("PATCH", f"/doctors/{doctor}", {"providerIds": {"generic": None}})
    assert status == 200 and removed["data"]["providerIds"] == {"other-board": "77"}
    # And bad patches are 422 and another clinic's doctor is a 404
    bad_patches: list[dict[str, Any]] = [
        {},
        {"name": None},
        {"slotMinutes": 1},
        {"active": False},
        {"providerIds": {"A b": "1"}},
    ]
    for bad in bad_patches:
        assert call("PATCH", f"/doctors/{doctor}", bad)[0] == 422, bad
    assert call("PATCH", f"/doctors/{doctor}", {"name": "X"}, clinic=app.other_clinic_id)[0] == 404
    assert call("GET", f"/doctors/{doctor}", clinic=app.other_clinic_id)[0] == 404


def test_a_doctor_is_created_with_provider_ids(app: App, call: Call) -> None:
    # Given a doctor created with an id at a provider
    body = {
        "name": "Dr. Mapped",
        "slotMinutes": 30,
        "workingHours": HOURS,
        "providerIds": {"generic": "p-1"},
    }
    status, _, created = call("POST", "/doctors", body)
    assert status == 201, created
    # When a second doctor claims the same id / Then 409 and no second doctor exists
    status, _, _ = call("POST", "/doctors", {**body, "name": "Dr. Copy"})
    assert status == 409
    assert rows(app, "SELECT count(*) FROM doctors") == [(1,)]
    _, _, listed = call("GET", "/doctors")
    assert [d["providerIds"] for d in listed["data"]] == [{"generic": "p-1"}]


def test_a_deactivated_doctor_takes_no_new_booking_and_keeps_the_ones_to_rebook(
    app: App, call: Call, doctor: str, patient: str
) -> None:
    # Given two appointments still to come and one past
    nine, ten = book(call, doctor, patient, 9), book(call, doctor, patient, 10)
    past = book(call, doctor, patient, 11)
    move_to_the_past(app, past)
    # When the doctor is deactivated
    status, _, deactivated = call(
        "POST", f"/doctors/{doctor}/deactivate", **{"idempotency-key": "d"}
    )
    # Then the answer lists the two to rebook (ids and times, no names), the doctor inactive
    assert status == 200, deactivated
    data = deactivated["data"]
    assert [a["id"] for a in data["upcomingAppointments"]] == [nine, ten]
    assert "patientName" not in data["upcomingAppointments"][0]
    assert data["doctor"]["active"] is False and data["doctor"]["deactivatedAt"]
    # And they are still booked: nothing was cancelled, no event but the deactivation's
    assert rows(app, "SELECT count(*) FROM appointments WHERE status = 'booked'") == [(3,)]
    assert events(app)[-1] == "doctor.deactivated"
    assert "appointment.cancelled" not in events(app)
    # And the rebooking list shows them with the patient's name; the past one is apart
    status, _, upcoming = call("GET", f"/doctors/{doctor}/appointments", query="upcoming=true")
    assert status == 200, upcoming
    assert [(a["id"], a["patientName"]) for a in upcoming["data"]] == [
        (nine, "Ada Lovelace"),
        (ten, "Ada Lovelace"),
    ]
    _, _, earlier = call("GET", f"/doctors/{doctor}/appointments", query="upcoming=false")
    assert [a["id"] for a in earlier["data"]] == [past]
    # When a new booking, or a move, is asked of the doctor / Then 422 and no slot is free
    status, _, refused = call("POST", "/appointments", booking(doctor, patient, at(14)))
    assert status == 422 and "inactive" in refused["detail"]
    assert call("PATCH", f"/appointments/{nine}", {"startsAt": at(15)})[0] == 422
    assert call("GET", f"/doctors/{doctor}/availability", query=f"date={DAY}")[2]["data"] == []
    # And SQL that bypasses the API is refused by the database too
    with (
        psycopg.connect(app.database_url) as conn,
        pytest.raises(psycopg.errors.CheckViolation) as raised,
    ):
        conn.execute(
            """INSERT INTO appointments (id, clinic_id, doctor_id, patient_id, starts_at,
                                         ends_at, source)
               VALUES (%s, %s, %s, %s, %s, %s::timestamptz + interval '30 minutes', 'x')""",
            (uuid.uuid4(), app.clinic_id, doctor, patient, at(16), at(16)),
        )
    assert raised.value.diag.constraint_name == "appointments_doctor_active"
    # But an appointment to rebook can still be cancelled
    assert call("PATCH", f"/appointments/{nine}", {"status": "cancelled"})[0] == 200
    # And a second deactivation is a 409, a retry of the first is its answer
    assert call("POST", f"/doctors/{doctor}/deactivate")[0] == 409
    again = call("POST", f"/doctors/{doctor}/deactivate", **{"idempotency-key": "d"})
    assert again[0] == 200 and again[2]["data"] == data
    # When the doctor is activated again / Then they take bookings again
    status, _, activated = call("POST", f"/doctors/{doctor}/activate")
    assert status == 200 and activated["data"]["active"] is True
    assert activated["data"]["deactivatedAt"] is None
    assert call("POST", "/appointments", booking(doctor, patient, at(14)))[0] == 201
    assert call("POST", f"/doctors/{doctor}/activate")[0] == 409
    # And another clinic reaches none of it
    b = app.other_clinic_id
    assert call("POST", f"/doctors/{doctor}/deactivate", clinic=b)[0] == 404
    assert call("GET", f"/doctors/{doctor}/appointments", clinic=b)[0] == 404


def answers(*calls: Callable[[], tuple[int, dict[str, str], Any]]) -> list[tuple[int, Any]]:
    """Run the calls at the same moment on their own threads; their (status, body)."""
    barrier = threading.Barrier(len(calls))
    got: list[tuple[int, Any]] = [(0, None)] * len(calls)

    def run(index: int) -> None:
        loop = asyncio.new_event_loop()  # Mangum runs each request on the thread's loop
        asyncio.set_event_loop(loop)
        try:
            barrier.wait()
            status, _, body = calls[index]()
            got[index] = (status, body)
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return got


def test_a_deactivation_racing_bookings_lists_every_booking_it_let_in(
    app: App, call: Call, pooled: None
) -> None:
    # Given rounds of one doctor, patients booking and the doctor deactivated at once
    for round_ in range(8):
        racing = new_doctor(call, name=f"Dr. Race {round_}")
        patients = [new_patient(call) for _ in range(4)]
        got = answers(
            lambda d=racing: call("POST", f"/doctors/{d}/deactivate"),
            *(
                (lambda d=racing, p=p, h=h: call("POST", "/appointments", booking(d, p, at(9 + h))))
                for h, p in enumerate(patients)
            ),
        )
        # Then each booking either got in before the deactivation, which lists it for
        # rebooking, or was refused (422): none is booked and unlisted
        (status, deactivated), bookings = got[0], got[1:]
        assert status == 200, deactivated
        listed = {a["id"] for a in deactivated["data"]["upcomingAppointments"]}
        booked = {body["data"]["id"] for s, body in bookings if s == 201}
        assert {s for s, _ in bookings} <= {201, 422}
        assert listed == booked, round_
        stored = rows(app, "SELECT id::text FROM appointments WHERE doctor_id = %s", racing)
        assert {r[0] for r in stored} == booked
