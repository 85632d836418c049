"""The transactional outbox: follow-up work is a row in the same transaction as the change.

`add_messages` and `add_event` write rows (through the unit of work); `relay` publishes
given rows once they are committed (SQS SendMessageBatch, EventBridge PutEvents) and marks
them sent; `sweep` (the OutboxSweeper schedule) publishes whatever the post-commit relay missed.
Publishing happens outside any transaction. A row can be published twice (the relay and
the sweeper racing, or a crash between publishing and marking): every consumer is
idempotent, so at-least-once is enough; losing a row is what must never happen.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from frontdesk.observability import logger
from frontdesk.platform.db import Cursor, Database, transaction
from frontdesk.platform.queues import EVENT_SOURCE, EventType, Queue

if TYPE_CHECKING:
    from frontdesk.platform.aws import Aws

_BATCH = 10  # SendMessageBatch and PutEvents take at most 10 entries
_CLAIM_SECONDS = 60


def add_messages(
    cur: Cursor, *, queue: Queue, bodies: Sequence[dict[str, Any]], request_id: str | None
) -> list[int]:
    """Queue messages for `queue`, in one statement; their outbox ids in the order given."""
    if not bodies:
        return []
    cur.execute(
        """INSERT INTO outbox (target, destination, payload, request_id)
           SELECT 'queue', %(queue)s, body, %(request_id)s
           FROM unnest(%(bodies)s::jsonb[]) WITH ORDINALITY AS b(body, n)
           ORDER BY n
           RETURNING id""",
        {"queue": queue.value, "bodies": [Jsonb(b) for b in bodies], "request_id": request_id},
    )
    return [int(row["id"]) for row in cur.fetchall()]


def add_event(
    cur: Cursor, *, detail_type: EventType, detail: dict[str, Any], request_id: str | None
) -> tuple[int, str]:
    """A domain event for the bus; (outbox id, event id). `detail` holds ids, never PII.

    The detail gets an `eventId` (unless it has one): EventBridge gives an event a new id
    each time it is put, and the relay and the sweeper may both put one row, so consumers
    deduplicate on this one.
    """
    detail = {"eventId": str(uuid.uuid4()), **detail}
    cur.execute(
        """INSERT INTO outbox (target, destination, payload, request_id)
           VALUES ('bus', 'default', %(payload)s, %(request_id)s) RETURNING id""",
        {
            "payload": Jsonb({"detailType": detail_type.value, "detail": detail}),
            "request_id": request_id,
        },
    )
    row = cur.fetchone()
    assert row is not None
    return int(row["id"]), str(detail["eventId"])


@dataclass
class RelayResult:
    sent: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


class Publisher:
    """Sends outbox rows to SQS and EventBridge. Destinations come from settings."""

    def __init__(self, aws: Aws, queue_urls: dict[str, str], event_bus_name: str) -> None:
        self._aws = aws
        self._queue_urls = queue_urls
        self._bus = event_bus_name

    def _client(self, service: str) -> Any:
        return self._aws.client(service)

    def warm(self) -> None:
        """Create the clients now (at init) rather than at the first relay."""
        self._client("sqs")
        self._client("events")

    def publish(
        self, rows: Sequence[dict[str, Any]], *, deadline: float | None = None
    ) -> RelayResult:
        """Send the rows in batches of ten per destination; batches not started by
        `deadline` (time.monotonic()) are left unsent."""
        result = RelayResult()
        by_destination: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_destination[(row["target"], row["destination"])].append(row)
        for (target, destination), group in by_destination.items():
            for start in range(0, len(group), _BATCH):
                chunk = group[start : start + _BATCH]
                if deadline is not None and time.monotonic() >= deadline:
                    for row in chunk:
                        result.failed[row["id"]] = "the relay's time budget ran out"
                    continue
                try:
                    if target == "queue":
                        self._send_messages(destination, chunk, result)
                    else:
                        self._put_events(destination, chunk, result)
                except Exception as exc:  # the endpoint is down: the sweeper retries
                    for row in chunk:
                        result.failed[row["id"]] = type(exc).__name__
        return result

    def _send_messages(
        self, destination: str, rows: list[dict[str, Any]], result: RelayResult
    ) -> None:
        url = self._queue_urls.get(destination)
        if not url:
            for row in rows:
                result.failed[row["id"]] = f"no queue URL configured for {destination!r}"
            return
        entries = []
        for row in rows:
            entry: dict[str, Any] = {
                "Id": str(row["id"]),
                "MessageBody": json.dumps(row["payload"]),
            }
            if row["request_id"]:
                entry["MessageAttributes"] = {
                    "requestId": {"DataType": "String", "StringValue": row["request_id"]}
                }
            entries.append(entry)
        answer = self._client("sqs").send_message_batch(QueueUrl=url, Entries=entries)
        result.sent.extend(int(ok["Id"]) for ok in answer.get("Successful", []))
        for bad in answer.get("Failed", []):
            result.failed[int(bad["Id"])] = str(bad.get("Code", "failed"))

    def _put_events(
        self, destination: str, rows: list[dict[str, Any]], result: RelayResult
    ) -> None:
        bus = self._bus if destination == "default" else destination
        entries = [
            {
                "Source": EVENT_SOURCE,
                "DetailType": row["payload"]["detailType"],
                "Detail": json.dumps({**row["payload"]["detail"], "requestId": row["request_id"]}),
                "EventBusName": bus,
            }
            for row in rows
        ]
        answer = self._client("events").put_events(Entries=entries)
        # PutEvents answers entry by entry, in the order sent.
        for row, entry in zip(rows, answer["Entries"], strict=True):
            if entry.get("EventId"):
                result.sent.append(row["id"])
            else:
                result.failed[row["id"]] = str(entry.get("ErrorCode", "failed"))


_ROW_COLUMNS = "id, target, destination, payload, request_id"


def relay(
    db: Database, ids: Iterable[int], publisher: Publisher, *, deadline: float | None = None
) -> RelayResult:
    """Publish the given rows now (right after their commit). Never raises; what it could not
    send by `deadline` (time.monotonic()) is left to the sweeper."""
    ids = list(ids)
    if not ids:
        return RelayResult()
    try:
        with transaction(db) as cur:
            cur.execute(
                f"SELECT {_ROW_COLUMNS} FROM outbox WHERE id = ANY(%(ids)s) AND sent_at IS NULL",
                {"ids": ids},
            )
            rows = cur.fetchall()
        result = publisher.publish(rows, deadline=deadline)
        _record(db, result)
    except Exception as exc:
        # The rows are committed: the sweeper will send them. The request still succeeds.
        logger.warning("outbox relay deferred to the sweeper", extra={"error": type(exc).__name__})
        return RelayResult(failed={i: type(exc).__name__ for i in ids})
    if result.failed:
        logger.warning("outbox relay deferred to the sweeper", extra={"failed": len(result.failed)})
    return result


def sweep(
    db: Database,
    publisher: Publisher,
    limit: int = 500,
    min_age_seconds: float = 5.0,
) -> RelayResult:
    """Publish unsent rows older than a few seconds; claim them first so sweepers don't collide."""
    with transaction(db) as cur:
        cur.execute(
            f"""UPDATE outbox SET claimed_until = now() + make_interval(secs => %(claim)s),
                       attempts = attempts + 1
                WHERE id IN (
                    SELECT id FROM outbox
                    WHERE sent_at IS NULL
                      AND created_at < now() - make_interval(secs => %(min_age)s)
                      AND (claimed_until IS NULL OR claimed_until < now())
                    ORDER BY id LIMIT %(limit)s
                    FOR UPDATE SKIP LOCKED)
                RETURNING {_ROW_COLUMNS}""",
            {"claim": _CLAIM_SECONDS, "min_age": min_age_seconds, "limit": limit},
        )
        rows = sorted(cur.fetchall(), key=lambda row: row["id"])
    result = publisher.publish(rows)
    _record(db, result)
    return result


def _record(db: Database, result: RelayResult) -> None:
    if not result.sent and not result.failed:
        return
    with transaction(db) as cur:
        if result.sent:
            cur.execute(
                "UPDATE outbox SET sent_at = now(), last_error = NULL WHERE id = ANY(%(ids)s)",
                {"ids": result.sent},
            )
        if result.failed:
            cur.execute(
                """UPDATE outbox SET last_error = f.error
                   FROM unnest(%(ids)s::bigint[], %(errors)s::text[]) AS f(id, error)
                   WHERE outbox.id = f.id""",
                {"ids": list(result.failed), "errors": list(result.failed.values())},
            )


def purge_sent(db: Database, *, older_than_days: int, limit: int) -> int:
    """Delete up to `limit` rows sent more than `older_than_days` ago (Housekeeping)."""
    with transaction(db) as cur:
        cur.execute(
            """DELETE FROM outbox WHERE id IN (
                   SELECT id FROM outbox
                   WHERE sent_at < now() - make_interval(days => %(days)s)
                   LIMIT %(limit)s)""",
            {"days": older_than_days, "limit": limit},
        )
        return cur.rowcount
