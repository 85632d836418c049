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
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import psycopg
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from frontdesk.appointments import patients
from frontdesk.appointments.doctors import iso_utc
from frontdesk.errors import Conflict, InvalidInput, NotFound, SlotTaken
from frontdesk.leads.intake import Source
from frontdesk.platform import outbox
from frontdesk.platform.crypto import BlindIndex, EnvelopeCipher, field_aad
from frontdesk.platform.db import Cursor, Database, transaction
from frontdesk.platform.idempotency import IdempotencyRequest, Outcome, run_once

BOOKED = "appointment.booked"
RESCHEDULED = "appointment.rescheduled"
CANCELLED = "appointment.cancelled"
MAX_LIST_RANGE = timedelta(days=62)
EXCLUSION_CONSTRAINT = "appointments_no_overlap"


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


class AppointmentChange(BaseModel):
    """PATCH body: `startsAt` to reschedule, or `status: cancelled` to cancel."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    starts_at: AwareDatetime | None = Field(default=None, alias="startsAt")
    status: Literal["cancelled"] | None = None

    @model_validator(mode="after")
    def _one_change(self) -> AppointmentChange:
        if (self.starts_at is None) == (self.status is None):
            raise ValueError("give exactly one of startsAt (reschedule) and status (cancel)")
        return self


class AppointmentOut(BaseModel):
    id: UUID
    doctor_id: UUID = Field(serialization_alias="doctorId")
    patient_id: UUID = Field(serialization_alias="patientId")
    starts_at: str = Field(serialization_alias="startsAt")
    ends_at: str = Field(serialization_alias="endsAt")
    status: str
    source: str
    doctor_name: str = Field(serialization_alias="doctorName")
    patient_name: str = Field(serialization_alias="patientName")


@dataclass(frozen=True)
class Ports:
    cipher: EnvelopeCipher
    blind_index: BlindIndex
    publisher: outbox.Publisher


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


def book(
    db: Database,
    ports: Ports,
    *,
    clinic_id: UUID,
    booking: BookingIn,
    request_id: str | None,
    idempotency: IdempotencyRequest | None = None,
) -> Outcome:
    """Book a slot; 201 data {id, doctorId, patientId, startsAt, endsAt, status, source,
    doctorName}. SlotTaken (409) when it overlaps, InvalidInput (422) outside working
    hours or in the past, NotFound for another clinic's doctor, patient or lead."""
    with transaction(db) as cur:
        outcome, outbox_ids = run_once(
            cur,
            clinic_id,
            idempotency,
            201,
            lambda: _book(cur, ports, clinic_id, booking, request_id),
            nothing=list[int](),
        )
    outbox.relay(db, outbox_ids, ports.publisher)
    return outcome


def _book(
    cur: Cursor, ports: Ports, clinic_id: UUID, booking: BookingIn, request_id: str | None
) -> tuple[dict[str, Any], list[int]]:
    patient_id = booking.patient_id
    if booking.lead_id is not None:
        patient_id = patients.convert_lead(
            cur,
            ports.cipher,
            ports.blind_index,
            clinic_id=clinic_id,
            lead_id=booking.lead_id,
            request_id=request_id,
        )
    row = _execute_slot_write(
        cur,
        _BOOK,
        {
            "id": uuid.uuid4(),
            "clinic_id": clinic_id,
            "doctor_id": booking.doctor_id,
            "patient_id": patient_id,
            "starts_at": booking.starts_at,
            "source": booking.source,
            "request_id": request_id,
        },
    )
    if not row["doctor_found"]:
        raise NotFound(f"doctor {booking.doctor_id} not found")
    if not row["patient_found"]:
        raise NotFound(f"patient {patient_id} not found")
    _refuse_bad_slot(row)
    data = _public(row)
    event_id = outbox.add_domain_event(
        cur, detail_type=BOOKED, detail=_event_detail(clinic_id, row), request_id=request_id
    )
    return data, [event_id]


