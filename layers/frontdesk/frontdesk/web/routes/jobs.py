"""Job routes: the status of handed-off work."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from frontdesk.platform import jobs
from frontdesk.platform.jobs import JobOut
from frontdesk.web.auth import GuardedRoute, Staff
from frontdesk.web.context import Web, Write
from frontdesk.web.http import ERROR_RESPONSES, Envelope

router = APIRouter(route_class=GuardedRoute, tags=["jobs"], responses=ERROR_RESPONSES)


@router.get("/jobs/{job_id}", summary="Read a job's status and progress (staff, own clinic)")
def read_job(staff: Staff, job_id: UUID, web: Web) -> Envelope[JobOut]:
    job = jobs.get_job(web.services.database, clinic_id=staff.clinic_id, job_id=job_id)
    return web.ok(job, "getJob", "job", [job_id])


@router.post(
    "/jobs/{job_id}/cancel",
    summary="Cancel a queued or running job (staff, own clinic); 409 once it has ended",
    responses={409: ERROR_RESPONSES[404]},
)
def cancel_job(staff: Staff, job_id: UUID, web: Write) -> Envelope[JobOut]:
    job = web.run(
        JobOut,
        f"cancelJob:{job_id}",
        None,
        staff.clinic_id,
        lambda uow: jobs.cancel_job(uow.cur, clinic_id=staff.clinic_id, job_id=job_id),
    )
    return web.ok(job, "cancelJob", "job", [job_id])
