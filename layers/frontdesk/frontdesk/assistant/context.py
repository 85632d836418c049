"""What the model sees when it answers a question: the system prompt (the clinic's profile
and a few numbers) and the conversation so far.

LlmWorker reads it to call the model (frontdesk.assistant.replies); the request path reads
the same thing, without decrypting anything, to look a question up in the reply cache
(frontdesk.assistant.reply_cache). Both go through these functions, so the cache's key is
made of exactly what the model was given. The question's own job is left out of the open
jobs counted, so the prompt does not depend on whether the question was answered from the
cache or by a worker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from frontdesk.platform.db import Cursor


def system_prompt(cur: Cursor, clinic_id: UUID, own_job_id: UUID | None) -> str:
    """The system prompt: the clinic's profile and numbers as they are now."""
    cur.execute(
        """SELECT c.name, c.timezone,
                  (SELECT count(*) FROM leads l WHERE l.clinic_id = c.id
                     AND l.created_at >= date_trunc('week', now() AT TIME ZONE c.timezone)
                                         AT TIME ZONE c.timezone) AS leads_this_week,
                  (SELECT count(*) FROM leads l WHERE l.clinic_id = c.id
                     AND l.created_at >= date_trunc('day', now() AT TIME ZONE c.timezone)
                                         AT TIME ZONE c.timezone) AS leads_today,
                  (SELECT count(*) FROM jobs j WHERE j.clinic_id = c.id
                     AND j.status IN ('queued', 'running')
                     AND j.id IS DISTINCT FROM %(own_job_id)s) AS open_jobs
           FROM clinics c WHERE c.id = %(clinic_id)s""",
        {"clinic_id": clinic_id, "own_job_id": own_job_id},
    )
    clinic = cur.fetchone()
    assert clinic is not None
    return (
        f"You are the front-office assistant of {clinic['name']}, a clinic. Answer staff "
        "questions briefly and factually from these numbers; say when you do not know.\n"
        f"- clinic time zone: {clinic['timezone']}\n"
        f"- new leads this week: {clinic['leads_this_week']}\n"
        f"- new leads today: {clinic['leads_today']}\n"
        f"- other open background jobs: {clinic['open_jobs']}\n"
    )


def history(
    cur: Cursor,
    clinic_id: UUID,
    conversation_id: UUID,
    *,
    until: datetime | None,
    limit: int,
) -> list[dict[str, Any]]:
    """The conversation's last `limit` answered messages (created at or before `until`, when
    given), oldest first, still encrypted: id, role, content, content_enc, dek."""
    if limit <= 0:
        return []
    cur.execute(
        """SELECT id, role, content, content_enc, dek FROM (
               SELECT id, role, content, content_enc, dek, created_at FROM messages
               WHERE clinic_id = %(clinic_id)s AND conversation_id = %(conversation_id)s
                 AND status = 'done' AND (content_enc IS NOT NULL OR content IS NOT NULL)
                 AND (%(until)s::timestamptz IS NULL OR created_at <= %(until)s)
               ORDER BY created_at DESC LIMIT %(limit)s) recent
           ORDER BY created_at""",
        {
            "clinic_id": clinic_id,
            "conversation_id": conversation_id,
            "until": until,
            "limit": limit,
        },
    )
    return [dict(row) for row in cur.fetchall()]


def digest(system: str, earlier_turn_ids: Sequence[UUID]) -> bytes:
    """SHA-256 of the context a question is asked in: the system prompt and the earlier
    turns. A stored message never changes, so its id stands for its text: nothing is
    decrypted to compute it."""
    h = hashlib.sha256(b"frontdesk.assistant.context.v1\0")
    h.update(hashlib.sha256(system.encode()).digest())
    for turn_id in earlier_turn_ids:
        h.update(turn_id.bytes)
    return h.digest()
