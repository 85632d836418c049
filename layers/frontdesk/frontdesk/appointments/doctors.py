"""Doctors, their working hours and ids at providers, their lifecycle, and the free slots
of a day computed in SQL.

A doctor is changed (`update_doctor`: name, specialty, slot length, working hours, provider
ids) and deactivated (`deactivate_doctor`) in a unit of work that writes `doctor.updated` /
`doctor.deactivated` / `doctor.activated` to the outbox. A deactivated doctor takes no new
booking: the trigger `appointments_enforce_lifecycle` (migration 0022) refuses it in the
database, whoever writes it (staff, a provider's booking, a reschedule onto them). Their
booked appointments are not touched: the deactivation answers the ones still to come, and
`doctor_appointments` lists them (decrypted) for rebooking.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from typing import Annotated, Any
from uuid import UUID

import psycopg
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from frontdesk.errors import Conflict, NotFound
from frontdesk.platform.db import Cursor, Database, transaction
from frontdesk.platform.queues import EventType
from frontdesk.platform.unit_of_work import UnitOfWork
from frontdesk.values import ApiModel, Created, Name, SingleLine, Source, Timestamp

Specialty = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), SingleLine
]
# A doctor's id at a provider (`doctorId` in the provider's bookings), as the provider spells it.
ExternalId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), SingleLine
]
MAX_PROVIDER_IDS = 20
PROVIDER_IDS_UNIQUE = "doctor_provider_ids_unique"


class WorkingHours(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    weekday: int = Field(ge=1, le=7, description="ISO weekday, 1 = Monday")
    start: time = Field(description="local time of the clinic, e.g. 09:00")
    end: time

    @model_validator(mode="after")
    def _ordered(self) -> WorkingHours:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("working hours are the clinic's local times, without a UTC offset")
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class DoctorIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, populate_by_name=True)

    name: Name
    specialty: Specialty | None = None
    slot_minutes: int = Field(default=30, ge=5, le=480, alias="slotMinutes")
    working_hours: list[WorkingHours] = Field(alias="workingHours", max_length=50)
    active: bool = True
    provider_ids: dict[Source, ExternalId] = Field(
        default_factory=dict,
        alias="providerIds",
        max_length=MAX_PROVIDER_IDS,
        description="the doctor's id at each provider: {provider: id}, unique per provider",
    )

    @model_validator(mode="after")
    def _no_overlapping_hours(self) -> DoctorIn:
        _check_hours(self.working_hours)
        return self


def _check_hours(hours: Sequence[WorkingHours]) -> None:
    by_day = sorted((h.weekday, h.start, h.end) for h in hours)
    for (day_a, _, end_a), (day_b, start_b, _) in itertools.pairwise(by_day):
        if day_a == day_b and start_b < end_a:
            raise ValueError("working hours of one weekday overlap")


class DoctorPatch(BaseModel):
    """PATCH body: only the fields given change. `workingHours` replaces the week (booked
    appointments keep their times); `providerIds` is merged: an id sets the doctor's id at
    that provider, null removes it. Whether the doctor takes appointments is changed by
    POST /doctors/{id}/deactivate and /activate, not here."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, populate_by_name=True)

    name: Name | None = None
    specialty: Specialty | None = Field(default=None, description="null clears it")
    slot_minutes: int | None = Field(default=None, ge=5, le=480, alias="slotMinutes")
    working_hours: list[WorkingHours] | None = Field(
        default=None, alias="workingHours", max_length=50
    )
    provider_ids: dict[Source, ExternalId | None] | None = Field(
        default=None, alias="providerIds", max_length=MAX_PROVIDER_IDS
    )

    @model_validator(mode="after")
    def _something_and_consistent(self) -> DoctorPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        required = {
            "name": "name",
            "slot_minutes": "slotMinutes",
            "working_hours": "workingHours",
            "provider_ids": "providerIds",
        }
        for field, alias in required.items():
            if field in self.model_fields_set and getattr(self, field) is None:
                raise ValueError(f"{alias} cannot be null")
        if self.working_hours is not None:
            _check_hours(self.working_hours)
        return self


class HoursOut(ApiModel):
    weekday: int
    start: str
    end: str


class DoctorOut(ApiModel):
    id: UUID
    name: str
    specialty: str | None
    slot_minutes: int
    active: bool
    working_hours: list[HoursOut]
    provider_ids: dict[str, str]
    deactivated_at: Timestamp | None


class Slot(ApiModel):
    starts_at: str
    ends_at: str


