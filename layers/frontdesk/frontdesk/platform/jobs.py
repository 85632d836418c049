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


def cancel_job(cur: Cursor, *, clinic_id: UUID, job_id: UUID) -> JobOut:
    """Cancel a queued or running job of this clinic (in a unit of work: the change is an
    event). Its worker finds it cancelled and does nothing (a running one's result is
    discarded). NotFound for other clinics' ids, Conflict when the job has already ended."""
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


def touch(cur: Cursor, job_id: UUID) -> None:
    """A worker has the job's message in hand (and lets it wait): the job's message is live,
    so Housekeeping does not rescue it."""
    cur.execute("UPDATE jobs SET updated_at = now() WHERE id = %(id)s", {"id": job_id})


def overdue(cur: Cursor, *, older_than_seconds: float, limit: int) -> list[dict[str, Any]]:
    """Open jobs no worker has touched for `older_than_seconds` and whose message is not
    waiting in the outbox either (that is the sweeper's to send), oldest first, locked (other
    runs skip them)."""
    cur.execute(
        """SELECT j.id, j.clinic_id, j.kind, j.status, j.rescues FROM jobs j
           WHERE j.status IN ('queued', 'running')
             AND j.updated_at < now() - make_interval(secs => %(seconds)s)
             AND NOT EXISTS (
                 SELECT 1 FROM outbox o
                 WHERE o.sent_at IS NULL AND o.target = 'queue'
                   AND o.payload ->> 'jobId' = j.id::text)
           ORDER BY j.updated_at
           LIMIT %(limit)s
           FOR UPDATE OF j SKIP LOCKED""",
        {"seconds": older_than_seconds, "limit": limit},
    )
    return [dict(row) for row in cur.fetchall()]


def mark_rescued(cur: Cursor, job_ids: Sequence[UUID]) -> None:
    """Their messages are sent again: count it, and start their deadline anew."""
    cur.execute(
        """UPDATE jobs SET rescues = rescues + 1, updated_at = now()
           WHERE id = ANY(%(ids)s::uuid[])""",
        {"ids": list(job_ids)},
    )


def open_job_counts(cur: Cursor, *, older_than_seconds: float) -> list[dict[str, Any]]:
    """Per kind and status, the open jobs past the rescue deadline (split by whether their
    message still waits in the outbox) and those rescued before; for operators."""
    cur.execute(
        """SELECT kind, status,
                  count(*) FILTER (WHERE overdue AND NOT in_outbox)::int AS overdue,
                  count(*) FILTER (WHERE overdue AND in_outbox)::int AS waiting_in_outbox,
                  count(*) FILTER (WHERE rescues > 0)::int AS rescued,
                  min(updated_at) FILTER (WHERE overdue) AS oldest_updated_at
           FROM (
               SELECT j.kind, j.status, j.rescues, j.updated_at,
                      j.updated_at < now() - make_interval(secs => %(seconds)s) AS overdue,
                      EXISTS (SELECT 1 FROM outbox o
                              WHERE o.sent_at IS NULL AND o.target = 'queue'
                                AND o.payload ->> 'jobId' = j.id::text) AS in_outbox
               FROM jobs j
               WHERE j.status IN ('queued', 'running')
                 AND (j.rescues > 0
                      OR j.updated_at < now() - make_interval(secs => %(seconds)s))) open_jobs
           GROUP BY kind, status
           ORDER BY kind, status""",
        {"seconds": older_than_seconds},
    )
    return [dict(row) for row in cur.fetchall()]


def count_failed_since(cur: Cursor, *, error_prefix: str, hours: int) -> int:
    """Jobs ended as dead in the last `hours` with an error starting with `error_prefix`."""
    cur.execute(
        """SELECT count(*)::int AS n FROM jobs
           WHERE status = 'dead' AND finished_at > now() - make_interval(hours => %(hours)s)
             AND starts_with(error, %(prefix)s)""",
        {"hours": hours, "prefix": error_prefix},
    )
    row = cur.fetchone()
    return int(row["n"]) if row else 0
