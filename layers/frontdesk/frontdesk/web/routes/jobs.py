"""Job routes: the status of handed-off work."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from frontdesk.platform import jobs
from frontdesk.platform.db import get_database
from frontdesk.web.auth import Staff
from frontdesk.web.http import ERROR_RESPONSES, Envelope, envelope

router = APIRouter(tags=["jobs"], responses=ERROR_RESPONSES)


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


@router.get(
    "/jobs/{job_id}",
    response_model=Envelope[Job],
    summary="Read a job's status and progress (staff, own clinic)",
)
def read_job(request: Request, staff: Staff, job_id: UUID) -> JSONResponse:
    job = jobs.get_job(get_database(), clinic_id=staff.clinic_id, job_id=job_id)
    return envelope(request, job, operation="getJob", entity="job", affected_ids=[str(job_id)])


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=Envelope[Job],
    summary="Cancel a queued or running job (staff, own clinic); 409 once it has ended",
    responses={409: ERROR_RESPONSES[404]},
)
def cancel_job(request: Request, staff: Staff, job_id: UUID) -> JSONResponse:
    job = jobs.cancel_job(get_database(), clinic_id=staff.clinic_id, job_id=job_id)
    return envelope(request, job, operation="cancelJob", entity="job", affected_ids=[str(job_id)])