def create_doctor(uow: UnitOfWork, *, clinic_id: UUID, doctor: DoctorIn) -> Created:
    """The doctor, their working hours and provider ids, in one statement."""
    doctor_id = uuid.uuid4()
    hours = doctor.working_hours
    _converting_unique(
        uow.cur,
        """WITH doctor AS (
               INSERT INTO doctors (id, clinic_id, name, specialty, slot_minutes, active,
                                    deactivated_at, request_id)
               VALUES (%(id)s, %(clinic_id)s, %(name)s, %(specialty)s, %(slot_minutes)s,
                       %(active)s, CASE WHEN NOT %(active)s THEN now() END, %(request_id)s)
               RETURNING id, clinic_id),
           provider_ids AS (
               INSERT INTO doctor_provider_ids (clinic_id, doctor_id, provider, external_id)
               SELECT doctor.clinic_id, doctor.id, p.provider, p.external_id
               FROM doctor, unnest(%(providers)s::text[], %(external_ids)s::text[])
                                AS p(provider, external_id))
           INSERT INTO doctor_working_hours (clinic_id, doctor_id, weekday, starts_at, ends_at)
           SELECT doctor.clinic_id, doctor.id, h.weekday, h.starts_at, h.ends_at
           FROM doctor,
                unnest(%(weekdays)s::smallint[], %(starts)s::time[], %(ends)s::time[])
                    AS h(weekday, starts_at, ends_at)""",
        {
            "id": doctor_id,
            "clinic_id": clinic_id,
            "name": doctor.name,
            "specialty": doctor.specialty,
            "slot_minutes": doctor.slot_minutes,
            "active": doctor.active,
            "request_id": uow.request_id,
            "weekdays": [h.weekday for h in hours],
            "starts": [h.start for h in hours],
            "ends": [h.end for h in hours],
            "providers": list(doctor.provider_ids),
            "external_ids": list(doctor.provider_ids.values()),
        },
    )
    return Created(id=doctor_id)


def _converting_unique(cur: Cursor, sql: str, params: dict[str, Any]) -> None:
    """Run a write of provider ids; an id another doctor of the clinic holds is a 409."""
    try:
        cur.execute(sql, params)
    except psycopg.errors.UniqueViolation as exc:
        if exc.diag.constraint_name != PROVIDER_IDS_UNIQUE:
            raise
        raise Conflict(
            "a provider id given belongs to another doctor of the clinic"
            " (a provider's id names one doctor)"
        ) from exc


_DOCTOR_SELECT = """
    SELECT d.id, d.name, d.specialty, d.slot_minutes, d.active, d.deactivated_at,
           coalesce(
               (SELECT jsonb_agg(jsonb_build_object(
                           'weekday', h.weekday,
                           'start', to_char(h.starts_at, 'HH24:MI'),
                           'end', to_char(h.ends_at, 'HH24:MI'))
                       ORDER BY h.weekday, h.starts_at)
                FROM doctor_working_hours h WHERE h.doctor_id = d.id),
               '[]'::jsonb) AS working_hours,
           coalesce(
               (SELECT jsonb_object_agg(p.provider, p.external_id)
                FROM doctor_provider_ids p WHERE p.doctor_id = d.id),
               '{}'::jsonb) AS provider_ids
    FROM doctors d"""


def list_doctors(db: Database, *, clinic_id: UUID) -> list[DoctorOut]:
    with transaction(db) as cur:
        cur.execute(
            f"{_DOCTOR_SELECT} WHERE d.clinic_id = %(clinic_id)s ORDER BY d.name, d.id LIMIT 1000",
            {"clinic_id": clinic_id},
        )
        return [DoctorOut.model_validate(row) for row in cur.fetchall()]


def get_doctor(db: Database, *, clinic_id: UUID, doctor_id: UUID) -> DoctorOut:
    with transaction(db) as cur:
        return _read_doctor(cur, clinic_id, doctor_id)


def _read_doctor(cur: Cursor, clinic_id: UUID, doctor_id: UUID) -> DoctorOut:
    cur.execute(
        f"{_DOCTOR_SELECT} WHERE d.clinic_id = %(clinic_id)s AND d.id = %(id)s",
        {"clinic_id": clinic_id, "id": doctor_id},
    )
    row = cur.fetchone()
    if row is None:
        raise NotFound(f"doctor {doctor_id} not found")
    return DoctorOut.model_validate(row)


# ---------------------------------------------------------------- lifecycle


