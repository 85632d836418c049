"""Appointment routes (staff, own clinic): doctors, patients, bookings, availability."""

from __future__ import annotations

from datetime import date
from functools import cache
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel

from frontdesk.appointments import bookings as appointments
from frontdesk.appointments import doctors, patients
from frontdesk.platform.crypto import get_blind_index, get_cipher
from frontdesk.platform.db import get_database
from frontdesk.platform.idempotency import IdempotencyRequest, Outcome
from frontdesk.platform.outbox import default_publisher
from frontdesk.web.auth import Staff
from frontdesk.web.http import ERROR_RESPONSES, Envelope, envelope

router = APIRouter(tags=["appointments"], responses={**ERROR_RESPONSES, 409: ERROR_RESPONSES[404]})

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Retries with the same key return the first response and write nothing new",
    ),
]


class Created(BaseModel):
    id: UUID


class Booked(BaseModel):
    id: UUID
    doctorId: UUID
    patientId: UUID
    startsAt: str
    endsAt: str
    status: str
    source: str
    doctorName: str
    previousStartsAt: str | None = None


@cache
def ports() -> appointments.Ports:
    return appointments.Ports(get_cipher(), get_blind_index(), default_publisher())


def _answer(request: Request, outcome: Outcome, *, operation: str, entity: str) -> JSONResponse:
    return envelope(
        request,
        outcome.data,
        operation=operation,
        entity=entity,
        affected_ids=[outcome.data["id"]],
        status_code=outcome.status_code,
        headers={"Idempotent-Replayed": "true"} if outcome.replayed else None,
    )


@router.post("/doctors", status_code=201, response_model=Envelope[Created], summary="Add a doctor")
def create_doctor(
    request: Request, staff: Staff, doctor: doctors.DoctorIn, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    outcome = doctors.create_doctor(
        get_database(),
        clinic_id=staff.clinic_id,
        doctor=doctor,
        request_id=request.state.request_id,
        idempotency=IdempotencyRequest.of(
            idempotency_key, "createDoctor", doctor.model_dump(mode="json")
        ),
    )
    return _answer(request, outcome, operation="createDoctor", entity="doctor")


@router.get(
    "/doctors",
    response_model=Envelope[list[doctors.DoctorOut]],
    summary="List the clinic's doctors with their working hours",
)
def list_doctors(request: Request, staff: Staff) -> JSONResponse:
    found = doctors.list_doctors(get_database(), clinic_id=staff.clinic_id)
    return envelope(
        request,
        [d.model_dump(by_alias=True) for d in found],
        operation="listDoctors",
        entity="doctor",
        affected_ids=[str(d.id) for d in found],
    )


@router.get(
    "/doctors/{doctor_id}/availability",
    response_model=Envelope[list[doctors.Slot]],
    summary="Free slots of a doctor on a day of the clinic's calendar",
)
def doctor_availability(
    request: Request, staff: Staff, doctor_id: UUID, day: Annotated[date, Query(alias="date")]
) -> JSONResponse:
    slots = doctors.availability(
        get_database(), clinic_id=staff.clinic_id, doctor_id=doctor_id, day=day
    )
    return envelope(
        request,
        [s.model_dump(by_alias=True) for s in slots],
        operation="getAvailability",
        entity="doctor",
        affected_ids=[str(doctor_id)],
    )


@router.post(
    "/patients", status_code=201, response_model=Envelope[Created], summary="Add a patient"
)
def create_patient(
    request: Request,
    staff: Staff,
    patient: patients.PatientIn,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    outcome = patients.create_patient(
        get_database(),
        get_cipher(),
        get_blind_index(),
        clinic_id=staff.clinic_id,
        patient=patient,
        request_id=request.state.request_id,
        idempotency=IdempotencyRequest.of(idempotency_key, "createPatient", patient.model_dump()),
    )
    return _answer(request, outcome, operation="createPatient", entity="patient")


@router.get(
    "/patients/{patient_id}",
    response_model=Envelope[patients.PatientOut],
    summary="Read a patient, decrypted",
)
def read_patient(request: Request, staff: Staff, patient_id: UUID) -> JSONResponse:
    patient = patients.get_patient(
        get_database(), get_cipher(), clinic_id=staff.clinic_id, patient_id=patient_id
    )
    return envelope(
        request,
        patient.model_dump(by_alias=True),
        operation="getPatient",
        entity="patient",
        affected_ids=[str(patient_id)],
    )


@router.post(
    "/appointments",
    status_code=201,
    response_model=Envelope[Booked],
    summary="Book a slot (409 with the conflicting slot when it is taken)",
)
def book_appointment(
    request: Request,
    staff: Staff,
    booking: appointments.BookingIn,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    outcome = appointments.book(
        get_database(),
        ports(),
        clinic_id=staff.clinic_id,
        booking=booking,
        request_id=request.state.request_id,
        idempotency=IdempotencyRequest.of(
            idempotency_key, "bookAppointment", booking.model_dump(mode="json")
        ),
    )
    return _answer(request, outcome, operation="bookAppointment", entity="appointment")


@router.get(
    "/appointments",
    response_model=Envelope[list[appointments.AppointmentOut]],
    summary="Appointments starting in [from, to) (default: the next 7 days)",
)
def list_appointments(
    request: Request,
    staff: Staff,
    doctor: UUID | None = None,
    starts_from: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    starts_to: Annotated[AwareDatetime | None, Query(alias="to")] = None,
) -> JSONResponse:
    found = appointments.list_appointments(
        get_database(),
        get_cipher(),
        clinic_id=staff.clinic_id,
        doctor_id=doctor,
        starts_from=starts_from,
        starts_to=starts_to,
    )
    return envelope(
        request,
        [a.model_dump(by_alias=True) for a in found],
        operation="listAppointments",
        entity="appointment",
        affected_ids=[str(a.id) for a in found],
    )


@router.patch(
    "/appointments/{appointment_id}",
    response_model=Envelope[Booked],
    summary="Reschedule ({startsAt}) or cancel ({status: cancelled}) an appointment",
)
def change_appointment(
    request: Request,
    staff: Staff,
    appointment_id: UUID,
    change: appointments.AppointmentChange,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    operation = "cancelAppointment" if change.status else "rescheduleAppointment"
    outcome = appointments.change(
        get_database(),
        ports(),
        clinic_id=staff.clinic_id,
        appointment_id=appointment_id,
        change=change,
        request_id=request.state.request_id,
        idempotency=IdempotencyRequest.of(
            idempotency_key,
            f"{operation}:{appointment_id}",
            change.model_dump(mode="json", exclude_none=True),
        ),
    )
    return _answer(request, outcome, operation=operation, entity="appointment")
