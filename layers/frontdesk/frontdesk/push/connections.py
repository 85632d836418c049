"""WebSocket connections: who is connected (clinic, staff member) and what each follows.

A connection is recorded at `$connect` with what its authorizer verified (the clinic and the
staff member of its token), follows topics it subscribes to, and is forgotten at
`$disconnect`, when a push finds it gone (410), or when it expires (API Gateway closes every
connection after 2 hours). Topics:

| topic | what it pushes |
| --- | --- |
| `leads` | `lead.created`, `lead.updated`, `lead_import.completed`; the inbox's `lead.*` |
| `appointments` | `appointment.booked`, `.rescheduled`, `.cancelled`, `.completed`, `.no_show` |
| `jobs` | `job.progress`, `job.completed`, `job.failed` of every job of the clinic |
| `job:<id>` | those of one job |
| `conversation:<id>` | `assistant.reply.delta`, `assistant.reply.done` of one conversation |

(The inbox's events: `lead.status_changed`, `lead.assigned`, `lead.notes_changed`.)

A connection only ever receives its own clinic's events (frontdesk.push.delivery), so a
topic naming another clinic's job or conversation stays silent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from frontdesk.errors import Forbidden, InvalidInput, NotFound
from frontdesk.platform.db import Database, transaction

MAX_TOPICS = 50
_TOPIC = re.compile(
    r"^(leads|appointments|jobs|(job|conversation):[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-"
    r"[0-9a-f]{4}-[0-9a-f]{12})$"
)


class Subscribe(BaseModel):
    """`{"action": "subscribe", "topics": [...]}`: follow these topics too."""

    model_config = ConfigDict(extra="forbid")

    action: str
    topics: list[str] = Field(min_length=1, max_length=MAX_TOPICS)


def connect(db: Database, *, connection_id: str, clinic_id: UUID, subject: str) -> None:
    """Record a new connection; Forbidden when its token names no clinic we have."""
    with transaction(db) as cur:
        cur.execute(
            """INSERT INTO websocket_connections (connection_id, clinic_id, subject)
               SELECT %(id)s, c.id, %(subject)s FROM clinics c WHERE c.id = %(clinic)s
               ON CONFLICT (connection_id) DO NOTHING""",
            {"id": connection_id, "clinic": clinic_id, "subject": subject},
        )
        if cur.rowcount == 0:
            cur.execute(
                "SELECT 1 FROM websocket_connections WHERE connection_id = %(id)s",
                {"id": connection_id},
            )
            if cur.fetchone() is None:
                raise Forbidden("the token names no clinic")


def subscribe(db: Database, *, connection_id: str, topics: Sequence[str]) -> list[str]:
    """Add topics to the connection's; all it now follows. InvalidInput names a bad topic
    (not its value beyond the pattern)."""
    wanted = [t.strip().lower() for t in topics]
    bad = [n for n, t in enumerate(wanted) if not _TOPIC.match(t)]
    if bad:
        raise InvalidInput(
            f"topics[{bad[0]}]: use leads, appointments, jobs, job:<id> or conversation:<id>"
        )
    with transaction(db) as cur:
        cur.execute(
            """WITH merged AS (
                   SELECT c.connection_id,
                          (SELECT array_agg(DISTINCT t ORDER BY t)
                           FROM unnest(c.topics || %(topics)s::text[]) AS t) AS topics
                   FROM websocket_connections c
                   WHERE c.connection_id = %(id)s AND c.expires_at > now())
               UPDATE websocket_connections c SET topics = merged.topics
               FROM merged
               WHERE c.connection_id = merged.connection_id
                 AND cardinality(merged.topics) <= %(max)s
               RETURNING c.topics""",
            {"id": connection_id, "topics": wanted, "max": MAX_TOPICS},
        )
        row = cur.fetchone()
        if row is None:
            cur.execute(
                """SELECT 1 FROM websocket_connections
                   WHERE connection_id = %(id)s AND expires_at > now()""",
                {"id": connection_id},
            )
            if cur.fetchone() is not None:
                raise InvalidInput(f"a connection follows at most {MAX_TOPICS} topics")
            raise NotFound("this connection is not open")
    followed: list[str] = list(row["topics"])
    return followed


def disconnect(db: Database, *, connection_ids: Sequence[str]) -> int:
    if not connection_ids:
        return 0
    with transaction(db) as cur:
        cur.execute(
            "DELETE FROM websocket_connections WHERE connection_id = ANY(%(ids)s)",
            {"ids": list(connection_ids)},
        )
        return cur.rowcount


def forget_expired(db: Database, limit: int = 10_000) -> int:
    """Rows of connections API Gateway has closed by now (its 2 hours are over)."""
    with transaction(db) as cur:
        cur.execute(
            """DELETE FROM websocket_connections WHERE connection_id = ANY(ARRAY(
                   SELECT connection_id FROM websocket_connections
                   WHERE expires_at < now() LIMIT %(limit)s))""",
            {"limit": limit},
        )
        return cur.rowcount