def update_doctor(
    uow: UnitOfWork, *, clinic_id: UUID, doctor_id: UUID, patch: DoctorPatch
) -> DoctorOut:
    """Apply the fields given, in `uow`; NotFound for another clinic's doctor, Conflict for a
    provider id another doctor holds. A new name is also the name snapshot of the doctor's
    appointments still to come (past ones keep the name they were held under)."""
    given = patch.model_fields_set
    cur = uow.cur
    cur.execute(
        """UPDATE doctors
           SET name = CASE WHEN %(set_name)s THEN %(name)s ELSE name END,
               specialty = CASE WHEN %(set_specialty)s THEN %(specialty)s ELSE specialty END,
               slot_minutes = coalesce(%(slot_minutes)s, slot_minutes),
               updated_at = now()
           WHERE id = %(id)s AND clinic_id = %(clinic_id)s
           RETURNING id""",
        {
            "id": doctor_id,
            "clinic_id": clinic_id,
            "set_name": "name" in given,
            "name": patch.name,
            "set_specialty": "specialty" in given,
            "specialty": patch.specialty,
            "slot_minutes": patch.slot_minutes,
        },
    )
    if cur.fetchone() is None:
        raise NotFound(f"doctor {doctor_id} not found")
    key = {"id": doctor_id, "clinic_id": clinic_id}
    if patch.name is not None:
        cur.execute(
            """UPDATE appointments SET doctor_name = %(name)s, updated_at = now()
               WHERE doctor_id = %(id)s AND clinic_id = %(clinic_id)s AND status = 'booked'
                 AND starts_at > now() AND doctor_name <> %(name)s""",
            {**key, "name": patch.name},
        )
    if patch.working_hours is not None:
        hours = patch.working_hours
        cur.execute(
            """WITH gone AS (
                   DELETE FROM doctor_working_hours
                   WHERE doctor_id = %(id)s AND clinic_id = %(clinic_id)s)
               INSERT INTO doctor_working_hours (clinic_id, doctor_id, weekday, starts_at,
                                                 ends_at)
               SELECT %(clinic_id)s, %(id)s, h.weekday, h.starts_at, h.ends_at
               FROM unnest(%(weekdays)s::smallint[], %(starts)s::time[], %(ends)s::time[])
                    AS h(weekday, starts_at, ends_at)""",
            {
                **key,
                "weekdays": [h.weekday for h in hours],
                "starts": [h.start for h in hours],
                "ends": [h.end for h in hours],
            },
        )
    if patch.provider_ids is not None:
        _set_provider_ids(cur, clinic_id, doctor_id, patch.provider_ids)
    changed = sorted(patch.model_dump(by_alias=True, include=given))
    uow.emit(
        EventType.DOCTOR_UPDATED,
        {"doctorId": str(doctor_id), "clinicId": str(clinic_id), "changed": changed},
    )
    return _read_doctor(cur, clinic_id, doctor_id)


def _set_provider_ids(
    cur: Cursor, clinic_id: UUID, doctor_id: UUID, ids: dict[str, str | None]
) -> None:
    """Merge {provider: id or None}: removals first (so an id can move between providers'
    keys of one doctor), then the upsert, one statement each."""
    removed = sorted(p for p, v in ids.items() if v is None)
    kept = {p: v for p, v in ids.items() if v is not None}
    key = {"id": doctor_id, "clinic_id": clinic_id}
    if removed:
        cur.execute(
            """DELETE FROM doctor_provider_ids
               WHERE doctor_id = %(id)s AND clinic_id = %(clinic_id)s
                 AND provider = ANY(%(providers)s)""",
            {**key, "providers": removed},
        )
    if kept:
        _converting_unique(
            cur,
            """INSERT INTO doctor_provider_ids (clinic_id, doctor_id, provider, external_id)
               SELECT %(clinic_id)s, %(id)s, p.provider, p.external_id
               FROM unnest(%(providers)s::text[], %(external_ids)s::text[])
                    AS p(provider, external_id)
               ORDER BY p.provider
               ON CONFLICT (doctor_id, provider)
               DO UPDATE SET external_id = excluded.external_id""",
            {**key, "providers": list(kept), "external_ids": list(kept.values())},
        )


class RebookItem(ApiModel):
    """An appointment of a deactivated doctor still to come: ids and times, no PII (the
    answer is kept under the Idempotency-Key); GET /doctors/{id}/appointments decrypts."""

    id: UUID
    patient_id: UUID
    starts_at: str
    ends_at: str


class DoctorDeactivated(ApiModel):
    doctor: DoctorOut
    upcoming_appointments: list[RebookItem] = Field(
        description="booked appointments still to come, to rebook with another doctor"
    )


MAX_REBOOK_LIST = 1000


