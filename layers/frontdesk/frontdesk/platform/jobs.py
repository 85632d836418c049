"""The jobs table: one row per piece of handed-off work, readable by the client."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb
from pydantic import BaseModel

from frontdesk.errors import Conflict, NotFound
from frontdesk.platform.db import Cursor, Database, transaction
from frontdesk.platform.queues import JobKind

TERMINAL = ("succeeded", "failed", "cancelled", "dead")


class JobOut(BaseModel):
    """A job as its clinic sees it (GET /jobs/{id})."""

    id: UUID
    kind: str
    status: str
    progress: int
    progress_message: str | None
    attempts: int
    result: dict[str, Any] | None
    error: str | None
    request_id: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def create_job(
    cur: Cursor, *, clinic_id: UUID, kind: JobKind, payload: dict[str, Any], request_id: str | None
) -> UUID:
    """A queued job; its message goes with it (UnitOfWork.start_job writes both)."""
    job_id = uuid.uuid4()
    cur.execute(
        """INSERT INTO jobs (id, clinic_id, kind, payload, request_id)
           VALUES (%(id)s, %(clinic_id)s, %(kind)s, %(payload)s, %(request_id)s)""",
        {
            "id": job_id,
            "clinic_id": clinic_id,
            "kind": kind.value,
            "payload": Jsonb(payload),
            "request_id": request_id,
        },
    )
    return job_id


def set_progress(
    cur: Cursor,
    job_id: UUID,
    *,
    percent: int,
    message: str,
    result: dict[str, Any] | None = None,
) -> None:
    """Progress of a running job, and its partial result so far (GET /jobs/{id} shows both)."""
    cur.execute(
        """UPDATE jobs SET progress = %(percent)s, progress_message = %(message)s,
                  result = coalesce(%(result)s, result), updated_at = now()
           WHERE id = %(id)s""",
        {
            "id": job_id,
            "percent": max(0, min(100, percent)),
            "message": message,
            "result": Jsonb(result) if result is not None else None,
        },
    )


_PUBLIC_COLUMNS = """id, kind, status, progress, progress_message, attempts, result, error,
                     request_id, created_at, updated_at, started_at, finished_at"""


def get_job(db: Database, *, clinic_id: UUID, job_id: UUID) -> JobOut:
    with transaction(db) as cur:
        cur.execute(
            f"SELECT {_PUBLIC_COLUMNS} FROM jobs WHERE id = %(id)s AND clinic_id = %(clinic_id)s",
            {"id": job_id, "clinic_id": clinic_id},
        )
        row = cur.fetchone()
    if row is None:
        raise NotFound(f"job {job_id} not found")
    return JobOut.model_validate(row)


def start_attempt(cur: Cursor, job_id: UUID) -> dict[str, Any] | None:
    """Mark a job running and count the attempt; None if it is gone or already terminal."""
    cur.execute(
        """UPDATE jobs SET status = 'running', attempts = attempts + 1,
                  started_at = coalesce(started_at, now()), updated_at = now()
           WHERE id = %(id)s AND status NOT IN ('succeeded', 'failed', 'cancelled', 'dead')
           RETURNING id, clinic_id, kind, payload, request_id, attempts""",
        {"id": job_id},
    )
    return cur.fetchone()


def finish(
    cur: Cursor,
    job_id: UUID,
    *,
    status: str,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    finish_many(cur, [job_id], status, results=[result], errors=[error])


def finish_many(
    cur: Cursor,
    job_ids: Sequence[UUID],
    status: str,
    *,
    results: Sequence[dict[str, Any] | None] | None = None,
    errors: Sequence[str | None] | None = None,
) -> None:
    """Finish jobs in one statement, each with its own result and error."""
    assert status in TERMINAL
    cur.execute(
        """UPDATE jobs SET status = %(status)s, result = f.result, error = f.error,
                  progress = CASE WHEN %(status)s = 'succeeded' THEN 100 ELSE progress END,
                  finished_at = now(), updated_at = now()
           FROM unnest(%(ids)s::uuid[], %(results)s::jsonb[], %(errors)s::text[])
               AS f(id, result, error)
           WHERE jobs.id = f.id""",
        {
            "status": status,
            "ids": list(job_ids),
            "results": [
                Jsonb(r) if r is not None else None for r in results or [None] * len(job_ids)
            ],
            "errors": list(errors or [None] * len(job_ids)),
        },
    )


def record_errors(cur: Cursor, job_ids: Sequence[UUID], errors: Sequence[str]) -> None:
    """Failed attempts that will be retried: the jobs stay running, the errors are visible."""
    cur.execute(
        """UPDATE jobs SET error = f.error, updated_at = now()
           FROM unnest(%(ids)s::uuid[], %(errors)s::text[]) AS f(id, error)
           WHERE jobs.id = f.id""",
        {"ids": list(job_ids), "errors": list(errors)},
    )


def record_error(cur: Cursor, job_id: UUID, error: str) -> None:
    record_errors(cur, [job_id], [error])


def revive_dead(cur: Cursor, job_ids: Sequence[UUID]) -> list[dict[str, Any]]:
    """Dead jobs whose messages are replayed from the DLQ are queued again (the replayed copy
    starts a fresh count of receives); other statuses are left alone. The last error stays."""
    cur.execute(
        """UPDATE jobs SET status = 'queued', finished_at = NULL, updated_at = now()
           WHERE id = ANY(%(ids)s::uuid[]) AND status = 'dead'
           RETURNING id, kind""",
        {"ids": list(job_ids)},
    )
    return [dict(row) for row in cur.fetchall()]


def errors_of(cur: Cursor, job_ids: Sequence[UUID]) -> dict[UUID, dict[str, Any]]:
    """Status, attempts and last error of jobs (any clinic: the operator's dead-letter view)."""
    cur.execute(
        """SELECT id, kind, status, attempts, error FROM jobs
           WHERE id = ANY(%(ids)s::uuid[])""",
        {"ids": list(job_ids)},
    )
    return {row["id"]: dict(row) for row in cur.fetchall()}


def cancel_job(db: Database, *, clinic_id: UUID, job_id: UUID) -> JobOut:
    """Cancel a queued or running job of this clinic. Its worker finds it cancelled and does
    nothing (a running one's result is discarded). NotFound for other clinics' ids, Conflict
    when the job has already ended."""
    with transaction(db) as cur:
        cur.execute(
            f"""UPDATE jobs SET status = 'cancelled', finished_at = now(), updated_at = now()
                WHERE id = %(id)s AND clinic_id = %(clinic_id)s
                  AND status IN ('queued', 'running')
                RETURNING {_PUBLIC_COLUMNS}""",
            {"id": job_id, "clinic_id": clinic_id},
        )
        row = cur.fetchone()
        if row is None:
            cur.execute(
                "SELECT status FROM jobs WHERE id = %(id)s AND clinic_id = %(clinic_id)s",
                {"id": job_id, "clinic_id": clinic_id},
            )
            existing = cur.fetchone()
            if existing is None:
                raise NotFound(f"job {job_id} not found")
            raise Conflict(f"job {job_id} has already ended ({existing['status']})")
    return JobOut.model_validate(row)
