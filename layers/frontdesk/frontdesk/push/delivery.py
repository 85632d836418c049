"""Pushing domain events to the browsers that follow them (PushWorker).

A batch of events from the push queue is handled set-based: one query finds, for every
event, the open connections of *its* clinic that follow one of its topics (so one clinic's
event never reaches another clinic's browser); the posts go out concurrently through the
API Gateway Management API (`PostToConnection`), each with a short timeout, so a slow or
dead browser never holds up the others; the connections API Gateway no longer knows
(410 Gone) are forgotten in one statement. An event whose posts all went out, or whose
targets are gone, succeeds; one with a post that failed otherwise fails its record alone,
and the retry may deliver it twice to the others: browsers dedupe on `eventId`.

What a browser receives: `{"type", "eventId", "time", "detail"}` with the event's detail
(ids, times, statuses, progress). The assistant's reply events carry the reply's text
encrypted; it is decrypted here, right before the post to the conversation's own
subscribers (frontdesk.assistant.reply_events.for_client). An event whose text cannot be
opened (not this event's ciphertext) is refused and dead-lettered with that reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from frontdesk.assistant.reply_events import for_client
from frontdesk.platform.crypto import EnvelopeCipher
from frontdesk.platform.db import Database, transaction
from frontdesk.platform.queues import BusEvent, EventType

# Concurrent posts per batch: enough that a few slow browsers cost one timeout, not many.
MAX_PARALLEL_POSTS = 16


def topics_of(event: BusEvent) -> list[str]:
    """The topics an event is pushed to (frontdesk.push.connections lists them)."""
    kind, detail = event.detail_type, event.detail
    if kind.value.startswith("lead"):  # lead.* and lead_import.completed
        return ["leads"]
    if kind.value.startswith("appointment."):
        return ["appointments"]
    if kind in (EventType.JOB_PROGRESS, EventType.JOB_COMPLETED, EventType.JOB_FAILED):
        return ["jobs", f"job:{detail.get('jobId', '')}"]
    if kind in (EventType.ASSISTANT_REPLY_DELTA, EventType.ASSISTANT_REPLY_DONE):
        return [f"conversation:{detail.get('conversationId', '')}"]
    return []


@dataclass
class Pushed:
    """What became of one event: how many browsers got it, and a failure if any."""

    delivered: int = 0
    gone: int = 0
    failed: list[str] = field(default_factory=list)
    refused: str | None = None  # the event can never be shown (dead-letter it)


def message_of(event: BusEvent, cipher: EnvelopeCipher) -> bytes:
    return json.dumps(
        {
            "type": event.detail_type.value,
            "eventId": str(event.event_id),
            "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "detail": for_client(cipher, event.detail_type, event.detail),
        },
        separators=(",", ":"),
    ).encode()


def targets(db: Database, events: Sequence[BusEvent]) -> dict[int, list[str]]:
    """{index of the event: its connections}, in one query."""
    if not events:
        return {}
    with transaction(db) as cur:
        cur.execute(
            """SELECT e.n, c.connection_id
               FROM unnest(%(clinics)s::uuid[], %(topics)s::jsonb[])
                   WITH ORDINALITY AS e(clinic_id, topics, n)
               JOIN websocket_connections c
                 ON c.clinic_id = e.clinic_id AND c.expires_at > now()
                AND c.topics && ARRAY(SELECT jsonb_array_elements_text(e.topics))""",
            {
                "clinics": [e.clinic_id for e in events],
                "topics": [json.dumps(topics_of(e)) for e in events],
            },
        )
        found: dict[int, list[str]] = {}
        for row in cur.fetchall():
            found.setdefault(int(row["n"]) - 1, []).append(str(row["connection_id"]))
    return found


def push(
    db: Database, cipher: EnvelopeCipher, management: Any, events: Sequence[BusEvent]
) -> list[Pushed]:
    """Push each event to its clinic's followers; what became of each, in order."""
    from botocore.exceptions import BotoCoreError, ClientError
    from cryptography.exceptions import InvalidTag

    results = [Pushed() for _ in events]
    by_event = targets(db, events)
    messages: dict[int, bytes] = {}
    for n in list(by_event):
        try:
            messages[n] = message_of(events[n], cipher)
        except (InvalidTag, KeyError, TypeError, ValueError) as exc:
            # Not this event's ciphertext, or no ciphertext where one belongs.
            results[n].refused = f"the reply's text cannot be opened ({type(exc).__name__})"
            del by_event[n]
    posts = [(n, connection) for n, connections in by_event.items() for connection in connections]
    gone: set[str] = set()

    def post(n: int, connection_id: str) -> tuple[int, str, str | None]:
        try:
            management.post_to_connection(ConnectionId=connection_id, Data=messages[n])
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "GoneException" or status == 410:
                return n, connection_id, "gone"
            return n, connection_id, f"PostToConnection refused ({code or status})"
        except BotoCoreError as exc:
            return n, connection_id, f"PostToConnection unreachable ({type(exc).__name__})"
        return n, connection_id, None

    if posts:
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_POSTS, len(posts))) as pool:
            for n, connection_id, error in pool.map(lambda p: post(*p), posts):
                if error is None:
                    results[n].delivered += 1
                elif error == "gone":
                    results[n].gone += 1
                    gone.add(connection_id)
                else:
                    results[n].failed.append(error)
    if gone:
        from frontdesk.push.connections import disconnect

        disconnect(db, connection_ids=sorted(gone))
    return results
