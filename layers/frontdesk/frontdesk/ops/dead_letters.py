"""Dead letters: list what a DLQ holds (with the reason) and replay it to its source queue.

Listing never consumes: messages are received with a short visibility timeout so one
listing can page past the first ten, never deleted, and made visible again (visibility 0)
before the listing returns. Each listing is one more receive of the DLQ copy, which is
harmless: a DLQ has no redrive policy of its own.

The reason: a body the worker's own parser rejects is explained by that parser (the same
PermanentMessageError the worker logged); a message that names a job shows the job's
status and its last error (workers keep it on the job row), one that names an outbound
webhook delivery the delivery's state and last error; anything else points at the worker's
logs by message id.

Replay sends a copy of each chosen message (body and attributes) to the queue whose
RedrivePolicy names the DLQ, then deletes the original. Dead jobs named by replayed
messages are queued again first. Running a replay twice is harmless: the originals are
gone after the first, and a copy sent twice (a crash between send and delete) is a
duplicate delivery, which every consumer already absorbs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from frontdesk.errors import NotFound, PermanentMessageError
from frontdesk.platform import jobs
from frontdesk.platform.db import Database, transaction
from frontdesk.platform.queues import JobKind, Queue, parse
from frontdesk.platform.unit_of_work import UnitOfWork
from frontdesk.values import ApiModel

# Seconds a listed message stays hidden while the listing pages on (reset to 0 at the end).
PEEK_VISIBILITY_SECONDS = 10
# Seconds a message being replayed stays hidden between its copy and its deletion.
REPLAY_VISIBILITY_SECONDS = 30
MAX_MESSAGES = 1000


@dataclass(frozen=True)
class DeadLetterQueue:
    name: str  # the logical name of the source queue (notifications, llm, sync)
    dlq_url: str
    source_url: str


QueueName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_-]*$")]


class ReplayRequest(BaseModel):
    """Either the ids of the messages to replay, or `all: true`."""

    model_config = ConfigDict(extra="forbid")

    queue: QueueName | None = None
    messageIds: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None, min_length=1, max_length=1000
    )
    all: bool = False

    @model_validator(mode="after")
    def _one_choice(self) -> ReplayRequest:
        if self.all == (self.messageIds is not None):
            raise ValueError("name messageIds or set all to true (not both)")
        return self


class DeadLetter(ApiModel):
    model_config = ConfigDict(frozen=False)

    queue: str
    message_id: str
    receive_count: int
    sent_at: str | None
    reason: str
    job_id: UUID | None = None
    job_status: str | None = None
    delivery_id: UUID | None = None
    kind: str | None = None
    request_id: str | None = None


class ReplayOutcome(ApiModel):
    model_config = ConfigDict(frozen=False)

    replayed: list[str] = Field(default_factory=list)
    not_found: list[str] = Field(default_factory=list)
    jobs_requeued: int = 0


def queues(routes: dict[str, tuple[str, str]], name: str | None) -> list[DeadLetterQueue]:
    """The DLQs to look at: one by its logical name, or all. NotFound for an unknown name."""
    if name is not None and name not in routes:
        raise NotFound(f"no dead-letter queue named {name!r} (known: {', '.join(sorted(routes))})")
    return [
        DeadLetterQueue(n, dlq, source)
        for n, (dlq, source) in sorted(routes.items())
        if name is None or n == name
    ]


# ---------------------------------------------------------------- reasons


def _job_id(body: str) -> UUID | None:
    try:
        data = json.loads(body)
        return UUID(str(data["jobId"])) if isinstance(data, dict) and "jobId" in data else None
    except (ValueError, TypeError):
        return None


def _delivery_id(body: str) -> UUID | None:
    try:
        data = json.loads(body)
        if isinstance(data, dict) and "deliveryId" in data:
            return UUID(str(data["deliveryId"]))
    except (ValueError, TypeError):
        pass
    return None


def _kind(body: str) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("kind") or data.get("detail-type")
    return str(kind)[:100] if kind is not None else None


def rejection(queue: str, body: str) -> str | None:
    """Why the queue's worker rejects this body for good (its own parser's reason), or None
    if it parses."""
    try:
        parse(Queue(queue), body)
    except PermanentMessageError as exc:
        return exc.detail
    return None


# ---------------------------------------------------------------- SQS


def _received(sqs: Any, url: str, visibility: int) -> Iterator[list[dict[str, Any]]]:
    """Batches of messages not seen before in this call, until the queue has no more."""
    seen: set[str] = set()
    while len(seen) < MAX_MESSAGES:
        answer = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=visibility,
            WaitTimeSeconds=1,  # long polling asks every SQS server, not a sample
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        batch = [m for m in answer.get("Messages", []) if m["MessageId"] not in seen]
        if not batch:
            return
        seen.update(m["MessageId"] for m in batch)
        yield batch


def _release(sqs: Any, url: str, messages: Sequence[dict[str, Any]]) -> None:
    """Visible again at once: the listing (or a replay that skipped them) consumed nothing."""
    for start in range(0, len(messages), 10):
        chunk = messages[start : start + 10]
        sqs.change_message_visibility_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(chunk)
            ],
        )


def _sent_at(message: dict[str, Any]) -> str | None:
    stamp = message.get("Attributes", {}).get("SentTimestamp")
    if not stamp:
        return None
    moment = datetime.fromtimestamp(int(stamp) / 1000, UTC)
    return moment.isoformat().replace("+00:00", "Z")


def _request_id(message: dict[str, Any]) -> str | None:
    value = message.get("MessageAttributes", {}).get("requestId", {}).get("StringValue")
    return str(value) if value else None


def list_dead_letters(db: Database, sqs: Any, dlqs: Sequence[DeadLetterQueue]) -> list[DeadLetter]:
    """Every message on the given DLQs with its reason, none consumed."""
    letters: list[DeadLetter] = []
    for dlq in dlqs:
        held: list[dict[str, Any]] = []
        try:
            for batch in _received(sqs, dlq.dlq_url, PEEK_VISIBILITY_SECONDS):
                held.extend(batch)
        finally:
            _release(sqs, dlq.dlq_url, held)
        for message in held:
            count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            body = message.get("Body", "")
            letters.append(
                DeadLetter(
                    queue=dlq.name,
                    message_id=message["MessageId"],
                    # This listing's own receive is not one of the worker's attempts.
                    receive_count=max(0, count - 1),
                    sent_at=_sent_at(message),
                    reason=rejection(dlq.name, body) or "",
                    job_id=_job_id(body),
                    delivery_id=_delivery_id(body),
                    kind=_kind(body),
                    request_id=_request_id(message),
                )
            )
    _explain(db, letters)
    return letters


def _explain(db: Database, letters: list[DeadLetter]) -> None:
    job_ids = [
        letter.job_id for letter in letters if letter.job_id is not None and not letter.reason
    ]
    delivery_ids = [
        letter.delivery_id
        for letter in letters
        if letter.delivery_id is not None and not letter.reason
    ]
    found = {}
    deliveries: dict[UUID, str] = {}
    if job_ids or delivery_ids:
        from frontdesk.webhooks.delivery import explain

        with transaction(db) as cur:
            found = jobs.errors_of(cur, job_ids) if job_ids else {}
            deliveries = explain(cur, delivery_ids)
    for letter in letters:
        job = found.get(letter.job_id) if letter.job_id is not None else None
        if job is not None:
            letter.job_status = job["status"]
            letter.kind = job["kind"]
            if not letter.reason:
                error = job["error"] or "no error recorded"
                letter.reason = f"job {job['status']} after {job['attempts']} attempts: {error}"
        if not letter.reason and letter.delivery_id in deliveries:
            letter.reason = deliveries[letter.delivery_id]
        if not letter.reason:
            letter.reason = (
                "no reason recorded: the worker logged it with message_id " + letter.message_id
            )


def replay(
    open_unit_of_work: Callable[[], UnitOfWork],
    sqs: Any,
    dlqs: Sequence[DeadLetterQueue],
    message_ids: Sequence[str] | None,
) -> ReplayOutcome:
    """Move the chosen messages (None: all) of the given DLQs back to their source queues;
    their dead jobs are queued again in a unit of work from `open_unit_of_work()` (the jobs'
    events go out with it)."""
    wanted = set(message_ids) if message_ids is not None else None
    result = ReplayOutcome()
    for dlq in dlqs:
        # Messages not chosen stay hidden until the end, so paging never sees them twice.
        kept: list[dict[str, Any]] = []
        try:
            for batch in _received(sqs, dlq.dlq_url, REPLAY_VISIBILITY_SECONDS):
                chosen = [m for m in batch if wanted is None or m["MessageId"] in wanted]
                kept.extend(m for m in batch if m not in chosen)
                if not chosen:
                    continue
                result.jobs_requeued += _requeue_jobs(open_unit_of_work, chosen)
                sent = _send_copies(sqs, dlq.source_url, chosen)
                kept.extend(m for m in chosen if m["MessageId"] not in sent)
                done = [m for m in chosen if m["MessageId"] in sent]
                if done:
                    sqs.delete_message_batch(
                        QueueUrl=dlq.dlq_url,
                        Entries=[
                            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                            for i, m in enumerate(done)
                        ],
                    )
                result.replayed.extend(m["MessageId"] for m in done)
        finally:
            _release(sqs, dlq.dlq_url, kept)
    if wanted is not None:
        result.not_found = sorted(wanted - set(result.replayed))
    return result


def _requeue_jobs(
    open_unit_of_work: Callable[[], UnitOfWork], messages: Sequence[dict[str, Any]]
) -> int:
    job_ids = [j for j in (_job_id(m.get("Body", "")) for m in messages) if j is not None]
    if not job_ids:
        return 0
    from frontdesk.assistant.replies import requeue_replies

    with open_unit_of_work() as uow:
        revived = jobs.revive_dead(uow.cur, job_ids)
        replies = [row["id"] for row in revived if row["kind"] == JobKind.ASSISTANT_REPLY]
        if replies:
            requeue_replies(uow.cur, replies)
    return len(revived)


def _send_copies(sqs: Any, url: str, messages: Sequence[dict[str, Any]]) -> set[str]:
    """The ids of the messages whose copies SQS accepted."""
    by_entry = {str(i): m for i, m in enumerate(messages)}
    answer = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {
                "Id": entry,
                "MessageBody": m["Body"],
                "MessageAttributes": {
                    name: {k: v for k, v in value.items() if k in ("DataType", "StringValue")}
                    for name, value in m.get("MessageAttributes", {}).items()
                    if "StringValue" in value
                },
            }
            for entry, m in by_entry.items()
        ],
    )
    return {by_entry[ok["Id"]]["MessageId"] for ok in answer.get("Successful", [])}
