"""Appointments against real PostgreSQL and moto: booking through ApiFunction's handler,
the exclusion constraint under concurrency, reschedule/cancel, cross-clinic isolation."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import App
from tests.support import (
    LambdaContext,
    http_event,
    http_response,
    reset_process_state,
    use_test_services,
)

PATIENT = {"name": "Ada Lovelace", "email": "ada@example.org", "phone": "+44 20 7946 0958"}
HOURS = [{"weekday": day, "start": "08:00", "end": "18:00"} for day in range(1, 8)]
DAY = date.today() + timedelta(days=2)  # the clinic's calendar is UTC; always in the future


def at(hour: int, minute: int = 0, day: date = DAY) -> str:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC).isoformat()


Call = Callable[..., tuple[int, dict[str, str], Any]]


@pytest.fixture
def call(api: Any, app: App) -> Call:
    def call(
        method: str,
        path: str,
        body: Any = None,
        *,
        clinic: uuid.UUID | None = None,
        query: str = "",
        **headers: str,
    ) -> tuple[int, dict[str, str], Any]:
        event = http_event(
            method,
            path,
            body=body,
            clinic_id=clinic or app.clinic_id,
            headers=headers,
            query=query,
        )
        if query:
            event["queryStringParameters"] = dict(
                part.split("=", 1) for part in query.split("&") if part
            )
        return http_response(api.handler(event, LambdaContext()))

    return call


def rows(app: App, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(app.database_url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def new_doctor(call: Call, clinic: uuid.UUID | None = None, name: str = "Dr. Who") -> str:
    body = {"name": name, "specialty": "GP", "slotMinutes": 30, "workingHours": HOURS}
    status, _, created = call("POST", "/doctors", body, clinic=clinic)
    assert status == 201, created
    doctor_id: str = created["data"]["id"]
    return doctor_id


def new_patient(call: Call, clinic: uuid.UUID | None = None) -> str:
    status, _, created = call("POST", "/patients", PATIENT, clinic=clinic)
    assert status == 201, created
    patient_id: str = created["data"]["id"]
    return patient_id


@pytest.fixture
def doctor(call: Call) -> str:
    return new_doctor(call)


@pytest.fixture
def patient(call: Call) -> str:
    return new_patient(call)


def booking(doctor: str, patient: str, starts: str) -> dict[str, Any]:
    return {"doctorId": doctor, "patientId": patient, "startsAt": starts}


def test_booking_takes_a_slot_snapshots_names_and_hands_off_an_event(
    app: App, call: Call, doctor: str, patient: str
) -> None:
    # Given a doctor with 20 free slots that day
    status, _, free = call("GET", f"/doctors/{doctor}/availability", query=f"date={DAY}")
    assert status == 200 and len(free["data"]) == 20
    assert free["data"][0]["startsAt"] == at(8).replace("+00:00", "Z")
    # When a slot is booked
    status, _, booked = call(
        "POST", "/appointments", booking(doctor, patient, at(9)), **{"idempotency-key": "b-1"}
    )
    # Then it is 201 with the doctor's name snapshot
    assert status == 201, booked
    data = booked["data"]
    assert (data["status"], data["doctorName"], data["endsAt"]) == (
        "booked",
        "Dr. Who",
        at(9, 30).replace("+00:00", "Z"),
    )
    # And the slot is no longer free
    _, _, free = call("GET", f"/doctors/{doctor}/availability", query=f"date={DAY}")
    assert at(9).replace("+00:00", "Z") not in {s["startsAt"] for s in free["data"]}
    assert len(free["data"]) == 19
    # And the trigger stored the patient's name encrypted, never in plaintext
    (row,) = rows(app, "SELECT appointments::text, doctor_name FROM appointments")
    assert "Ada" not in row[0] and row[1] == "Dr. Who"
    # And the list shows it, the patient's name decrypted from the snapshot
    status, _, listed = call(
        "GET",
        "/appointments",
        query=f"doctor={doctor}&from={at(0)}&to={at(23)}".replace("+", "%2B"),
    )
    assert status == 200, listed
    assert [(a["id"], a["patientName"]) for a in listed["data"]] == [(data["id"], "Ada Lovelace")]
    # And the event went to the outbox (ids and times only) and was relayed
    ((payload, sent),) = rows(app, "SELECT payload, sent_at IS NOT NULL FROM outbox")
    assert payload["detailType"] == "appointment.booked" and sent
    assert payload["detail"]["appointmentId"] == data["id"] and "eventId" in payload["detail"]
    assert "Ada" not in json.dumps(payload)
    # When the same request is retried with its Idempotency-Key
    status, headers, again = call(
        "POST", "/appointments", booking(doctor, patient, at(9)), **{"idempotency-key": "b-1"}
    )
    # Then the first answer is replayed and nothing is written
    assert status == 201 and again["data"] == data and headers["idempotent-replayed"] == "true"
    assert rows(app, "SELECT count(*) FROM appointments") == [(1,)]


def test_refusals_write_nothing(app: App, call: Call, doctor: str, patient: str) -> None:
    # Given one booked slot
    status, _, first = call("POST", "/appointments", booking(doctor, patient, at(10)))
    assert status == 201
    # When an overlapping slot is booked / Then 409 names the slot that is taken
    other = new_patient(call)
    status, _, problem = call("POST", "/appointments", booking(doctor, other, at(10)))
    assert status == 409, problem
    assert problem["title"] == "Slot already booked"
    assert problem["conflictingSlot"] == {
        "doctorId": doctor,
        "startsAt": at(10).replace("+00:00", "Z"),
        "endsAt": at(10, 30).replace("+00:00", "Z"),
    }
    # And the past, outside working hours and off the slot grid are 422
    yesterday = date.today() - timedelta(days=1)
    for starts, words in (
        (at(10, day=yesterday), "begun"),
        (at(7, 30), "working hours"),
        (at(17, 45), "working hours"),
        (at(11, 10), "slot grid"),
    ):
        status, _, problem = call("POST", "/appointments", booking(doctor, other, starts))
        assert status == 422 and words in problem["detail"], (starts, problem)
    # And unknown doctors and patients are 404, a body without a patient 422
    status, _, _ = call("POST", "/appointments", booking(str(uuid.uuid4()), other, at(12)))
    assert status == 404
    status, _, _ = call("POST", "/appointments", booking(doctor, str(uuid.uuid4()), at(12)))
    assert status == 404
    status, _, _ = call("POST", "/appointments", {"doctorId": doctor, "startsAt": at(12)})
    assert status == 422
    assert rows(app, "SELECT count(*) FROM appointments") == [(1,)]
    assert rows(app, "SELECT count(*) FROM outbox") == [(1,)]
    assert first["data"]["id"]


@pytest.fixture
def pooled(app: App) -> Iterator[None]:
    """The handler's database as a pool, so threads are concurrent transactions (a Lambda
    container has one connection; concurrent requests are concurrent containers)."""
    from frontdesk.platform.db import PooledDatabase

    use_test_services(database=PooledDatabase(app.database_url, max_size=50))
    yield
    reset_process_state()  # closes the pool


def race(*calls: Callable[[], tuple[int, dict[str, str], Any]]) -> list[int]:
    """Run the calls at the same moment on their own threads; their statuses in order."""
    barrier = threading.Barrier(len(calls))
    statuses: list[int] = [0] * len(calls)

    def run(index: int) -> None:
        loop = asyncio.new_event_loop()  # Mangum runs each request on the thread's loop
        asyncio.set_event_loop(loop)
        try:
            barrier.wait()
            statuses[index] = calls[index]()[0]
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_fifty_concurrent_bookings_of_one_slot_book_it_once(
    app: App, call: Call, doctor: str, pooled: None
) -> None:
    # Given 50 patients wanting the same slot
    patients = [new_patient(call) for _ in range(50)]
    # When all 50 book it at the same moment through the API handler
    statuses = race(
        *((lambda p=p: call("POST", "/appointments", booking(doctor, p, at(14)))) for p in patients)
    )
    # Then exactly one gets 201, the other 49 get 409, and there is one row
    assert Counter(statuses) == {201: 1, 409: 49}
    assert rows(app, "SELECT count(*) FROM appointments") == [(1,)]
    assert rows(app, "SELECT count(*) FROM outbox") == [(1,)]


ROUNDS = 20


def test_a_reschedule_racing_a_booking_for_its_target_slot(
    app: App, call: Call, doctor: str, pooled: None
) -> None:
    # Given an appointment at 09:00, and another patient
    first, second = new_patient(call), new_patient(call)
    _, _, booked = call("POST", "/appointments", booking(doctor, first, at(9)))
    appointment = booked["data"]["id"]
    for _ in range(ROUNDS):  # many rounds, so the race is really run both ways
        # When it is moved to 15:00 while the other patient books 15:00
        statuses = race(
            lambda: call("PATCH", f"/appointments/{appointment}", {"startsAt": at(15)}),
            lambda: call("POST", "/appointments", booking(doctor, second, at(15))),
        )
        # Then exactly one wins; the loser is 409 and changed nothing
        assert sorted(statuses) == [200, 409] or sorted(statuses) == [201, 409], statuses
        taken = rows(
            app,
            "SELECT patient_id::text, starts_at FROM appointments WHERE status = 'booked'"
            " ORDER BY starts_at",
        )
        if statuses[0] == 200:  # the reschedule won: 09:00 is free again, 15:00 is the first's
            assert [(p, t.hour) for p, t in taken] == [(first, 15)]
        else:  # the booking won: the first keeps 09:00
            assert [(p, t.hour) for p, t in taken] == [(first, 9), (second, 15)]
        # Reset for the next round: the appointment back at 09:00, 15:00 free
        with psycopg.connect(app.database_url) as conn:
            conn.execute("DELETE FROM appointments WHERE patient_id = %s", (second,))
            conn.execute(
                "UPDATE appointments SET starts_at = %s, ends_at = %s WHERE id = %s",
                (at(9), at(9, 30), appointment),
            )


def lock_waits(app: App) -> int:
    """Backends of the test's database waiting on a lock (a row, a transaction, an
    advisory lock)."""
    ((waiting,),) = rows(
        app,
        """SELECT count(*) FROM pg_stat_activity
           WHERE datname = current_database() AND wait_event_type = 'Lock'""",
    )
    return int(waiting)


def test_a_reschedule_and_a_booking_released_together_do_not_deadlock(
    app: App, call: Call, doctor: str, pooled: None
) -> None:
    # Given an appointment at 09:00, another patient, and a third transaction holding an
    # uncommitted appointment at 15:00: whatever writes 15:00 waits for it to end
    first, second = new_patient(call), new_patient(call)
    _, _, booked = call("POST", "/appointments", booking(doctor, first, at(15, 30)))
    appointment = booked["data"]["id"]
    blocker = psycopg.connect(app.database_url)
    blocker.execute(
        """INSERT INTO appointments (id, clinic_id, doctor_id, patient_id, starts_at, ends_at,
                                     source)
           VALUES (%s, %s, %s, %s, %s, %s, 'test')""",
        (uuid.uuid4(), app.clinic_id, doctor, second, at(15), at(15, 30)),
    )
    # When the appointment is moved to 15:00 and the other patient books 15:00, both held
    # back by that transaction, which then rolls back and lets both go at once
    statuses: list[int] = []

    def release() -> None:
        for _ in range(1000):
            if lock_waits(app) >= 2:
                break
            threading.Event().wait(0.01)
        blocker.rollback()
        blocker.close()

    releaser = threading.Thread(target=release)
    releaser.start()
    statuses = race(
        lambda: call("PATCH", f"/appointments/{appointment}", {"startsAt": at(15)}),
        lambda: call("POST", "/appointments", booking(doctor, second, at(15))),
    )
    releaser.join()
    # Then one wins and the other is a 409: no deadlock, no 503
    assert sorted(statuses) in ([200, 409], [201, 409]), statuses
    assert rows(app, "SELECT count(*) FROM appointments WHERE starts_at = %s", at(15)) == [(1,)]


def test_concurrent_bookings_of_one_lead_convert_it_once(
    app: App, call: Call, doctor: str, pooled: None
) -> None:
    # Given a lead not yet a patient
    lead = {"name": "Grace Hopper", "phone": "+1 555 0100 777", "consent": True}
    _, _, created = call("POST", "/leads", lead)
    lead_id = created["data"]["id"]
    # When eight free slots are booked for it at the same moment
    hours = [9, 10, 11, 12, 13, 14, 15, 16]
    answers: list[Any] = [None] * len(hours)

    def book(index: int) -> tuple[int, dict[str, str], Any]:
        body = {"doctorId": doctor, "leadId": lead_id, "startsAt": at(hours[index])}
        answers[index] = answer = call("POST", "/appointments", body)
        return answer

    statuses = race(*((lambda i=i: book(i)) for i in range(len(hours))))
    # Then each slot is booked, all for the one patient made from the lead
    assert statuses == [201] * len(hours), [a[2] for a in answers]
    assert {a[2]["data"]["patientId"] for a in answers} == {
        str(p) for (p,) in rows(app, "SELECT id FROM patients WHERE lead_id = %s", lead_id)
    }
    assert rows(app, "SELECT count(*) FROM patients") == [(1,)]


@pytest.mark.parametrize(
    "query",
    [
        "from=9999-12-31T00:00:00Z",
        "from=9999-12-31T23:59:59.999999-12:00",
        "from=9999-12-25T00:00:00Z&to=9999-12-31T23:59:59Z",
        "from=0001-01-01T00:00:00%2B14:00",
        "from=0001-01-01T00:00:00%2B14:00&to=0001-01-02T00:00:00Z",
        "to=0001-01-01T00:00:00Z",
        "to=9999-12-31T23:59:59-12:00",
    ],
)
def test_any_time_a_client_can_send_is_a_422_or_an_answer(
    app: App, call: Call, doctor: str, query: str
) -> None:
    # When appointments are listed with times at the ends of the calendar
    status, _, answer = call("GET", "/appointments", query=query)
    # Then the answer is a list (empty: nothing is booked then) or a 422, never a 5xx
    assert status in (200, 422), answer
    if status == 200:
        assert answer["data"] == []


@pytest.mark.parametrize("day", ["0001-01-01", "9999-12-31"])
def test_any_day_a_client_can_send_is_a_422_or_an_answer(
    app: App, call: Call, doctor: str, day: str
) -> None:
    # When a day at either end of the calendar is asked for
    for path, query in (
        (f"/doctors/{doctor}/availability", f"date={day}"),
        ("/metrics/daily", f"from={day}"),
        ("/metrics/daily", f"to={day}"),
        ("/metrics/daily", f"from={day}&to={day}"),
    ):
        status, _, answer = call("GET", path, query=query)
        # Then it is an answer or a 422, never a 5xx
        assert status in (200, 422), (path, query, answer)


def test_reschedule_and_cancel(app: App, call: Call, doctor: str, patient: str) -> None:
    # Given an appointment at 09:00
    _, _, booked = call("POST", "/appointments", booking(doctor, patient, at(9)))
    appointment = booked["data"]["id"]
    # When it is moved to 11:00
    status, _, moved = call(
        "PATCH", f"/appointments/{appointment}", {"startsAt": at(11)}, **{"idempotency-key": "m"}
    )
    # Then 09:00 is free again and the change is an event with the previous time
    assert status == 200, moved
    assert moved["data"]["previousStartsAt"] == at(9).replace("+00:00", "Z")
    _, _, free = call("GET", f"/doctors/{doctor}/availability", query=f"date={DAY}")
    starts = {s["startsAt"] for s in free["data"]}
    assert at(9).replace("+00:00", "Z") in starts and at(11).replace("+00:00", "Z") not in starts
    # When it is moved outside working hours / Then 422 and it stays at 11:00
    status, _, _ = call("PATCH", f"/appointments/{appointment}", {"startsAt": at(19)})
    assert status == 422
    # When it is cancelled / Then its slot is free and a second cancel is a 409
    status, _, cancelled = call("PATCH", f"/appointments/{appointment}", {"status": "cancelled"})
    assert status == 200 and cancelled["data"]["status"] == "cancelled"
    status, _, _ = call("PATCH", f"/appointments/{appointment}", {"status": "cancelled"})
    assert status == 409
    status, _, _ = call("PATCH", f"/appointments/{appointment}", {"startsAt": at(12)})
    assert status == 409
    # And another patient can now book 11:00
    status, _, _ = call("POST", "/appointments", booking(doctor, new_patient(call), at(11)))
    assert status == 201
    events = [r[0] for r in rows(app, "SELECT payload->>'detailType' FROM outbox ORDER BY id")]
    assert events == [
        "appointment.booked",
        "appointment.rescheduled",
        "appointment.cancelled",
        "appointment.booked",
    ]


def test_a_lead_becomes_a_patient_in_the_booking_transaction(
    app: App, call: Call, doctor: str
) -> None:
    # Given a lead of the clinic
    lead = {"name": "Grace Hopper", "phone": "+1 555 0100 777", "consent": True}
    _, _, created = call("POST", "/leads", lead)
    lead_id = created["data"]["id"]
    # When it is booked by lead id, twice for two slots
    status, _, first = call(
        "POST", "/appointments", {"doctorId": doctor, "leadId": lead_id, "startsAt": at(9)}
    )
    assert status == 201, first
    status, _, second = call(
        "POST", "/appointments", {"doctorId": doctor, "leadId": lead_id, "startsAt": at(10)}
    )
    # Then one patient was made from it, with the lead's details
    assert status == 201 and first["data"]["patientId"] == second["data"]["patientId"]
    status, _, patient = call("GET", f"/patients/{first['data']['patientId']}")
    assert (patient["data"]["name"], patient["data"]["leadId"]) == ("Grace Hopper", lead_id)
    # And a booking that fails converts nothing
    other = {"name": "Alan Turing", "email": "alan@example.org", "consent": True}
    _, _, created = call("POST", "/leads", other)
    status, _, _ = call(
        "POST",
        "/appointments",
        {"doctorId": doctor, "leadId": created["data"]["id"], "startsAt": at(9)},
    )
    assert status == 409
    assert rows(app, "SELECT count(*) FROM patients") == [(1,)]


def test_a_clinic_can_neither_read_book_reschedule_nor_cancel_in_another(
    app: App, call: Call, doctor: str, patient: str
) -> None:
    # Given clinic A's doctor, patient and appointment, and clinic B's token
    _, _, booked = call("POST", "/appointments", booking(doctor, patient, at(9)))
    appointment = booked["data"]["id"]
    b = app.other_clinic_id
    own_patient = new_patient(call, clinic=b)
    own_doctor = new_doctor(call, clinic=b)
    # When B uses A's ids / Then every route answers 404
    assert call("GET", f"/patients/{patient}", clinic=b)[0] == 404
    assert call("GET", f"/doctors/{doctor}/availability", clinic=b, query=f"date={DAY}")[0] == 404
    assert call("POST", "/appointments", booking(doctor, own_patient, at(10)), clinic=b)[0] == 404
    assert call("POST", "/appointments", booking(own_doctor, patient, at(10)), clinic=b)[0] == 404
    assert call("PATCH", f"/appointments/{appointment}", {"startsAt": at(12)}, clinic=b)[0] == 404
    status, _, _ = call("PATCH", f"/appointments/{appointment}", {"status": "cancelled"}, clinic=b)
    assert status == 404
    # And B's lists show none of A's rows
    _, _, listed = call("GET", "/appointments", clinic=b)
    _, _, doctors = call("GET", "/doctors", clinic=b)
    assert listed["data"] == [] and [d["id"] for d in doctors["data"]] == [own_doctor]
    # And A's appointment is untouched
    assert rows(app, "SELECT status, starts_at FROM appointments WHERE id = %s", appointment) == [
        ("booked", datetime.fromisoformat(at(9)))
    ]
