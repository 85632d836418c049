"""Appointments: booked synchronously, never double-booked, followed up via the outbox.

Double booking is made impossible by the database, not by a check in code: the exclusion
constraint `appointments_no_overlap` (btree_gist: doctor `=`, tstzrange `&&`, active
statuses only) refuses a second overlapping row however many requests race. Its
ExclusionViolation becomes `SlotTaken` (409) here, at the DB edge.

A booking is one INSERT ... SELECT that checks the doctor (this clinic's, active), the
patient (this clinic's), the working hours and slot grid (in the clinic's time zone) and
that the slot has not begun, and inserts only if all hold; the name snapshots are filled
by the `appointments_snapshot_names` trigger. Its answer tells which check failed, so a
refusal costs no second query. The `appointment.*` event (ids and times, never PII) goes
to the outbox in the same transaction.

Every write of a doctor's slots (a booking, a reschedule, a provider's booking) first takes
the doctor's advisory transaction lock (`lock_doctors`). Without it two writers racing for
one slot can deadlock inside the exclusion constraint: each inserts its index entry, finds
the other's uncommitted entry and waits for the other to end. With it they take turns, and
the second finds the first's committed row: a clean 409.

The lifecycle is the database's too (the trigger `appointments_enforce_lifecycle`, migration
0022): a status moves only from booked (to cancelled, completed or no_show; a cancelled
provider booking may be booked again), an outcome (completed, no_show) only from the
appointment's start, and an inactive doctor takes no new booking. Each refusal names its
rule as the error's constraint and becomes a 409 (422 for the inactive doctor, as the
booking's own check says) here, at the DB edge.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import psycopg
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from frontdesk.appointments import patients
from frontdesk.appointments.doctors import iso_utc
from frontdesk.errors import Conflict, InvalidInput, NotFound, SlotTaken
from frontdesk.platform.crypto import BlindIndex, EnvelopeCipher
from frontdesk.platform.db import Cursor, Database, transaction
from frontdesk.platform.queues import EventType
from frontdesk.platform.unit_of_work import UnitOfWork
from frontdesk.values import ApiModel, Source, Timestamp

MAX_LIST_RANGE = timedelta(days=62)
EXCLUSION_CONSTRAINT = "appointments_no_overlap"
# The trigger's rules (migration 0022), as the constraint names of its errors.
DOCTOR_ACTIVE_RULE = "appointments_doctor_active"
_LIFECYCLE_RULES = frozenset(
    {"appointments_status_transition", "appointments_outcome_after_start", DOCTOR_ACTIVE_RULE}
)
INACTIVE_DOCTOR = "the doctor does not take appointments (inactive)"


class BookingIn(BaseModel):
    """A booking for an existing patient (`patientId`) or a lead to convert (`leadId`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    doctor_id: UUID = Field(alias="doctorId")
    patient_id: UUID | None = Field(default=None, alias="patientId")
    lead_id: UUID | None = Field(
        default=None,
        alias="leadId",
        description="convert this lead into a patient in the same transaction",
    )
    starts_at: AwareDatetime = Field(alias="startsAt", description="a slot start, with offset")
    source: Source = "staff"

    @model_validator(mode="after")
    def _one_patient(self) -> BookingIn:
        if (self.patient_id is None) == (self.lead_id is None):
            raise ValueError("give exactly one of patientId and leadId")
        return self


NewStatus = Literal["cancelled", "completed", "no_show"]


class AppointmentChange(BaseModel):
    """PATCH body: `startsAt` to reschedule, or `status` to cancel (`cancelled`) or record
    the outcome (`completed`, `no_show`: only from the appointment's start)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    starts_at: AwareDatetime | None = Field(default=None, alias="startsAt")
    status: NewStatus | None = None

    @model_validator(mode="after")
    def _one_change(self) -> AppointmentChange:
        if (self.starts_at is None) == (self.status is None):
            raise ValueError("give exactly one of startsAt (reschedule) and status")
        return self


class Booking(ApiModel):
    """A booked, moved or cancelled appointment, as the change answers it."""

    id: UUID
    doctor_id: UUID
    patient_id: UUID
    starts_at: str
    ends_at: str
    status: str
    source: str
    doctor_name: str
    previous_starts_at: str | None = None


class AppointmentOut(ApiModel):
    id: UUID
    doctor_id: UUID
    patient_id: UUID
    starts_at: str
    ends_at: str
    status: str
    source: str
    doctor_name: str
    patient_name: str


class AppointmentDetail(AppointmentOut):
    """One appointment, as GET /appointments/{id} answers it (the patient's name decrypted)."""

    provider: str | None
    external_id: str | None
    scheduled_at: Timestamp
    created_at: Timestamp
    updated_at: Timestamp
    cancelled_at: Timestamp | None
    outcome_at: Timestamp | None


# The checks a slot must pass, for a doctor row `d` of clinic `c` and a start %(starts_at)s.
# `local_start` is the start on the clinic's wall clock; a slot must lie inside one
# working-hours interval of that weekday and start on its slot grid.
_SLOT_CHECKS = """
    d.id AS doctor_id, d.active,
    %(starts_at)s::timestamptz AS starts_at,
    %(starts_at)s::timestamptz + make_interval(mins => d.slot_minutes) AS ends_at,
    %(starts_at)s::timestamptz > now() AS in_future,
    EXISTS (
        SELECT 1 FROM doctor_working_hours h
        WHERE h.doctor_id = d.id
          AND h.weekday = extract(isodow FROM l.local_start)
          AND l.local_start >= l.local_start::date + h.starts_at
          AND l.local_start + make_interval(mins => d.slot_minutes)
              <= l.local_start::date + h.ends_at
          AND extract(epoch FROM l.local_start - (l.local_start::date + h.starts_at))::bigint
              %% (d.slot_minutes * 60) = 0
    ) AS in_hours"""
_LOCAL_START = (
    "CROSS JOIN LATERAL (SELECT %(starts_at)s::timestamptz AT TIME ZONE c.timezone"
    " AS local_start) l"
)

_BOOK = f"""
    WITH slot AS (
        SELECT {_SLOT_CHECKS}
        FROM doctors d JOIN clinics c ON c.id = d.clinic_id {_LOCAL_START}
        WHERE d.id = %(doctor_id)s AND d.clinic_id = %(clinic_id)s),
    patient AS (
        SELECT id FROM patients WHERE id = %(patient_id)s AND clinic_id = %(clinic_id)s),
    booked AS (
        INSERT INTO appointments (id, clinic_id, doctor_id, patient_id, starts_at, ends_at,
                                  source, request_id)
        SELECT %(id)s, %(clinic_id)s, slot.doctor_id, patient.id, slot.starts_at, slot.ends_at,
               %(source)s, %(request_id)s
        FROM slot, patient
        WHERE slot.active AND slot.in_hours AND slot.in_future
        RETURNING id, doctor_id, patient_id, starts_at, ends_at, status, source, doctor_name)
    SELECT slot.doctor_id IS NOT NULL AS doctor_found, slot.active, slot.in_hours,
           slot.in_future, slot.starts_at AS requested_start, slot.ends_at AS requested_end,
           EXISTS (SELECT 1 FROM patient) AS patient_found, booked.*
    FROM (SELECT 1) AS one LEFT JOIN slot ON true LEFT JOIN booked ON true"""

_RESCHEDULE = f"""
    WITH current AS (
        SELECT id, doctor_id, patient_id, starts_at AS previous_starts_at, status
        FROM appointments WHERE id = %(id)s AND clinic_id = %(clinic_id)s
        FOR UPDATE),
    slot AS (
        SELECT {_SLOT_CHECKS}
        FROM current JOIN doctors d ON d.id = current.doctor_id
        JOIN clinics c ON c.id = d.clinic_id {_LOCAL_START}),
    moved AS (
        UPDATE appointments a
        SET starts_at = slot.starts_at, ends_at = slot.ends_at, scheduled_at = now(),
            updated_at = now()
        FROM slot
        WHERE a.id = %(id)s AND a.clinic_id = %(clinic_id)s AND a.status = 'booked'
          AND slot.active AND slot.in_hours AND slot.in_future
        RETURNING a.id, a.doctor_id, a.patient_id, a.starts_at, a.ends_at, a.status, a.source,
                  a.doctor_name)
    SELECT current.status AS current_status, current.previous_starts_at,
           current.doctor_id AS current_doctor_id,
           slot.active, slot.in_hours, slot.in_future, slot.starts_at AS requested_start,
           slot.ends_at AS requested_end, moved.*
    FROM current LEFT JOIN slot ON true LEFT JOIN moved ON true"""

_PUBLIC = "id, doctor_id, patient_id, starts_at, ends_at, status, source, doctor_name"

_DOCTOR_LOCK = "pg_advisory_xact_lock(hashtextextended('appointments:doctor:' || {} :: text, 0))"


def lock_doctors(cur: Cursor, doctor_ids: Iterable[UUID]) -> None:
    """Take the slot-writing locks of these doctors until the transaction ends, in a fixed
    order (so two writers of several doctors cannot deadlock on them either)."""
    cur.execute(
        f"SELECT {_DOCTOR_LOCK.format('d')} FROM unnest(%(ids)s::uuid[]) AS d ORDER BY d",
        {"ids": sorted(set(doctor_ids))},
    )


# The appointment's row first, then its doctor's lock: the order every writer of an existing
# appointment keeps (a provider's upsert locks its rows before its doctors too).
_LOCK_APPOINTMENT_AND_DOCTOR = f"""
    WITH a AS (
        SELECT doctor_id FROM appointments
        WHERE id = %(id)s AND clinic_id = %(clinic_id)s
        FOR UPDATE)
    SELECT {_DOCTOR_LOCK.format("a.doctor_id")} FROM a"""


def book(
    uow: UnitOfWork,
    cipher: EnvelopeCipher,
    blind_index: BlindIndex,
    *,
    clinic_id: UUID,
    booking: BookingIn,
) -> Booking:
    """Book a slot, in `uow`. SlotTaken (409) when it overlaps, InvalidInput (422) outside
    working hours or in the past, NotFound for another clinic's doctor, patient or lead."""
    patient_id = booking.patient_id
    if booking.lead_id is not None:
        patient_id = patients.convert_lead(
            uow, cipher, blind_index, clinic_id=clinic_id, lead_id=booking.lead_id
        )
    lock_doctors(uow.cur, [booking.doctor_id])
    row = _execute_slot_write(
        uow.cur,
        _BOOK,
        {
            "id": uuid.uuid4(),
            "clinic_id": clinic_id,
            "doctor_id": booking.doctor_id,
            "patient_id": patient_id,
            "starts_at": booking.starts_at,
            "source": booking.source,
            "request_id": uow.request_id,
        },
    )
    if not row["doctor_found"]:
        raise NotFound(f"doctor {booking.doctor_id} not found")
    if not row["patient_found"]:
        raise NotFound(f"patient {patient_id} not found")
    _refuse_bad_slot(row)
    uow.emit(EventType.APPOINTMENT_BOOKED, event_detail(clinic_id, row))
    return _booking(row)


def _execute_slot_write(cur: Cursor, sql: str, params: dict[str, Any]) -> dict[str, Any]:
    try:
        cur.execute(sql, params)
    except psycopg.errors.ExclusionViolation as exc:
        if exc.diag.constraint_name != EXCLUSION_CONSTRAINT:
            raise
        raise slot_taken(exc, params) from exc
    except psycopg.errors.CheckViolation as exc:
        raise lifecycle_refusal(exc) from exc
    row = cur.fetchone()
    if row is None:
        raise NotFound(f"appointment {params.get('id')} not found")
    return dict(row)


def lifecycle_refusal(exc: psycopg.errors.CheckViolation) -> Conflict | InvalidInput:
    """The trigger's refusal as the API's error: its message names ids and statuses only.
    A CHECK constraint of the table (not a lifecycle rule) is re-raised as it is."""
    rule = exc.diag.constraint_name
    if rule not in _LIFECYCLE_RULES:
        raise exc
    if rule == DOCTOR_ACTIVE_RULE:
        return InvalidInput(INACTIVE_DOCTOR)
    return Conflict(exc.diag.message_primary or "the appointment cannot change so")


# "... conflicts with existing key (doctor_id, tstzrange(starts_at, ends_at))=(<uuid>,
# ["2026-01-05 09:00:00+00","2026-01-05 09:30:00+00"))."
_EXISTING_KEY = re.compile(
    r"conflicts with existing key \(.*?\)=\((?P<doctor>[0-9a-f\-]{36}), "
    r"\[\"(?P<start>[^\"]+)\",\"(?P<end>[^\"]+)\"\)\)"
)


def slot_taken(exc: psycopg.errors.ExclusionViolation, params: dict[str, Any]) -> SlotTaken:
    """The 409 naming the slot already booked, read from the violation's detail (the
    conflicting row is not visible to this transaction's snapshot, so it is not queried)."""
    match = _EXISTING_KEY.search(exc.diag.message_detail or "")
    if match is not None:
        doctor_id = match["doctor"]
        starts = iso_utc(datetime.fromisoformat(match["start"]))
        ends = iso_utc(datetime.fromisoformat(match["end"]))
    else:  # an unexpected format: name the requested slot instead
        doctor_id = str(params.get("doctor_id", ""))
        starts = iso_utc(params["starts_at"])
        ends = ""
    return SlotTaken(
        f"doctor {doctor_id} is already booked from {starts} to {ends}",
        doctor_id=doctor_id,
        starts_at=starts,
        ends_at=ends,
    )


def _refuse_bad_slot(row: dict[str, Any]) -> None:
    if row["id"] is not None:
        return
    if not row["active"]:
        raise InvalidInput(INACTIVE_DOCTOR)
    if not row["in_future"]:
        raise InvalidInput("the slot has already begun; book a future slot")
    if not row["in_hours"]:
        raise InvalidInput(
            "the slot is not in the doctor's working hours or not on its slot grid;"
            " see GET /doctors/{id}/availability"
        )


def _booking(row: dict[str, Any], previous_starts_at: str | None = None) -> Booking:
    return Booking(
        id=row["id"],
        doctor_id=row["doctor_id"],
        patient_id=row["patient_id"],
        starts_at=iso_utc(row["starts_at"]),
        ends_at=iso_utc(row["ends_at"]),
        status=row["status"],
        source=row["source"],
        doctor_name=row["doctor_name"],
        previous_starts_at=previous_starts_at,
    )


def event_detail(clinic_id: UUID, row: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Ids and times only. The outbox adds an `eventId`, stable across re-publishing the
    row, so NotifyWorker sends one notification per event however often it arrives."""
    return {
        "appointmentId": str(row["id"]),
        "clinicId": str(clinic_id),
        "doctorId": str(row["doctor_id"]),
        "patientId": str(row["patient_id"]),
        "startsAt": iso_utc(row["starts_at"]),
        "endsAt": iso_utc(row["ends_at"]),
        **extra,
    }


_STATUS_EVENTS = {
    "cancelled": EventType.APPOINTMENT_CANCELLED,
    "completed": EventType.APPOINTMENT_COMPLETED,
    "no_show": EventType.APPOINTMENT_NO_SHOW,
}
_STATUS_OPERATIONS = {
    "cancelled": "cancelAppointment",
    "completed": "completeAppointment",
    "no_show": "markNoShow",
}


def operation_of(change: AppointmentChange) -> str:
    """The change's name in the answer's meta (and under its Idempotency-Key)."""
    return _STATUS_OPERATIONS[change.status] if change.status else "rescheduleAppointment"


def change(
    uow: UnitOfWork, *, clinic_id: UUID, appointment_id: UUID, change: AppointmentChange
) -> Booking:
    """Reschedule (atomic: one UPDATE moves the row, so the old slot is freed and the new one
    taken together, or nothing changes), cancel, or record the outcome, in `uow`. NotFound
    for other clinics'; the lifecycle's refusals are the database's (see the module)."""
    if change.starts_at is not None:
        return _reschedule(uow, clinic_id, appointment_id, change.starts_at)
    assert change.status is not None
    return _set_status(uow, clinic_id, appointment_id, change.status)


def _reschedule(
    uow: UnitOfWork, clinic_id: UUID, appointment_id: UUID, starts_at: datetime
) -> Booking:
    params = {"id": appointment_id, "clinic_id": clinic_id, "starts_at": starts_at}
    cur = uow.cur
    cur.execute(_LOCK_APPOINTMENT_AND_DOCTOR, params)
    row = _execute_slot_write(cur, _RESCHEDULE, params)
    if row["current_status"] != "booked":
        raise Conflict(f"appointment {appointment_id} is {row['current_status']}")
    _refuse_bad_slot(row)
    previous = iso_utc(row["previous_starts_at"])
    uow.emit(
        EventType.APPOINTMENT_RESCHEDULED,
        event_detail(clinic_id, row, previousStartsAt=previous),
    )
    return _booking(row, previous)


def _set_status(uow: UnitOfWork, clinic_id: UUID, appointment_id: UUID, status: str) -> Booking:
    """One UPDATE; the trigger refuses a move the lifecycle does not allow (a 409 naming
    why). Setting the status it already has is a 409 too, so no event is written twice."""
    cur = uow.cur
    try:
        cur.execute(
            f"""UPDATE appointments
                SET status = %(status)s, updated_at = now(),
                    cancelled_at = CASE WHEN %(status)s = 'cancelled' THEN now()
                                        ELSE cancelled_at END
                WHERE id = %(id)s AND clinic_id = %(clinic_id)s AND status <> %(status)s
                RETURNING {_PUBLIC}""",
            {"id": appointment_id, "clinic_id": clinic_id, "status": status},
        )
    except psycopg.errors.CheckViolation as exc:
        raise lifecycle_refusal(exc) from exc
    row = cur.fetchone()
    if row is None:
        cur.execute(
            "SELECT status FROM appointments WHERE id = %(id)s AND clinic_id = %(clinic_id)s",
            {"id": appointment_id, "clinic_id": clinic_id},
        )
        existing = cur.fetchone()
        if existing is None:
            raise NotFound(f"appointment {appointment_id} not found")
        raise Conflict(f"appointment {appointment_id} is {existing['status']}")
    uow.emit(_STATUS_EVENTS[status], event_detail(clinic_id, row))
    return _booking(row)


def _later(moment: datetime, span: timedelta) -> datetime:
    """`moment + span`, or the last moment Python can hold when that is past year 9999."""
    try:
        return moment + span
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC)


def list_appointments(
    db: Database,
    cipher: EnvelopeCipher,
    *,
    clinic_id: UUID,
    doctor_id: UUID | None,
    starts_from: datetime | None,
    starts_to: datetime | None,
    limit: int = 500,
) -> list[AppointmentOut]:
    """Appointments starting in [from, to) (default: the next 7 days), oldest first."""
    starts_from = starts_from or datetime.now(UTC)
    starts_to = starts_to or _later(starts_from, timedelta(days=7))
    if starts_to <= starts_from:
        raise InvalidInput("to must be after from")
    if starts_to - starts_from > MAX_LIST_RANGE:
        raise InvalidInput(f"from and to may be at most {MAX_LIST_RANGE.days} days apart")
    with transaction(db) as cur:
        cur.execute(
            f"""SELECT {_PUBLIC}, patient_name_enc, patient_dek FROM appointments
                WHERE clinic_id = %(clinic_id)s
                  AND (%(doctor_id)s::uuid IS NULL OR doctor_id = %(doctor_id)s)
                  AND starts_at >= %(from)s AND starts_at < %(to)s
                ORDER BY starts_at, id LIMIT %(limit)s""",
            {
                "clinic_id": clinic_id,
                "doctor_id": doctor_id,
                "from": starts_from,
                "to": starts_to,
                "limit": limit,
            },
        )
        rows = cur.fetchall()
    return [_appointment_out(cipher, row) for row in rows]


def _appointment_fields(cipher: EnvelopeCipher, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "doctor_id": row["doctor_id"],
        "patient_id": row["patient_id"],
        "starts_at": iso_utc(row["starts_at"]),
        "ends_at": iso_utc(row["ends_at"]),
        "status": row["status"],
        "source": row["source"],
        "doctor_name": row["doctor_name"],
        "patient_name": patients.decrypt_name_snapshot(
            cipher, row["patient_id"], bytes(row["patient_name_enc"]), bytes(row["patient_dek"])
        ),
    }


def _appointment_out(cipher: EnvelopeCipher, row: dict[str, Any]) -> AppointmentOut:
    return AppointmentOut(**_appointment_fields(cipher, row))


def get_appointment(
    db: Database, cipher: EnvelopeCipher, *, clinic_id: UUID, appointment_id: UUID
) -> AppointmentDetail:
    """One appointment of the clinic, the patient's name decrypted; NotFound for others'."""
    with transaction(db) as cur:
        cur.execute(
            f"""SELECT {_PUBLIC}, patient_name_enc, patient_dek, provider, external_id,
                       scheduled_at, created_at, updated_at, cancelled_at, outcome_at
                FROM appointments WHERE id = %(id)s AND clinic_id = %(clinic_id)s""",
            {"id": appointment_id, "clinic_id": clinic_id},
        )
        row = cur.fetchone()
    if row is None:
        raise NotFound(f"appointment {appointment_id} not found")
    return AppointmentDetail(
        **_appointment_fields(cipher, row),
        provider=row["provider"],
        external_id=row["external_id"],
        scheduled_at=row["scheduled_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        cancelled_at=row["cancelled_at"],
        outcome_at=row["outcome_at"],
    )


MAX_DOCTOR_LIST = 1000


def doctor_appointments(
    db: Database, cipher: EnvelopeCipher, *, clinic_id: UUID, doctor_id: UUID, upcoming: bool
) -> list[AppointmentOut]:
    """`upcoming`: the doctor's booked appointments that have not begun, soonest first (what
    to rebook when the doctor is deactivated); else those that have begun, of any status,
    latest first. At most 1,000; NotFound for another clinic's doctor. One statement."""
    # Two fixed texts rather than a CASE, so each uses its index
    # (appointments_doctor_booked_starts for the upcoming ones).
    which, order = (
        ("status = 'booked' AND starts_at > now()", "starts_at, id")
        if upcoming
        else ("starts_at <= now()", "starts_at DESC, id")
    )
    with transaction(db) as cur:
        cur.execute(
            f"""SELECT d.id AS found, a.*
                FROM doctors d
                LEFT JOIN LATERAL (
                    SELECT {_PUBLIC}, patient_name_enc, patient_dek FROM appointments
                    WHERE doctor_id = d.id AND clinic_id = d.clinic_id AND {which}
                    ORDER BY {order} LIMIT %(limit)s) a ON true
                WHERE d.id = %(doctor_id)s AND d.clinic_id = %(clinic_id)s""",
            {"doctor_id": doctor_id, "clinic_id": clinic_id, "limit": MAX_DOCTOR_LIST},
        )
        rows = cur.fetchall()
    if not rows:
        raise NotFound(f"doctor {doctor_id} not found")
    return [_appointment_out(cipher, row) for row in rows if row["id"] is not None]