def _execute_slot_write(cur: Cursor, sql: str, params: dict[str, Any]) -> dict[str, Any]:
    try:
        cur.execute(sql, params)
    except psycopg.errors.ExclusionViolation as exc:
        if exc.diag.constraint_name != EXCLUSION_CONSTRAINT:
            raise
        raise slot_taken(exc, params) from exc
    row = cur.fetchone()
    assert row is not None
    return dict(row)


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
        raise InvalidInput("the doctor does not take appointments (inactive)")
    if not row["in_future"]:
        raise InvalidInput("the slot has already begun; book a future slot")
    if not row["in_hours"]:
        raise InvalidInput(
            "the slot is not in the doctor's working hours or not on its slot grid;"
            " see GET /doctors/{id}/availability"
        )


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "doctorId": str(row["doctor_id"]),
        "patientId": str(row["patient_id"]),
        "startsAt": iso_utc(row["starts_at"]),
        "endsAt": iso_utc(row["ends_at"]),
        "status": row["status"],
        "source": row["source"],
        "doctorName": row["doctor_name"],
    }


def _event_detail(clinic_id: UUID, row: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Ids and times only. `eventId` is stable across re-publishing the outbox row, so
    NotifyWorker can send one notification per event however often it arrives."""
    return {
        "eventId": str(uuid.uuid4()),
        "appointmentId": str(row["id"]),
        "clinicId": str(clinic_id),
        "doctorId": str(row["doctor_id"]),
        "patientId": str(row["patient_id"]),
        "startsAt": iso_utc(row["starts_at"]),
        "endsAt": iso_utc(row["ends_at"]),
        **extra,
    }


def change(
    db: Database,
    ports: Ports,
    *,
    clinic_id: UUID,
    appointment_id: UUID,
    change: AppointmentChange,
    request_id: str | None,
    idempotency: IdempotencyRequest | None = None,
) -> Outcome:
    """Reschedule (atomic: one UPDATE moves the row, so the old slot is freed and the new one
    taken together, or nothing changes) or cancel. NotFound for other clinics' ids."""
    write: Callable[[], tuple[dict[str, Any], list[int]]]
    if change.starts_at is not None:
        starts_at = change.starts_at

        def write() -> tuple[dict[str, Any], list[int]]:
            return _reschedule(cur, clinic_id, appointment_id, starts_at, request_id)
    else:

        def write() -> tuple[dict[str, Any], list[int]]:
            return _cancel(cur, clinic_id, appointment_id, request_id)

    with transaction(db) as cur:
        outcome, outbox_ids = run_once(cur, clinic_id, idempotency, 200, write, list[int]())
    outbox.relay(db, outbox_ids, ports.publisher)
    return outcome


def _reschedule(
    cur: Cursor, clinic_id: UUID, appointment_id: UUID, starts_at: datetime, rid: str | None
) -> tuple[dict[str, Any], list[int]]:
    params = {"id": appointment_id, "clinic_id": clinic_id, "starts_at": starts_at}
    try:
        cur.execute(_RESCHEDULE, params)
    except psycopg.errors.ExclusionViolation as exc:
        if exc.diag.constraint_name != EXCLUSION_CONSTRAINT:
            raise
        raise slot_taken(exc, params) from exc
    found = cur.fetchone()
    if found is None:
        raise NotFound(f"appointment {appointment_id} not found")
    row = dict(found)
    if row["current_status"] != "booked":
        raise Conflict(f"appointment {appointment_id} is {row['current_status']}")
    _refuse_bad_slot(row)
    previous = iso_utc(row["previous_starts_at"])
    event_id = outbox.add_domain_event(
        cur,
        detail_type=RESCHEDULED,
        detail=_event_detail(clinic_id, row, previousStartsAt=previous),
        request_id=rid,
    )
    return {**_public(row), "previousStartsAt": previous}, [event_id]


def _cancel(
    cur: Cursor, clinic_id: UUID, appointment_id: UUID, rid: str | None
) -> tuple[dict[str, Any], list[int]]:
    cur.execute(
        f"""UPDATE appointments SET status = 'cancelled', cancelled_at = now(), updated_at = now()
            WHERE id = %(id)s AND clinic_id = %(clinic_id)s AND status = 'booked'
            RETURNING {_PUBLIC}""",
        {"id": appointment_id, "clinic_id": clinic_id},
    )
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
    event_id = outbox.add_domain_event(
        cur, detail_type=CANCELLED, detail=_event_detail(clinic_id, row), request_id=rid
    )
    return _public(row), [event_id]


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
    starts_to = starts_to or starts_from + timedelta(days=7)
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
    return [
        AppointmentOut(
            id=row["id"],
            doctor_id=row["doctor_id"],
            patient_id=row["patient_id"],
            starts_at=iso_utc(row["starts_at"]),
            ends_at=iso_utc(row["ends_at"]),
            status=row["status"],
            source=row["source"],
            doctor_name=row["doctor_name"],
            patient_name=patients.decrypt_name_snapshot(
                cipher,
                row["patient_id"],
                bytes(row["patient_name_enc"]),
                bytes(row["patient_dek"]),
            ),
        )
        for row in rows
    ]


# ---------------------------------------------------------------- provider bookings


@dataclass(frozen=True)
class ExternalBooking:
    """A provider's booking, checked: status mapped, times ordered, contact valid."""

    external_id: str
    doctor_external_id: str
    starts_at: datetime
    ends_at: datetime
    status: Literal["booked", "cancelled"]
    name: str
    email: str | None
    phone: str | None
    updated_at: datetime | None = None


_UPSERT_EXTERNAL = """
    INSERT INTO appointments AS a (id, clinic_id, doctor_id, patient_id, starts_at, ends_at,
                                   status, source, provider, external_id, external_updated_at,
                                   request_id)
    VALUES (%(id)s, %(clinic_id)s, %(doctor_id)s, %(patient_id)s, %(starts_at)s, %(ends_at)s,
            %(status)s, %(provider)s, %(provider)s, %(external_id)s, %(updated_at)s,
            %(request_id)s)
    ON CONFLICT (clinic_id, provider, external_id) WHERE external_id IS NOT NULL
    DO UPDATE SET doctor_id = excluded.doctor_id, starts_at = excluded.starts_at,
           ends_at = excluded.ends_at, status = excluded.status,
           scheduled_at = CASE
               WHEN (a.doctor_id, a.starts_at, a.ends_at, a.status)
                    IS DISTINCT FROM
                    (excluded.doctor_id, excluded.starts_at, excluded.ends_at, excluded.status)
               THEN now() ELSE a.scheduled_at END,
           cancelled_at = CASE WHEN excluded.status = 'cancelled'
                               THEN coalesce(a.cancelled_at, now()) END,
           external_updated_at = excluded.external_updated_at, updated_at = now()
    WHERE a.status IN ('booked', 'cancelled')
      AND (a.external_updated_at IS NULL OR excluded.external_updated_at IS NULL
           OR excluded.external_updated_at > a.external_updated_at)
    RETURNING a.id, a.doctor_id, a.patient_id, a.starts_at, a.ends_at, a.status,
              (a.xmax = 0) AS inserted"""


def upsert_external(
    cur: Cursor,
    cipher: EnvelopeCipher,
    blind_index: BlindIndex,
    *,
    clinic_id: UUID,
    provider: str,
    items: list[ExternalBooking],
    request_id: str | None,
) -> tuple[dict[str, str], dict[str, str], list[int]]:
    """Insert new provider bookings and apply changes to known ones, keyed by (clinic,
    provider, external id), in the caller's transaction; write appointment.booked /
    rescheduled / cancelled to the outbox. Returns ({external id: "created" | "updated" |
    "unchanged" | "skipped"}, {external id: why skipped}, outbox ids).

    An older or equal `updated_at` changes nothing. A booking whose doctor maps to none of
    the clinic's doctors, that is new but already cancelled, or whose slot overlaps another
    active appointment of the doctor (the exclusion constraint, under a savepoint per row)
    is skipped, never stored twice nor double-booked."""
    latest: dict[str, ExternalBooking] = {}
    for item in items:  # the newest version per external id
        seen = latest.get(item.external_id)
        if seen is None or (item.updated_at or datetime.min.replace(tzinfo=UTC)) >= (
            seen.updated_at or datetime.min.replace(tzinfo=UTC)
        ):
            latest[item.external_id] = item
    if not latest:
        return {}, {}, []
    key = {"clinic_id": clinic_id, "provider": provider, "ids": sorted(latest)}
    # One writer per booking at a time (in a fixed order: no deadlocks), so "the row before"
    # read below is the row the upsert changes, even for a booking not stored yet.
    cur.execute(
        """SELECT pg_advisory_xact_lock(hashtextextended(
                      'booking:' || %(clinic_id)s::text || ':' || %(provider)s || ':' || e, 0))
           FROM (SELECT e FROM unnest(%(ids)s::text[]) AS e ORDER BY e) AS ordered""",
        key,
    )
    cur.execute(
        """SELECT external_id, id FROM doctors
           WHERE clinic_id = %(clinic_id)s AND provider = %(provider)s
             AND external_id = ANY(%(doctor_ids)s)""",
        {**key, "doctor_ids": sorted({b.doctor_external_id for b in latest.values()})},
    )
    doctors = {row["external_id"]: row["id"] for row in cur.fetchall()}
    cur.execute(
        """SELECT external_id, id, doctor_id, patient_id, starts_at, ends_at, status
           FROM appointments
           WHERE clinic_id = %(clinic_id)s AND provider = %(provider)s
             AND external_id = ANY(%(ids)s)
           FOR UPDATE""",
        key,
    )
    before = {row["external_id"]: dict(row) for row in cur.fetchall()}
    outcome: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for external_id, item in latest.items():
        if item.doctor_external_id not in doctors:
            reasons[external_id] = f"unknown doctor {item.doctor_external_id!r}"
        elif external_id not in before and item.status == "cancelled":
            reasons[external_id] = "cancelled before it was synced"
    for external_id in reasons:
        outcome[external_id] = "skipped"
    new = [b for e, b in latest.items() if e not in before and e not in reasons]
    patient_ids = _provider_patients(cur, cipher, blind_index, clinic_id, new, request_id)
    outbox_ids: list[int] = []
    for external_id, item in latest.items():
        if external_id in reasons:
            continue
        previous = before.get(external_id)
        params = {
            "id": uuid.uuid4(),
            "clinic_id": clinic_id,
            "doctor_id": doctors[item.doctor_external_id],
            "patient_id": previous["patient_id"] if previous else patient_ids[external_id],
            "starts_at": item.starts_at,
            "ends_at": item.ends_at,
            "status": item.status,
            "provider": provider,
            "external_id": external_id,
            "updated_at": item.updated_at,
            "request_id": request_id,
        }
        try:
            with cur.connection.transaction():  # a savepoint: a refused row undoes only itself
                cur.execute(_UPSERT_EXTERNAL, params)
                found = cur.fetchone()
        except psycopg.errors.ExclusionViolation as exc:
            if exc.diag.constraint_name != EXCLUSION_CONSTRAINT:
                raise
            outcome[external_id] = "skipped"
            reasons[external_id] = str(slot_taken(exc, params))
            continue
        if found is None:  # stale (older or equal updatedAt), or completed / no-show here
            outcome[external_id] = "unchanged"
            continue
        row = dict(found)
        state, event = _booking_change(previous, row)
        outcome[external_id] = state
        if event is not None:
            extra = {"source": provider}
            if event == RESCHEDULED and previous is not None:
                extra["previousStartsAt"] = iso_utc(previous["starts_at"])
            outbox_ids.append(
                outbox.add_domain_event(
                    cur,
                    detail_type=event,
                    detail=_event_detail(clinic_id, row, **extra),
                    request_id=request_id,
                )
            )
    return outcome, reasons, outbox_ids


def _booking_change(previous: dict[str, Any] | None, row: dict[str, Any]) -> tuple[str, str | None]:
    """The outcome and the event of one upserted booking, from its row before and after."""
    if previous is None:
        return "created", BOOKED
    fields = ("doctor_id", "starts_at", "ends_at", "status")
    if all(previous[f] == row[f] for f in fields):
        return "unchanged", None
    if row["status"] == "cancelled":
        return "updated", CANCELLED if previous["status"] != "cancelled" else None
    if previous["status"] == "cancelled":
        return "updated", BOOKED  # booked again at the provider
    return "updated", RESCHEDULED


def _provider_patients(
    cur: Cursor,
    cipher: EnvelopeCipher,
    blind_index: BlindIndex,
    clinic_id: UUID,
    bookings: list[ExternalBooking],
    request_id: str | None,
) -> dict[str, UUID]:
    """{external id: patient id} for new bookings: the clinic's earliest patient with the
    booking's email (else phone) by blind index, or a new patient (encrypted like
    patients.insert_patient); one lookup and at most one insert for the whole group."""
    if not bookings:
        return {}
    email_bidx = [blind_index.email(b.email) for b in bookings]
    phone_bidx = [blind_index.phone(b.phone) for b in bookings]
    cur.execute(
        """SELECT b.i, coalesce(
                  (SELECT p.id FROM patients p
                   WHERE p.clinic_id = %(clinic_id)s AND p.email_bidx = b.eb
                   ORDER BY p.created_at, p.id LIMIT 1),
                  (SELECT p.id FROM patients p
                   WHERE p.clinic_id = %(clinic_id)s AND p.phone_bidx = b.pb
                   ORDER BY p.created_at, p.id LIMIT 1)) AS patient_id
           FROM unnest(%(eb)s::bytea[], %(pb)s::bytea[]) WITH ORDINALITY AS b(eb, pb, i)""",
        {"clinic_id": clinic_id, "eb": email_bidx, "pb": phone_bidx},
    )
    found = {int(row["i"]) - 1: row["patient_id"] for row in cur.fetchall()}
    result: dict[str, UUID] = {}
    created: dict[bytes, UUID] = {}  # one new patient per email (else phone) in the group
    columns: dict[str, list[Any]] = {c: [] for c in ("id", "name", "email", "phone", "eb", "pb")}
    data_key = cipher.data_key()
    encrypt = cipher.encryptor(data_key)
    for i, booking in enumerate(bookings):
        if found.get(i) is not None:
            result[booking.external_id] = found[i]
            continue
        contact = email_bidx[i] or phone_bidx[i]
        assert contact is not None  # checked before: an email or a phone
        if contact not in created:
            patient_id = created[contact] = uuid.uuid4()
            columns["id"].append(patient_id)
            for field in ("name", "email", "phone"):
                aad = field_aad("patients", patient_id, field)
                columns[field].append(encrypt(getattr(booking, field), aad))
            columns["eb"].append(email_bidx[i])
            columns["pb"].append(phone_bidx[i])
        result[booking.external_id] = created[contact]
    if columns["id"]:
        cur.execute(
            """INSERT INTO patients (id, clinic_id, name_enc, email_enc, phone_enc, dek,
                                     kms_key_id, email_bidx, phone_bidx, request_id)
               SELECT u.id, %(clinic_id)s, u.name, u.email, u.phone, %(dek)s, %(kms_key_id)s,
                      u.eb, u.pb, %(request_id)s
               FROM unnest(%(id)s::uuid[], %(name)s::bytea[], %(email)s::bytea[],
                           %(phone)s::bytea[], %(eb)s::bytea[], %(pb)s::bytea[])
                    AS u(id, name, email, phone, eb, pb)""",
            {
                **columns,
                "clinic_id": clinic_id,
                "dek": data_key.encrypted,
                "kms_key_id": data_key.kms_key_id,
                "request_id": request_id,
            },
        )
    return result
