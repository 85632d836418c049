"""Lead routes: the public web form and staff."""

from __future__ import annotations

from functools import cache
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from frontdesk.leads import intake as leads
from frontdesk.platform.crypto import get_blind_index, get_cipher
from frontdesk.platform.db import get_database
from frontdesk.platform.idempotency import IdempotencyRequest
from frontdesk.platform.outbox import default_publisher
from frontdesk.web.auth import FormClinic, Staff
from frontdesk.web.http import ERROR_RESPONSES, Envelope, envelope

router = APIRouter(tags=["leads"], responses=ERROR_RESPONSES)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Retries with the same key return the first response and write nothing new",
    ),
]


class LeadCreated(BaseModel):
    id: UUID
    jobId: UUID
    duplicateOf: UUID | None


@cache
def lead_ports() -> leads.Ports:
    return leads.Ports(get_cipher(), get_blind_index(), default_publisher())


def _create_lead(
    request: Request, clinic_id: UUID, lead: leads.LeadIn, idempotency_key: str | None
) -> JSONResponse:
    outcome = leads.create_lead(
        get_database(),
        lead_ports(),
        clinic_id=clinic_id,
        lead=lead,
        request_id=request.state.request_id,
        idempotency=IdempotencyRequest.of(idempotency_key, "createLead", lead.model_dump()),
    )
    return envelope(
        request,
        outcome.data,
        operation="createLead",
        entity="lead",
        affected_ids=[outcome.data["id"]],
        status_code=outcome.status_code,
        headers={"Idempotent-Replayed": "true"} if outcome.replayed else None,
    )


@router.post(
    "/leads",
    status_code=201,
    response_model=Envelope[LeadCreated],
    summary="Create a lead (staff)",
)
def create_lead_as_staff(
    request: Request, staff: Staff, lead: leads.LeadIn, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    return _create_lead(request, staff.clinic_id, lead, idempotency_key)


@router.post(
    "/public/leads",
    status_code=201,
    response_model=Envelope[LeadCreated],
    summary="Submit a lead from a clinic's web form (X-Form-Key)",
)
def create_lead_from_form(
    request: Request,
    clinic_id: FormClinic,
    lead: leads.LeadIn,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    return _create_lead(request, clinic_id, lead, idempotency_key)


@router.get(
    "/leads/{lead_id}",
    response_model=Envelope[leads.LeadOut],
    summary="Read a lead, decrypted (staff, own clinic)",
)
def read_lead(request: Request, staff: Staff, lead_id: UUID) -> JSONResponse:
    lead = leads.get_lead(get_database(), get_cipher(), clinic_id=staff.clinic_id, lead_id=lead_id)
    return envelope(
        request,
        lead.model_dump(by_alias=True),
        operation="getLead",
        entity="lead",
        affected_ids=[str(lead_id)],
    )
