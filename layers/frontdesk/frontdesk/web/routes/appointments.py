"""Appointment routes (staff, own clinic): doctors and their lifecycle, patients, bookings
and their lifecycle, availability."""

from __future__ import annotations

from datetime import date
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import AwareDatetime

from frontdesk.appointments import bookings, doctors, patients
from frontdesk.appointments.bookings import (
    AppointmentChange,
    AppointmentDetail,
    AppointmentOut,
    Booking,
    BookingIn,
)
from frontdesk.appointments.doctors import (
    DoctorDeactivated,
    DoctorIn,
    DoctorOut,
    DoctorPatch,
    Slot,
)
from frontdesk.appointments.patients import PatientIn, PatientOut
from frontdesk.values import Created
from frontdesk.web.auth import GuardedRoute, Staff
from frontdesk.web.context import Web, Write
from frontdesk.web.http import ERROR_RESPONSES, Envelope

router = APIRouter(
    route_class=GuardedRoute,
    tags=["appointments"],
    responses={**ERROR_RESPONSES, 409: ERROR_RESPONSES[404]},
)


@router.post("/doctors", status_code=201, summary="Add a doctor")
def create_doctor(staff: Staff, doctor: DoctorIn, web: Write) -> Envelope[Created]:
    created = web.run(
        Created,
        "createDoctor",
        doctor.model_dump(mode="json"),
        staff.clinic_id,
        lambda uow: doctors.create_doctor(uow, clinic_id=staff.clinic_id, doctor=doctor),
    )
    return web.ok(created, "createDoctor", "doctor", [created.id])


@router.get("/doctors", summary="List the clinic's doctors with their working hours")
def list_doctors(staff: Staff, web: Web) -> Envelope[list[DoctorOut]]:
    # A list: read from the replica when there is one (it may lag by its replication delay).
    found = doctors.list_doctors(web.services.reader, clinic_id=staff.clinic_id)
    return web.ok(found, "listDoctors", "doctor", [d.id for d in found])


@router.get("/doctors/{doctor_id}", summary="A doctor: hours, provider ids, whether active")
def read_doctor(staff: Staff, doctor_id: UUID, web: Web) -> Envelope[DoctorOut]:
    found = doctors.get_doctor(
        web.services.database, clinic_id=staff.clinic_id, doctor_id=doctor_id
    )
    return web.ok(found, "getDoctor", "doctor", [doctor_id])


@router.patch(
    "/doctors/{doctor_id}",
    summary="Change a doctor's name, specialty, slot length, working hours or provider ids",
)
def update_doctor(
    staff: Staff, doctor_id: UUID, patch: DoctorPatch, web: Write
) -> Envelope[DoctorOut]:
    updated = web.run(
        DoctorOut,
        f"updateDoctor:{doctor_id}",
        patch.model_dump(mode="json", by_alias=True, exclude_unset=True),
        staff.clinic_id,
        lambda uow: doctors.update_doctor(
            uow, clinic_id=staff.clinic_id, doctor_id=doctor_id, patch=patch
        ),
    )
    return web.ok(updated, "updateDoctor", "doctor", [doctor_id])


@router.post(
    "/doctors/{doctor_id}/deactivate",
    summary="The doctor takes no new bookings; answers their appointments still to come",
)
def deactivate_doctor(staff: Staff, doctor_id: UUID, web: Write) -> Envelope[DoctorDeactivated]:
    done = web.run(
        DoctorDeactivated,
        f"deactivateDoctor:{doctor_id}",
        {},
        staff.clinic_id,
        lambda uow: doctors.deactivate_doctor(uow, clinic_id=staff.clinic_id, doctor_id=doctor_id),
    )
    affected = [doctor_id, *(a.id for a in done.upcoming_appointments)]
    return web.ok(done, "deactivateDoctor", "doctor", affected)


@router.post("/doctors/{doctor_id}/activate", summary="The doctor takes bookings again")
def activate_doctor(staff: Staff, doctor_id: UUID, web: Write) -> Envelope[DoctorOut]:
    done = web.run(
        DoctorOut,
        f"activateDoctor:{doctor_id}",
        {},
        staff.clinic_id,
        lambda uow: doctors.activate_doctor(uow, clinic_id=staff.clinic_id, doctor_id=doctor_id),
    )
    return web.ok(done, "activateDoctor", "doctor", [doctor_id])


