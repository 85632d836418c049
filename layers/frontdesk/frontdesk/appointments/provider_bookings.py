"""Provider bookings: a provider's appointments upserted into ours by (clinic, provider,
external id), with the same exclusion constraint and events as bookings made here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import psycopg

from frontdesk.appointments.bookings import (
    DOCTOR_ACTIVE_RULE,
    EXCLUSION_CONSTRAINT,
    event_detail,
    lock_doctors,
    slot_taken,
)
from frontdesk.appointments.doctors import iso_utc
from frontdesk.platform.crypto import BlindIndex, EnvelopeCipher, field_aad
from frontdesk.platform.db import Cursor
from frontdesk.platform.queues import EventType
from frontdesk.platform.unit_of_work import UnitOfWork


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
    uow: UnitOfWork,
    cipher: EnvelopeCipher,
    blind_index: BlindIndex,
    *,
    clinic_id: UUID,
    provider: str,
    items: list[ExternalBooking],
) -> tuple[dict[str, str], dict[str, str]]:
    """Insert new provider bookings and apply changes to known ones, keyed by (clinic,
    provider, external id), in the caller's transaction; write appointment.booked /
    rescheduled / cancelled through `uow`. Returns ({external id: "created" | "updated" |
    "unchanged" | "skipped"}, {external id: why skipped}).

    An older or equal `updated_at` changes nothing. A booking whose doctor maps to none of
    the clinic's doctors (`doctor_provider_ids`: a doctor's id at each provider, set through
    PATCH /doctors/{id}), that is new but already cancelled, whose slot overlaps another
    active appointment of the doctor (the exclusion constraint, under a savepoint per row),
    or that is new or moved for a deactivated doctor (the lifecycle trigger) is skipped,
    never stored twice nor double-booked."""
    latest: dict[str, ExternalBooking] = {}
    for item in items:  # the newest version per external id
        seen = latest.get(item.external_id)
        if seen is None or (item.updated_at or datetime.min.replace(tzinfo=UTC)) >= (
            seen.updated_at or datetime.min.replace(tzinfo=UTC)
        ):
            latest[item.external_id] = item
    if not latest:
        return {}, {}
    cur = uow.cur
    request_id = uow.request_id
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
        """SELECT external_id, doctor_id FROM doctor_provider_ids
           WHERE clinic_id = %(clinic_id)s AND provider = %(provider)s
             AND external_id = ANY(%(doctor_ids)s)""",
        {**key, "doctor_ids": sorted({b.doctor_external_id for b in latest.values()})},
    )
    doctors = {row["external_id"]: row["doctor_id"] for row in cur.fetchall()}
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
    # The doctors' slot-writing locks (after the rows, as a staff reschedule takes them), so
    # a staff booking racing for the same slot cannot deadlock with this upsert.
    lock_doctors(
        cur, [doctors[b.doctor_external_id] for e, b in latest.items() if e not in reasons]
    )
    new = [b for e, b in latest.items() if e not in before and e not in reasons]
    patient_ids = _provider_patients(cur, cipher, blind_index, clinic_id, new, request_id)
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
        except psycopg.errors.CheckViolation as exc:
            # The doctor was deactivated here: a new or moved booking of theirs is not taken
            # (a cancellation still is); staff rebook it with another doctor.
            if exc.diag.constraint_name != DOCTOR_ACTIVE_RULE:
                raise
            outcome[external_id] = "skipped"
            reasons[external_id] = f"doctor {item.doctor_external_id!r} is inactive"
            continue
        if found is None:  # stale (older or equal updatedAt), or completed / no-show here
            outcome[external_id] = "unchanged"
            continue
        row = dict(found)
        state, event = _booking_change(previous, row)
        outcome[external_id] = state
        if event is not None:
            extra = {"source": provider}
            if event is EventType.APPOINTMENT_RESCHEDULED and previous is not None:
                extra["previousStartsAt"] = iso_utc(previous["starts_at"])
            uow.emit(event, event_detail(clinic_id, row, **extra))
    return outcome, reasons


def _booking_change(
    previous: dict[str, Any] | None, row: dict[str, Any]
) -> tuple[str, EventType | None]:
    """The outcome and the event of one upserted booking, from its row before and after."""
    if previous is None:
        return "created", EventType.APPOINTMENT_BOOKED
    fields = ("doctor_id", "starts_at", "ends_at", "status")
    if all(previous[f] == row[f] for f in fields):
        return "unchanged", None
    if row["status"] == "cancelled":
        cancelled = previous["status"] != "cancelled"
        return "updated", EventType.APPOINTMENT_CANCELLED if cancelled else None
    if previous["status"] == "cancelled":
        return "updated", EventType.APPOINTMENT_BOOKED  # booked again at the provider
    return "updated", EventType.APPOINTMENT_RESCHEDULED


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
    patients.create_patient); one lookup and one upsert for the whole group.

    A new patient is keyed by `contact_bidx` (the email's blind index, else the phone's),
    unique per clinic: two workers making the same new person at once insert it once, and
    the second gets the first's row (ON CONFLICT) after waiting for it to commit. Rows are
    inserted in key order, so two workers making several people cannot deadlock."""
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
    wanted: dict[str, bytes] = {}  # external id -> the contact of the patient to make
    columns: dict[str, list[Any]] = {
        c: [] for c in ("id", "name", "email", "phone", "eb", "pb", "contact")
    }
    data_key = cipher.data_key()
    encrypt = cipher.encryptor(data_key)
    for i, booking in enumerate(bookings):
        if found.get(i) is not None:
            result[booking.external_id] = found[i]
            continue
        contact = email_bidx[i] or phone_bidx[i]
        assert contact is not None  # checked before: an email or a phone
        if contact not in columns["contact"]:  # one new patient per person in the group
            patient_id = uuid.uuid4()
            columns["id"].append(patient_id)
            for field in ("name", "email", "phone"):
                aad = field_aad("patients", patient_id, field)
                columns[field].append(encrypt(getattr(booking, field), aad))
            columns["eb"].append(email_bidx[i])
            columns["pb"].append(phone_bidx[i])
            columns["contact"].append(contact)
        wanted[booking.external_id] = contact
    if columns["id"]:
        cur.execute(
            """INSERT INTO patients AS p (id, clinic_id, name_enc, email_enc, phone_enc, dek,
                                          kms_key_id, email_bidx, phone_bidx, contact_bidx,
                                          request_id)
               SELECT u.id, %(clinic_id)s, u.name, u.email, u.phone, %(dek)s, %(kms_key_id)s,
                      u.eb, u.pb, u.contact, %(request_id)s
               FROM unnest(%(id)s::uuid[], %(name)s::bytea[], %(email)s::bytea[],
                           %(phone)s::bytea[], %(eb)s::bytea[], %(pb)s::bytea[],
                           %(contact)s::bytea[])
                    AS u(id, name, email, phone, eb, pb, contact)
               ORDER BY u.contact
               ON CONFLICT (clinic_id, contact_bidx) WHERE contact_bidx IS NOT NULL
               -- a no-op update, so that RETURNING names the row that was there first
               DO UPDATE SET contact_bidx = excluded.contact_bidx
               RETURNING p.id, p.contact_bidx""",
            {
                **columns,
                "clinic_id": clinic_id,
                "dek": data_key.encrypted,
                "kms_key_id": data_key.kms_key_id,
                "request_id": request_id,
            },
        )
        made = {bytes(row["contact_bidx"]): row["id"] for row in cur.fetchall()}
        for external_id, contact in wanted.items():
            result[external_id] = made[contact]
    return result
