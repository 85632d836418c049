"""Lead routes: the public web form and staff (the inbox: frontdesk.leads.inbox)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, ValidationError

from frontdesk.errors import InvalidInput
from frontdesk.leads import inbox, intake
from frontdesk.leads.inbox import InboxFilters, LeadChange, LeadChanged, LeadPage, StaffId, Status
from frontdesk.leads.intake import LeadCreated, LeadIn, LeadOut
from frontdesk.values import Email, Phone, Source
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


@router.get(
    "/leads",
    summary="The lead inbox: newest first, filtered, one page per cursor; exact search by"
    " email or phone (blind index)",
)
def list_leads(
    staff: Staff,
    web: Web,
    status: Status | None = None,
    source: Source | None = None,
    assigned_to: Annotated[StaffId | None, Query(alias="assignedTo")] = None,
    created_from: Annotated[
        AwareDatetime | None, Query(alias="createdFrom", description="inclusive")
    ] = None,
    created_to: Annotated[
        AwareDatetime | None, Query(alias="createdTo", description="exclusive")
    ] = None,
    email: Annotated[Email | None, Query(description="exact (any case)")] = None,
    phone: Annotated[Phone | None, Query(description="exact (digits and a leading +)")] = None,
    cursor: Annotated[
        str | None, Query(max_length=512, description="nextCursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=inbox.MAX_LIMIT)] = inbox.DEFAULT_LIMIT,
) -> Envelope[LeadPage]:
    try:
        filters = InboxFilters(
            status=status,
            source=source,
            assigned_to=assigned_to,
            created_from=created_from,
            created_to=created_to,
            email=email,
            phone=phone,
        )
    except ValidationError as exc:  # the messages only: the values may be PII
        raise InvalidInput("; ".join(e["msg"] for e in exc.errors())) from exc
    services = web.services
    page = inbox.list_leads(
        services.reader,  # a list: the replica when there is one
        services.cipher,
        services.blind_index,
        clinic_id=staff.clinic_id,
        filters=filters,
        cursor=cursor,
        limit=limit,
    )
    return web.ok(page, "listLeads", "lead", [lead.id for lead in page.items])


@router.patch(
    "/leads/{lead_id}",
    summary="Move a lead on (new -> contacted -> booked | lost; 409 otherwise), assign it,"
    " write staff notes",
    responses={409: ERROR_RESPONSES[404]},
)
def change_lead(
    staff: Staff, lead_id: UUID, change: LeadChange, web: Write
) -> Envelope[LeadChanged]:
    services = web.services
    if "staffNotes" in change.model_fields_set:
        inbox.load_lead_key(
            services.database, services.cipher, clinic_id=staff.clinic_id, lead_id=lead_id
        )
    changed = web.run(
        LeadChanged,
        f"changeLead:{lead_id}",
        change.model_dump(mode="json", exclude_unset=True),
        staff.clinic_id,
        lambda uow: inbox.change_lead(
            uow,
            services.cipher,
            clinic_id=staff.clinic_id,
            lead_id=lead_id,
            change=change,
            changed_by=staff.subject,
        ),
    )
    return web.ok(changed, "changeLead", "lead", [lead_id])