@router.get(
    "/doctors/{doctor_id}/appointments",
    summary="A doctor's appointments: still to come and booked (to rebook), or past ones",
)
def doctor_appointments(
    staff: Staff,
    doctor_id: UUID,
    web: Web,
    upcoming: Annotated[
        bool,
        Query(description="true: booked and not begun, soonest first; false: begun, latest first"),
    ] = True,
) -> Envelope[list[AppointmentOut]]:
    services = web.services
    found = bookings.doctor_appointments(
        services.database,
        services.cipher,
        clinic_id=staff.clinic_id,
        doctor_id=doctor_id,
        upcoming=upcoming,
    )
    return web.ok(found, "listDoctorAppointments", "appointment", [a.id for a in found])


@router.get(
    "/doctors/{doctor_id}/availability",
    summary="Free slots of a doctor on a day of the clinic's calendar",
)
def doctor_availability(
    staff: Staff, doctor_id: UUID, day: Annotated[date, Query(alias="date")], web: Web
) -> Envelope[list[Slot]]:
    slots = doctors.availability(
        web.services.database, clinic_id=staff.clinic_id, doctor_id=doctor_id, day=day
    )
    return web.ok(slots, "getAvailability", "doctor", [doctor_id])


@router.post("/patients", status_code=201, summary="Add a patient")
def create_patient(staff: Staff, patient: PatientIn, web: Write) -> Envelope[Created]:
    services = web.services
    created = web.run(
        Created,
        "createPatient",
        patient.model_dump(),
        staff.clinic_id,
        lambda uow: patients.create_patient(
            uow, services.cipher, services.blind_index, clinic_id=staff.clinic_id, patient=patient
        ),
    )
    return web.ok(created, "createPatient", "patient", [created.id])


@router.get("/patients/{patient_id}", summary="Web a patient, decrypted")
def read_patient(staff: Staff, patient_id: UUID, web: Web) -> Envelope[PatientOut]:
    services = web.services
    patient = patients.get_patient(
        services.database, services.cipher, clinic_id=staff.clinic_id, patient_id=patient_id
    )
    return web.ok(patient, "getPatient", "patient", [patient_id])


@router.post(
    "/appointments",
    status_code=201,
    summary="Book a slot (409 with the conflicting slot when it is taken)",
)
def book_appointment(staff: Staff, booking: BookingIn, web: Write) -> Envelope[Booking]:
    services = web.services
    booked = web.run(
        Booking,
        "bookAppointment",
        booking.model_dump(mode="json"),
        staff.clinic_id,
        lambda uow: bookings.book(
            uow, services.cipher, services.blind_index, clinic_id=staff.clinic_id, booking=booking
        ),
    )
    return web.ok(booked, "bookAppointment", "appointment", [booked.id])


@router.get(
    "/appointments", summary="Appointments starting in [from, to) (default: the next 7 days)"
)
def list_appointments(
    staff: Staff,
    web: Web,
    doctor: UUID | None = None,
    starts_from: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    starts_to: Annotated[AwareDatetime | None, Query(alias="to")] = None,
) -> Envelope[list[AppointmentOut]]:
    services = web.services
    found = bookings.list_appointments(
        services.reader,  # a list: the replica when there is one
        services.cipher,
        clinic_id=staff.clinic_id,
        doctor_id=doctor,
        starts_from=starts_from,
        starts_to=starts_to,
    )
    return web.ok(found, "listAppointments", "appointment", [a.id for a in found])


@router.get("/appointments/{appointment_id}", summary="One appointment, decrypted")
def read_appointment(staff: Staff, appointment_id: UUID, web: Web) -> Envelope[AppointmentDetail]:
    services = web.services
    found = bookings.get_appointment(
        services.database, services.cipher, clinic_id=staff.clinic_id, appointment_id=appointment_id
    )
    return web.ok(found, "getAppointment", "appointment", [appointment_id])


@router.patch(
    "/appointments/{appointment_id}",
    summary=(
        "Reschedule ({startsAt}), cancel ({status: cancelled}) or record the outcome"
        " ({status: completed | no_show}, from the start on) of an appointment"
    ),
)
def change_appointment(
    staff: Staff, appointment_id: UUID, change: AppointmentChange, web: Write
) -> Envelope[Booking]:
    operation = bookings.operation_of(change)
    changed = web.run(
        Booking,
        f"{operation}:{appointment_id}",
        change.model_dump(mode="json", exclude_none=True),
        staff.clinic_id,
        lambda uow: bookings.change(
            uow, clinic_id=staff.clinic_id, appointment_id=appointment_id, change=change
        ),
    )
    return web.ok(changed, operation, "appointment", [changed.id])
