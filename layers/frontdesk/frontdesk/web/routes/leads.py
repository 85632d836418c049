"""Lead routes: the public web form and staff."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from frontdesk.leads import intake
from frontdesk.leads.intake import LeadCreated, LeadIn, LeadOut
from frontdesk.web.auth import FormClinic, GuardedRoute, Staff
from frontdesk.web.context import Web, Write, WriteContext
from frontdesk.web.http import ERROR_RESPONSES, Envelope

router = APIRouter(route_class=GuardedRoute, tags=["leads"], responses=ERROR_RESPONSES)


def _create(web: WriteContext, clinic_id: UUID, lead: LeadIn) -> Envelope[LeadCreated]:
    services = web.services
    created = web.run(
        LeadCreated,
        "createLead",
        lead.model_dump(),
        clinic_id,
        lambda uow: intake.create_lead(
            uow, services.cipher, services.blind_index, clinic_id=clinic_id, lead=lead
        ),
    )
    return web.ok(created, "createLead", "lead", [created.id])


@router.post("/leads", status_code=201, summary="Create a lead (staff)")
def create_lead_as_staff(staff: Staff, lead: LeadIn, web: Write) -> Envelope[LeadCreated]:
    return _create(web, staff.clinic_id, lead)


@router.post(
    "/public/leads",
    status_code=201,
    summary="Submit a lead from a clinic's web form (X-Form-Key)",
)
def create_lead_from_form(clinic_id: FormClinic, lead: LeadIn, web: Write) -> Envelope[LeadCreated]:
    return _create(web, clinic_id, lead)


@router.get("/leads/{lead_id}", summary="Web a lead, decrypted (staff, own clinic)")
def read_lead(staff: Staff, lead_id: UUID, web: Web) -> Envelope[LeadOut]:
    services = web.services
    lead = intake.get_lead(
        services.database, services.cipher, clinic_id=staff.clinic_id, lead_id=lead_id
    )
    return web.ok(lead, "getLead", "lead", [lead_id])
