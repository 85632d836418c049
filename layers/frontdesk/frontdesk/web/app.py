"""The HTTP API (FastAPI). Routes parse, authorize, call one domain function, wrap the result."""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any
from uuid import UUID

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from frontdesk import jobs, leads
from frontdesk.config import get_settings
from frontdesk.crypto import get_blind_index, get_cipher
from frontdesk.db import get_database
from frontdesk.idempotency import IdempotencyRequest
from frontdesk.outbox import default_publisher
from frontdesk.web.auth import FormClinic, Staff
from frontdesk.web.http import (
    Envelope,
    ProblemDetails,
    RequestContextMiddleware,
    envelope,
    install_error_handlers,
)

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


class Job(BaseModel):
    id: UUID
    kind: str
    status: str
    progress: int
    progress_message: str | None
    attempts: int
    result: dict[str, Any] | None
    error: str | None
    request_id: str | None
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ProblemDetails, "content": {"application/problem+json": {}}}
    for status in (401, 403, 404, 413, 415, 422, 503)
}


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


def create_app() -> FastAPI:
    app = FastAPI(
        title="Frontdesk API",
        version="0.1.0",
        description="The clinic front office: leads, jobs (and more to come).",
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(RequestContextMiddleware, max_body_bytes=get_settings().max_body_bytes)
    install_error_handlers(app)

    @app.post(
        "/leads",
        status_code=201,
        response_model=Envelope[LeadCreated],
        responses=_ERRORS,
        summary="Create a lead (staff)",
    )
    def create_lead_as_staff(
        request: Request, staff: Staff, lead: leads.LeadIn, idempotency_key: IdempotencyKey = None
    ) -> JSONResponse:
        return _create_lead(request, staff.clinic_id, lead, idempotency_key)

    @app.post(
        "/public/leads",
        status_code=201,
        response_model=Envelope[LeadCreated],
        responses=_ERRORS,
        summary="Submit a lead from a clinic's web form (X-Form-Key)",
    )
    def create_lead_from_form(
        request: Request,
        clinic_id: FormClinic,
        lead: leads.LeadIn,
        idempotency_key: IdempotencyKey = None,
    ) -> JSONResponse:
        return _create_lead(request, clinic_id, lead, idempotency_key)

    @app.get(
        "/leads/{lead_id}",
        response_model=Envelope[leads.LeadOut],
        responses=_ERRORS,
        summary="Read a lead, decrypted (staff, own clinic)",
    )
    def read_lead(request: Request, staff: Staff, lead_id: UUID) -> JSONResponse:
        lead = leads.get_lead(
            get_database(), get_cipher(), clinic_id=staff.clinic_id, lead_id=lead_id
        )
        return envelope(
            request,
            lead.model_dump(by_alias=True),
            operation="getLead",
            entity="lead",
            affected_ids=[str(lead_id)],
        )

    @app.get(
        "/jobs/{job_id}",
        response_model=Envelope[Job],
        responses=_ERRORS,
        summary="Read a job's status and progress (staff, own clinic)",
    )
    def read_job(request: Request, staff: Staff, job_id: UUID) -> JSONResponse:
        job = jobs.get_job(get_database(), clinic_id=staff.clinic_id, job_id=job_id)
        return envelope(request, job, operation="getJob", entity="job", affected_ids=[str(job_id)])

    return app
