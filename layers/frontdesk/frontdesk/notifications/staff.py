"""Staff notifications (a new lead): one email per notification id, however often its
message arrives.

A batch of queue messages is handled set-based, in three steps whatever its size:
(1) one short transaction starts the batch's jobs and claims their delivery rows;
(2) one SES SendBulkTemplatedEmail call sends every claimed email, with no transaction
open; (3) one short transaction marks the deliveries sent and the jobs succeeded (or
records each failure). A redelivered message finds its job finished or its delivery sent
and sends nothing. The one window left is a crash between (2) and (3): the claims expire
and the redelivered messages send again. SES has no idempotency token to close it, so it
is kept as short as one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from frontdesk.notifications.channels import (
    Email,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from frontdesk.platform import jobs
from frontdesk.platform.db import Cursor
from frontdesk.platform.queues import JobMessage

if TYPE_CHECKING:
    from frontdesk.services import Services

_CLAIM_SECONDS = 120  # longer than NotifyWorker's timeout, shorter than the visibility timeout


DeliveryOutcome = Literal["sent", "already_done", "failed"]


def deliver_batch(
    services: Services,
    messages: Mapping[str, JobMessage],
    *,
    sender: str,
    template: str,
    last_attempts: frozenset[str] = frozenset(),
) -> dict[str, DeliveryOutcome | TransientDeliveryError]:
    """Send what each message (keyed by its SQS message id) asks for, once.

    Returns per message id an outcome, or the TransientDeliveryError to fail its record
    with (SQS redelivers it). Messages in `last_attempts` mark their job dead instead.
    """
    results: dict[str, DeliveryOutcome | TransientDeliveryError] = {}
    first_of_job: dict[UUID, str] = {}
    for message_id, message in messages.items():
        if message.job_id in first_of_job:
            results[message_id] = "already_done"  # the same job twice in one batch
        else:
            first_of_job[message.job_id] = message_id
    if not first_of_job:
        return results

    # Units of work: the jobs' changes are events for the screens that follow them.
    with services.unit_of_work() as uow:
        claimed, done, busy = _start_and_claim(uow.cur, first_of_job, messages)
    for job_id in done:
        results[first_of_job[job_id]] = "already_done"
    for job_id in busy:
        results[first_of_job[job_id]] = TransientDeliveryError(
            "another worker is sending this notification"
        )
    if not claimed:
        return results

    job_ids = list(claimed)
    emails = [claimed[job_id] for job_id in job_ids]
    sent = services.mailer.send_templated(sender=sender, template=template, emails=emails)

    with services.unit_of_work() as uow:
        _record(uow.cur, job_ids, sent, {first_of_job[j]: j for j in job_ids}, last_attempts)
    for job_id, outcome in zip(job_ids, sent, strict=True):
        message_id = first_of_job[job_id]
        if isinstance(outcome, TransientDeliveryError):
            results[message_id] = outcome
        elif isinstance(outcome, Exception):
            results[message_id] = "failed"
        else:
            results[message_id] = "sent"
    return results


def _start_and_claim(
    cur: Cursor, first_of_job: dict[UUID, str], messages: Mapping[str, JobMessage]
) -> tuple[dict[UUID, Email], list[UUID], list[UUID]]:
    """Start the jobs, fail the unsendable, claim the rest: (to send, already done, busy)."""
    job_ids = list(first_of_job)
    clinic_ids = [messages[first_of_job[job_id]].clinic_id for job_id in job_ids]
    cur.execute(
        """WITH batch AS (
               SELECT * FROM unnest(%(job_ids)s::uuid[], %(clinic_ids)s::uuid[])
                   AS b(job_id, clinic_id)),
           started AS (
               UPDATE jobs SET status = 'running', attempts = attempts + 1,
                      started_at = coalesce(started_at, now()), updated_at = now()
               FROM batch
               WHERE jobs.id = batch.job_id AND jobs.clinic_id = batch.clinic_id
                 AND jobs.status IN ('queued', 'running')
               RETURNING jobs.id, jobs.clinic_id, jobs.payload)
           SELECT started.id, started.clinic_id, c.notify_email,
                  l.id AS lead_id, l.source, l.created_at
           FROM started
           JOIN clinics c ON c.id = started.clinic_id
           LEFT JOIN leads l ON l.id = (started.payload ->> 'leadId')::uuid
                            AND l.clinic_id = started.clinic_id""",
        {"job_ids": job_ids, "clinic_ids": clinic_ids},
    )
    # Jobs not started are finished, cancelled, or not that clinic's: nothing to do, ever.
    started = {row["id"]: row for row in cur.fetchall()}
    done = [job_id for job_id in job_ids if job_id not in started]

    unsendable = {job_id: _unsendable(row) for job_id, row in started.items()}
    failed = {job_id: reason for job_id, reason in unsendable.items() if reason}
    if failed:
        jobs.finish_many(cur, list(failed), "failed", errors=list(failed.values()))
        done += list(failed)
    sendable = [job_id for job_id in started if job_id not in failed]
    if not sendable:
        return {}, done, []

    cur.execute(
        """INSERT INTO notification_deliveries
               (notification_id, clinic_id, job_id, channel, status, claimed_until)
           SELECT job_id::text || ':email', clinic_id, job_id, 'email', 'sending',
                  now() + make_interval(secs => %(claim)s)
           FROM unnest(%(job_ids)s::uuid[], %(clinic_ids)s::uuid[]) AS b(job_id, clinic_id)
           ON CONFLICT (notification_id) DO UPDATE
               SET status = 'sending', claimed_until = excluded.claimed_until,
                   attempts = notification_deliveries.attempts + 1
               WHERE notification_deliveries.status = 'failed'
                  OR (notification_deliveries.status = 'sending'
                      AND notification_deliveries.claimed_until < now())
           RETURNING job_id""",
        {
            "job_ids": sendable,
            "clinic_ids": [started[job_id]["clinic_id"] for job_id in sendable],
            "claim": _CLAIM_SECONDS,
        },
    )
    claimed_ids = {row["job_id"] for row in cur.fetchall()}
    unclaimed = [job_id for job_id in sendable if job_id not in claimed_ids]
    busy: list[UUID] = []
    if unclaimed:
        # Sent already (a crash after sending, before the job was finished), or being sent.
        cur.execute(
            """SELECT job_id FROM notification_deliveries
               WHERE job_id = ANY(%(ids)s) AND channel = 'email' AND status = 'sent'""",
            {"ids": unclaimed},
        )
        already_sent = [row["job_id"] for row in cur.fetchall()]
        if already_sent:
            jobs.finish_many(
                cur, already_sent, "succeeded", results=[{"channel": "email"}] * len(already_sent)
            )
        done += already_sent
        busy = [job_id for job_id in unclaimed if job_id not in already_sent]

    emails = {
        job_id: Email(
            to=started[job_id]["notify_email"],
            data={
                "source": started[job_id]["source"],
                "createdAt": f"{started[job_id]['created_at']:%Y-%m-%d %H:%M}",
                "leadId": str(started[job_id]["lead_id"]),
            },
        )
        for job_id in sendable
        if job_id in claimed_ids
    }
    return emails, done, busy


def _record(
    cur: Cursor,
    job_ids: list[UUID],
    sent: list[str | Exception],
    message_of: dict[str, UUID],
    last_attempts: frozenset[str],
) -> None:
    ok = [(job_id, mid) for job_id, mid in zip(job_ids, sent, strict=True) if isinstance(mid, str)]
    if ok:
        cur.execute(
            """UPDATE notification_deliveries d
               SET status = 'sent', sent_at = now(), provider_message_id = s.mid, error = NULL
               FROM unnest(%(ids)s::uuid[], %(mids)s::text[]) AS s(job_id, mid)
               WHERE d.notification_id = s.job_id::text || ':email'""",
            {"ids": [j for j, _ in ok], "mids": [m for _, m in ok]},
        )
        jobs.finish_many(
            cur,
            [j for j, _ in ok],
            "succeeded",
            results=[{"channel": "email", "messageId": m} for _, m in ok],
        )
    failures = [(j, e) for j, e in zip(job_ids, sent, strict=True) if isinstance(e, Exception)]
    if not failures:
        return
    cur.execute(
        """UPDATE notification_deliveries d
           SET status = 'failed', claimed_until = NULL, error = f.error
           FROM unnest(%(ids)s::uuid[], %(errors)s::text[]) AS f(job_id, error)
           WHERE d.notification_id = f.job_id::text || ':email'""",
        {"ids": [j for j, _ in failures], "errors": [str(e) for _, e in failures]},
    )
    last_jobs = {message_of[m] for m in last_attempts if m in message_of}
    by_status: dict[str, list[tuple[UUID, Exception]]] = {"failed": [], "dead": [], "retry": []}
    for job_id, error in failures:
        if isinstance(error, PermanentDeliveryError):
            by_status["failed"].append((job_id, error))
        elif job_id in last_jobs:
            # The last attempt: SQS dead-letters the message next; the job is dead until replayed.
            by_status["dead"].append((job_id, error))
        else:
            by_status["retry"].append((job_id, error))
    for status in ("failed", "dead"):
        if by_status[status]:
            ids, errors = zip(*by_status[status], strict=True)
            jobs.finish_many(cur, list(ids), status, errors=[str(e) for e in errors])
    if by_status["retry"]:
        ids, errors = zip(*by_status["retry"], strict=True)
        jobs.record_errors(cur, list(ids), [str(e) for e in errors])


def _unsendable(job: Mapping[str, Any]) -> str | None:
    if job["lead_id"] is None:
        return "the lead of this notification does not exist"
    if not job["notify_email"]:
        return "the clinic has no notification email address"
    return None
