"""Booking benchmark: `python -m bench.appointments`.

Side by side in one run, on the same PostgreSQL:
1. Non-conflicting bookings per second: POST /appointments through ApiFunction's real
   handler (Mangum, FastAPI, one transaction, relay to moto's EventBridge), the booking
   path itself (`appointments.book`: one INSERT ... SELECT + the outbox row), and the naive
   path (read the patient, read the doctor, SELECT for an overlap, INSERT) on a table
   without the exclusion constraint.
2. Correctness under 50-way contention for one slot: 50 threads at a barrier, each its own
   connection. The handler must book exactly one; the naive path is expected to double-book.
Results: bench/results/appointments.json and .md. Nothing here asserts a timing.
"""

from __future__ import annotations

import asyncio
import platform
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench.common import (
    Report,
    Row,
    export_stack,
    log,
    seed_clinic,
    start_moto,
    start_postgres,
    stdout_to_devnull,
    use_database,
    write_results,
)

N_BOOKINGS = 400
CONTENDERS = 50
SLOTS_PER_DAY = 47  # 00:00-23:30 in 30-minute slots

NAIVE_TABLE = """
CREATE TABLE naive_appointments (
    id uuid PRIMARY KEY, clinic_id uuid NOT NULL, doctor_id uuid NOT NULL,
    patient_id uuid NOT NULL, starts_at timestamptz NOT NULL, ends_at timestamptz NOT NULL,
    status text NOT NULL DEFAULT 'booked', source text NOT NULL, doctor_name text NOT NULL,
    patient_name_enc bytea NOT NULL, patient_dek bytea NOT NULL)"""


class _NoRelay:
    """A hand-off that sends nothing: the outbox rows stay in the table."""

    def submit(self, outbox_ids: Sequence[int]) -> None:
        pass


NO_RELAY = _NoRelay()