def deactivate_doctor(uow: UnitOfWork, *, clinic_id: UUID, doctor_id: UUID) -> DoctorDeactivated:
    """The doctor takes no new booking from the commit on (the database refuses it); their
    booked appointments still to come are answered, untouched. Conflict when already
    inactive. The UPDATE waits for bookings of the doctor being written now (they hold the
    doctor's row FOR SHARE), so the list includes them."""
    cur = uow.cur
    _set_active(cur, clinic_id, doctor_id, active=False)
    cur.execute(
        """SELECT id, patient_id, starts_at, ends_at FROM appointments
           WHERE doctor_id = %(id)s AND clinic_id = %(clinic_id)s AND status = 'booked'
             AND starts_at > now()
           ORDER BY starts_at, id LIMIT %(limit)s""",
        {"id": doctor_id, "clinic_id": clinic_id, "limit": MAX_REBOOK_LIST},
    )
    upcoming = [
        RebookItem(
            id=row["id"],
            patient_id=row["patient_id"],
            starts_at=iso_utc(row["starts_at"]),
            ends_at=iso_utc(row["ends_at"]),
        )
        for row in cur.fetchall()
    ]
    uow.emit(
        EventType.DOCTOR_DEACTIVATED,
        {
            "doctorId": str(doctor_id),
            "clinicId": str(clinic_id),
            "upcomingAppointments": len(upcoming),
        },
    )
    return DoctorDeactivated(
        doctor=_read_doctor(cur, clinic_id, doctor_id), upcoming_appointments=upcoming
    )


def activate_doctor(uow: UnitOfWork, *, clinic_id: UUID, doctor_id: UUID) -> DoctorOut:
    """The doctor takes bookings again. Conflict when already active."""
    cur = uow.cur
    _set_active(cur, clinic_id, doctor_id, active=True)
    uow.emit(EventType.DOCTOR_ACTIVATED, {"doctorId": str(doctor_id), "clinicId": str(clinic_id)})
    return _read_doctor(cur, clinic_id, doctor_id)


def _set_active(cur: Cursor, clinic_id: UUID, doctor_id: UUID, *, active: bool) -> None:
    cur.execute(
        """WITH before AS (
               SELECT id, active FROM doctors
               WHERE id = %(id)s AND clinic_id = %(clinic_id)s),
           changed AS (
               UPDATE doctors d
               SET active = %(active)s, updated_at = now(),
                   deactivated_at = CASE WHEN %(active)s THEN NULL ELSE now() END
               FROM before
               WHERE d.id = before.id AND d.active <> %(active)s
               RETURNING d.id)
           SELECT before.active, EXISTS (SELECT 1 FROM changed) AS changed FROM before""",
        {"id": doctor_id, "clinic_id": clinic_id, "active": active},
    )
    row = cur.fetchone()
    if row is None:
        raise NotFound(f"doctor {doctor_id} not found")
    if not row["changed"]:
        state = "active" if active else "inactive"
        raise Conflict(f"doctor {doctor_id} is already {state}")


def availability(db: Database, *, clinic_id: UUID, doctor_id: UUID, day: date) -> list[Slot]:
    """The doctor's free slots on a day of the clinic's calendar: the slot grid of that
    weekday's working hours (generate_series), minus slots overlapping an active
    appointment, minus slots already begun. One statement; NotFound for other clinics'."""
    with transaction(db) as cur:
        cur.execute(
            """WITH doctor AS (
                   SELECT d.id, d.slot_minutes, d.active, c.timezone,
                          make_interval(mins => d.slot_minutes) AS step
                   FROM doctors d JOIN clinics c ON c.id = d.clinic_id
                   WHERE d.id = %(doctor_id)s AND d.clinic_id = %(clinic_id)s),
               grid AS (
                   SELECT (local_start AT TIME ZONE doctor.timezone) AS starts_at,
                          ((local_start + doctor.step) AT TIME ZONE doctor.timezone) AS ends_at
                   FROM doctor
                   JOIN doctor_working_hours h
                     ON h.doctor_id = doctor.id AND h.weekday = extract(isodow FROM %(day)s::date)
                   CROSS JOIN LATERAL generate_series(
                       %(day)s::date + h.starts_at,
                       %(day)s::date + h.ends_at - doctor.step,
                       doctor.step) AS local_start
                   WHERE doctor.active),
               free AS (
                   SELECT grid.starts_at, grid.ends_at FROM grid
                   WHERE grid.starts_at > now()
                     AND NOT EXISTS (
                         SELECT 1 FROM appointments a
                         WHERE a.doctor_id = %(doctor_id)s AND a.status <> 'cancelled'
                           AND tstzrange(a.starts_at, a.ends_at)
                               && tstzrange(grid.starts_at, grid.ends_at)))
               SELECT doctor.id, free.starts_at, free.ends_at
               FROM doctor LEFT JOIN free ON true
               ORDER BY free.starts_at""",
            {"doctor_id": doctor_id, "clinic_id": clinic_id, "day": day},
        )
        rows = cur.fetchall()
    if not rows:
        raise NotFound(f"doctor {doctor_id} not found")
    return [
        Slot(starts_at=iso_utc(row["starts_at"]), ends_at=iso_utc(row["ends_at"]))
        for row in rows
        if row["starts_at"] is not None
    ]


def iso_utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
