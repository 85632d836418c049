"""The jobs table: one row per piece of handed-off work, readable by the client."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from frontdesk.db import Cursor, Database, transaction
from frontdesk.errors import NotFound

TERMINAL = ("succeeded", "failed", "cancelled", "dead")


def create_job(
    cur: Cursor, *, clinic_id: UUID, kind: str, payload: dict[str, Any], request_id: str | None
) -> UUID:
    job_id = uuid.uuid4()
    cur.execute(
        """INSERT INTO jobs (id, clinic_id, kind, payload, request_id)
           VALUES (%(id)s, %(clinic_id)s, %(kind)s, %(payload)s, %(request_id)s)""",
        {
            "id": job_id,
            "clinic_id": clinic_id,
            "kind": kind,
            "payload": Jsonb(payload),
            "request_id": request_id,
        },
    )
    return job_id


_PUBLIC_COLUMNS = """id, kind, status, progress, progress_message, attempts, result, error,
                     request_id, created_at, updated_at, started_at, finished_at"""


def get_job(db: Database, *, clinic_id: UUID, job_id: UUID) -> dict[str, Any]:
    with transaction(db) as cur:
        cur.execute(
            f"SELECT {_PUBLIC_COLUMNS} FROM jobs WHERE id = %(id)s AND clinic_id = %(clinic_id)s",
            {"id": job_id, "clinic_id": clinic_id},
        )
        row = cur.fetchone()
    if row is None:
        raise NotFound(f"job {job_id} not found")
    return dict(row)


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
    assert status in TERMINAL
    cur.execute(
        """UPDATE jobs SET status = %(status)s, result = %(result)s, error = %(error)s,
                  progress = CASE WHEN %(status)s = 'succeeded' THEN 100 ELSE progress END,
                  finished_at = now(), updated_at = now()
           WHERE id = %(id)s""",
        {
            "id": job_id,
            "status": status,
            "result": Jsonb(result) if result is not None else None,
            "error": error,
        },
    )


def record_error(cur: Cursor, job_id: UUID, error: str) -> None:
    """A failed attempt that will be retried: the job stays running, the error is visible."""
    cur.execute(
        "UPDATE jobs SET error = %(error)s, updated_at = now() WHERE id = %(id)s",
        {"id": job_id, "error": error},
    )