def slot(index: int, first_day: datetime) -> datetime:
    day = first_day + timedelta(days=index // SLOTS_PER_DAY)
    return day + timedelta(minutes=30 * (index % SLOTS_PER_DAY))


def naive_book(
    conn: psycopg.Connection[Any],
    clinic: uuid.UUID,
    doctor: uuid.UUID,
    patient: uuid.UUID,
    starts_at: datetime,
    round_trip_s: float = 0.0,
) -> bool:
    """The textbook way: read, check, insert, in one READ COMMITTED transaction."""
    with conn.transaction():
        p = conn.execute(
            "SELECT name_enc, dek FROM patients WHERE id = %s AND clinic_id = %s", (patient, clinic)
        ).fetchone()
        d = conn.execute(
            "SELECT name, slot_minutes FROM doctors WHERE id = %s AND clinic_id = %s",
            (doctor, clinic),
        ).fetchone()
        assert p is not None and d is not None
        ends_at = starts_at + timedelta(minutes=d[1])
        taken = conn.execute(
            """SELECT 1 FROM naive_appointments WHERE doctor_id = %s AND status <> 'cancelled'
               AND tstzrange(starts_at, ends_at) && tstzrange(%s, %s)""",
            (doctor, starts_at, ends_at),
        ).fetchone()
        if taken:
            return False
        if round_trip_s:  # the network between a Lambda and RDS, check -> insert
            time.sleep(round_trip_s)
        conn.execute(
            """INSERT INTO naive_appointments (id, clinic_id, doctor_id, patient_id, starts_at,
                   ends_at, source, doctor_name, patient_name_enc, patient_dek)
               VALUES (%s, %s, %s, %s, %s, %s, 'staff', %s, %s, %s)""",
            (uuid.uuid4(), clinic, doctor, patient, starts_at, ends_at, d[0], p[0], p[1]),
        )
        return True


def race(workers: list[Callable[[], Any]]) -> list[Any]:
    barrier = threading.Barrier(len(workers))
    results: list[Any] = [None] * len(workers)

    def run(i: int) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            barrier.wait()
            results[i] = workers[i]()
        except Exception as exc:  # reported, never hidden
            results[i] = type(exc).__name__
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main() -> None:
    from frontdesk.appointments import bookings as appointments
    from frontdesk.appointments import doctors, patients
    from frontdesk.platform.db import PooledDatabase
    from frontdesk.platform.unit_of_work import UnitOfWork
    from frontdesk.services import get_services
    from tests.support import (
        LambdaContext,
        http_event,
        http_response,
        load_handler,
        reset_process_state,
    )

    pg = start_postgres()
    moto = start_moto()
    report = Report()
    try:
        url = pg.fresh_database("bench_appointments")
        export_stack(moto, url)
        clinic = seed_clinic()
        services = get_services()
        database = services.database
        hours = [doctors.WorkingHours(weekday=d, start="00:00", end="23:30") for d in range(1, 8)]
        spec = doctors.DoctorIn(name="Dr. Bench", slot_minutes=30, working_hours=hours)
        with services.unit_of_work(clinic_id=clinic) as uow:
            doctor = doctors.create_doctor(uow, clinic_id=clinic, doctor=spec).id
        with services.unit_of_work(clinic_id=clinic) as uow:
            patient = patients.create_patient(
                uow,
                services.cipher,
                services.blind_index,
                clinic_id=clinic,
                patient=patients.PatientIn(name="Bench Patient", email="p@bench.example"),
            ).id
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(NAIVE_TABLE)
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        api = load_handler("api")

        def post(starts_at: datetime) -> int:
            body = {
                "doctorId": str(doctor),
                "patientId": str(patient),
                "startsAt": starts_at.isoformat(),
            }
            event = http_event("POST", "/appointments", body=body, clinic_id=clinic)
            return http_response(api.handler(event, LambdaContext()))[0]

        # 1. Throughput, non-conflicting: three paths on disjoint days.
        log(f"{N_BOOKINGS} bookings through the handler")
        with stdout_to_devnull():
            post(slot(0, today + timedelta(days=400)))  # warm: imports, first connection
            started = time.perf_counter()
            statuses = Counter(post(slot(i, today + timedelta(days=2))) for i in range(N_BOOKINGS))
            handler_s = time.perf_counter() - started
        assert statuses == {201: N_BOOKINGS}, statuses

        # The booking transaction itself: book() in a unit of work whose hand-off keeps the
        # outbox row unsent (the route's unit of work relays it after the commit).
        cipher, blind_index = services.cipher, services.blind_index
        log(f"{N_BOOKINGS} bookings through the booking transaction")
        first = today + timedelta(days=100)
        started = time.perf_counter()
        for i in range(N_BOOKINGS):
            booking = appointments.BookingIn(
                doctor_id=doctor, patient_id=patient, starts_at=slot(i, first)
            )
            with UnitOfWork(database, NO_RELAY, clinic_id=clinic) as uow:
                appointments.book(uow, cipher, blind_index, clinic_id=clinic, booking=booking)
        book_s = time.perf_counter() - started
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE outbox SET sent_at = now()")  # keep the sweeper-free db tidy

        log(f"{N_BOOKINGS} bookings the naive way")
        with psycopg.connect(url, autocommit=True) as conn:
            started = time.perf_counter()
            for i in range(N_BOOKINGS):
                assert naive_book(conn, clinic, doctor, patient, slot(i, first))
            naive_s = time.perf_counter() - started

        handler_rate = N_BOOKINGS / handler_s
        book_rate, naive_rate = N_BOOKINGS / book_s, N_BOOKINGS / naive_s
        report.add(
            Row(
                "bookings/s through ApiFunction's handler (incl. relay to EventBridge)",
                f"{handler_rate:,.0f}/s",
            )
        )
        report.add(
            Row(
                "bookings/s, the booking transaction: one INSERT ... SELECT + outbox row",
                f"{book_rate:,.0f}/s",
                f"naive read/read/check/insert: {naive_rate:,.0f}/s",
                f"{book_rate / naive_rate:.2f}x",
            )
        )

        # 2. Contention: 50 bookings of one slot at the same moment.
        contested = slot(10, today + timedelta(days=300))
        # The handler's database as a pool (its single connection closed), so threads are
        # concurrent transactions; the container's other services stay as they are.
        use_database(PooledDatabase(url, max_size=CONTENDERS))
        with stdout_to_devnull():
            ours = Counter(race([lambda: post(contested)] * CONTENDERS))
        reset_process_state()  # closes the pool
        with psycopg.connect(url) as conn:
            our_rows = conn.execute(
                "SELECT count(*) FROM appointments WHERE starts_at = %s", (contested,)
            ).fetchone()
        naive_runs = {}
        for name, rtt, when in (("naive", 0.0, 301), ("naive, 1 ms round trip", 0.001, 302)):
            contested_naive = slot(10, today + timedelta(days=when))
            connections = [psycopg.connect(url, autocommit=True) for _ in range(CONTENDERS)]
            try:
                outcomes = Counter(
                    race(
                        [
                            (
                                lambda c=c, at=contested_naive, rtt=rtt: naive_book(
                                    c, clinic, doctor, patient, at, rtt
                                )
                            )
                            for c in connections
                        ]
                    )
                )
            finally:
                for c in connections:
                    c.close()
            with psycopg.connect(url) as conn:
                counted = conn.execute(
                    "SELECT count(*) FROM naive_appointments WHERE starts_at = %s",
                    (contested_naive,),
                ).fetchone()
            assert counted is not None
            naive_runs[name] = (counted[0], outcomes)
        assert our_rows is not None
        naive_text = "; ".join(f"{name}: {rows}" for name, (rows, _) in naive_runs.items())
        report.add(
            Row(
                f"{CONTENDERS} concurrent bookings of one slot: rows booked",
                f"{our_rows[0]} (201: {ours[201]}, 409: {ours[409]})",
                naive_text,
                "-",
                "exactly 1",
            )
        )
        report.details = {
            "n_bookings": N_BOOKINGS,
            "handler_per_s": round(handler_rate, 1),
            "book_per_s": round(book_rate, 1),
            "naive_per_s": round(naive_rate, 1),
            "contention": {
                "contenders": CONTENDERS,
                "ours": {"statuses": dict(ours), "rows": our_rows[0]},
                "naive": {
                    name: {"rows": rows, "outcomes": {str(k): v for k, v in outcomes.items()}}
                    for name, (rows, outcomes) in naive_runs.items()
                },
            },
            "postgres": f"{pg.version} ({pg.source})",
            "python": platform.python_version(),
            "machine": platform.platform(),
        }
    finally:
        pg.drop_created()
        moto.server.stop()
    note = f"PostgreSQL {report.details['postgres']}, Python {report.details['python']}."
    print(write_results("appointments", "Appointments benchmark", report, notes=[note]))


if __name__ == "__main__":
    main()
