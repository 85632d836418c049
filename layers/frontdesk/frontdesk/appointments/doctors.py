"""Doctors, their working hours, and the free slots of a day computed in SQL."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, date, datetime, time
from typing import Annotated
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from frontdesk.errors import NotFound
from frontdesk.platform.db import Database, transaction
from frontdesk.platform.unit_of_work import UnitOfWork
from frontdesk.values import ApiModel, Created, Name, SingleLine

Specialty = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), SingleLine
]


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

    @model_validator(mode="after")
    def _no_overlapping_hours(self) -> DoctorIn:
        by_day = sorted((h.weekday, h.start, h.end) for h in self.working_hours)
        for (day_a, _, end_a), (day_b, start_b, _) in itertools.pairwise(by_day):
            if day_a == day_b and start_b < end_a:
                raise ValueError("working hours of one weekday overlap")
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


class Slot(ApiModel):
    starts_at: str
    ends_at: str


def create_doctor(uow: UnitOfWork, *, clinic_id: UUID, doctor: DoctorIn) -> Created:
    """The doctor and their working hours, in one statement."""
    doctor_id = uuid.uuid4()
    hours = doctor.working_hours
    uow.cur.execute(
        """WITH doctor AS (
               INSERT INTO doctors (id, clinic_id, name, specialty, slot_minutes, active,
                                    request_id)
               VALUES (%(id)s, %(clinic_id)s, %(name)s, %(specialty)s, %(slot_minutes)s,
                       %(active)s, %(request_id)s)
               RETURNING id, clinic_id)
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
        },
    )
    return Created(id=doctor_id)


_DOCTOR_SELECT = """
    SELECT d.id, d.name, d.specialty, d.slot_minutes, d.active,
           coalesce(
               (SELECT jsonb_agg(jsonb_build_object(
                           'weekday', h.weekday,
                           'start', to_char(h.starts_at, 'HH24:MI'),
                           'end', to_char(h.ends_at, 'HH24:MI'))
                       ORDER BY h.weekday, h.starts_at)
                FROM doctor_working_hours h WHERE h.doctor_id = d.id),
               '[]'::jsonb) AS working_hours
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
        cur.execute(
            f"{_DOCTOR_SELECT} WHERE d.clinic_id = %(clinic_id)s AND d.id = %(id)s",
            {"clinic_id": clinic_id, "id": doctor_id},
        )
        row = cur.fetchone()
    if row is None:
        raise NotFound(f"doctor {doctor_id} not found")
    return DoctorOut.model_validate(row)


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
