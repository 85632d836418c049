"""Notifications: one email per notification id, however often its message arrives.

Per message: (1) a short transaction starts the job and claims the delivery row;
(2) the email goes out with no transaction open; (3) a short transaction marks the
delivery sent and the job succeeded. A redelivered message finds the job finished or the
delivery sent and sends nothing. The one window left is a crash between (2) and (3):
the claim expires and the message, redelivered, sends again. SES has no idempotency
token to close it, so it is kept as short as two statements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from frontdesk import jobs
from frontdesk.db import Database, transaction
from frontdesk.errors import PermanentMessageError

_CLAIM_SECONDS = 120  # longer than NotifyWorker's timeout, shorter than the visibility timeout


class NotifyMessage(BaseModel):
    """The body of a notifications queue message (written by outbox.enqueue_job_message)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: UUID = Field(alias="jobId")
    kind: Literal["notify.lead_created"]
    clinic_id: UUID = Field(alias="clinicId")

    @classmethod
    def parse(cls, body: str) -> NotifyMessage:
        try:
            return cls.model_validate_json(body)
        except ValidationError as exc:
            # The reason names fields and error types, never the values.
            reasons = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['type']}"
                for err in exc.errors()
            )
            raise PermanentMessageError(f"malformed notify message ({reasons})") from None


class TransientDeliveryError(Exception):
    """Worth retrying: the message fails and SQS redelivers it after the visibility timeout."""


class PermanentDeliveryError(Exception):
    """Retrying cannot help (a rejected address): the job fails at once."""


class Mailer(Protocol):
    def send_email(self, *, sender: str, to: str, subject: str, text: str) -> str:
        """Send one email; return the provider's message id."""
        ...


class SesMailer:
    _PERMANENT = frozenset(
        {
            "MessageRejected",
            "MailFromDomainNotVerifiedException",
            "InvalidParameterValue",
            "AccountSendingPausedException",
        }
    )

    def send_email(self, *, sender: str, to: str, subject: str, text: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        from frontdesk.clients.aws import client

        try:
            answer = client("ses").send_email(
                Source=sender,
                Destination={"ToAddresses": [to]},
                Message={
                    "Subject": {"Data": subject, "Charset": "UTF-8"},
                    "Body": {"Text": {"Data": text, "Charset": "UTF-8"}},
                },
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "Unknown")
            if code in self._PERMANENT:
                raise PermanentDeliveryError(f"SES refused the email ({code})") from exc
            raise TransientDeliveryError(f"SES error ({code})") from exc
        except BotoCoreError as exc:
            raise TransientDeliveryError(f"SES unreachable ({type(exc).__name__})") from exc
        return str(answer["MessageId"])


@dataclass(frozen=True)
class Delivery:
    outcome: Literal["sent", "already_done", "failed"]
    message_id: str | None = None


def deliver(
    db: Database,
    mailer: Mailer,
    message: NotifyMessage,
    *,
    sender: str,
    last_attempt: bool,
) -> Delivery:
    """Send the notification `message` asks for, once."""
    notification_id = f"{message.job_id}:email"
    with transaction(db) as cur:
        cur.execute(
            """WITH job AS (
                   UPDATE jobs SET status = 'running', attempts = attempts + 1,
                          started_at = coalesce(started_at, now()), updated_at = now()
                   WHERE id = %(job_id)s AND clinic_id = %(clinic_id)s
                     AND status IN ('queued', 'running')
                   RETURNING id, payload)
               SELECT job.id, c.notify_email, l.id AS lead_id, l.source, l.created_at
               FROM job
               JOIN clinics c ON c.id = %(clinic_id)s
               LEFT JOIN leads l ON l.id = (job.payload ->> 'leadId')::uuid
                                AND l.clinic_id = c.id""",
            {"job_id": message.job_id, "clinic_id": message.clinic_id},
        )
        job = cur.fetchone()
        if job is None:
            # Finished, cancelled, or not this clinic's: nothing to do, ever.
            return Delivery("already_done")
        problem = _unsendable(job)
        if problem is not None:
            jobs.finish(cur, message.job_id, status="failed", error=problem)
            return Delivery("failed")
        cur.execute(
            """INSERT INTO notification_deliveries
                   (notification_id, clinic_id, job_id, channel, status, claimed_until)
               VALUES (%(id)s, %(clinic_id)s, %(job_id)s, 'email', 'sending',
                       now() + make_interval(secs => %(claim)s))
               ON CONFLICT (notification_id) DO UPDATE
                   SET status = 'sending', claimed_until = excluded.claimed_until,
                       attempts = notification_deliveries.attempts + 1
                   WHERE notification_deliveries.status = 'failed'
                      OR (notification_deliveries.status = 'sending'
                          AND notification_deliveries.claimed_until < now())
               RETURNING notification_id""",
            {
                "id": notification_id,
                "clinic_id": message.clinic_id,
                "job_id": message.job_id,
                "claim": _CLAIM_SECONDS,
            },
        )
        if cur.fetchone() is None:
            cur.execute(
                "SELECT status FROM notification_deliveries WHERE notification_id = %(id)s",
                {"id": notification_id},
            )
            existing = cur.fetchone()
            if existing is not None and existing["status"] == "sent":
                jobs.finish(cur, message.job_id, status="succeeded", result={"channel": "email"})
                return Delivery("already_done")
            raise TransientDeliveryError("another worker is sending this notification")

    try:
        message_id = mailer.send_email(
            sender=sender,
            to=job["notify_email"],
            subject=f"New lead from {job['source']}",
            text=(
                f"A new lead arrived through {job['source']} at "
                f"{job['created_at']:%Y-%m-%d %H:%M} UTC.\n"
                f"Open it in Frontdesk: lead {job['lead_id']}.\n"
            ),
        )
    except (TransientDeliveryError, PermanentDeliveryError) as exc:
        if isinstance(exc, PermanentDeliveryError):
            _record_failure(db, notification_id, message.job_id, str(exc), final_status="failed")
            return Delivery("failed")
        # The last attempt's message goes to the DLQ next: the job is dead until replayed.
        final_status = "dead" if last_attempt else None
        _record_failure(db, notification_id, message.job_id, str(exc), final_status)
        raise

    with transaction(db) as cur:
        cur.execute(
            """UPDATE notification_deliveries
               SET status = 'sent', sent_at = now(), provider_message_id = %(mid)s, error = NULL
               WHERE notification_id = %(id)s""",
            {"id": notification_id, "mid": message_id},
        )
        jobs.finish(
            cur,
            message.job_id,
            status="succeeded",
            result={"channel": "email", "messageId": message_id},
        )
    return Delivery("sent", message_id)


def _unsendable(job: dict[str, Any]) -> str | None:
    if job["lead_id"] is None:
        return "the lead of this notification does not exist"
    if not job["notify_email"]:
        return "the clinic has no notification email address"
    return None


def _record_failure(
    db: Database, notification_id: str, job_id: UUID, error: str, final_status: str | None
) -> None:
    with transaction(db) as cur:
        cur.execute(
            """UPDATE notification_deliveries
               SET status = 'failed', claimed_until = NULL, error = %(error)s
               WHERE notification_id = %(id)s""",
            {"id": notification_id, "error": error},
        )
        if final_status is not None:
            jobs.finish(cur, job_id, status=final_status, error=error)
        else:
            jobs.record_error(cur, job_id, error)
