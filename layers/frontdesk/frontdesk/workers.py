"""Queue record handlers: an SQS record in, one domain call, an exception to fail the record.

Used by the functions' handlers with Powertools BatchProcessor, which reports the failed
records as batchItemFailures so only they return to the queue.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from frontdesk import idempotency, notifications, outbox
from frontdesk.config import get_settings
from frontdesk.db import get_database
from frontdesk.errors import PermanentMessageError
from frontdesk.observability import logger, metrics


@cache
def _mailer() -> notifications.Mailer:
    return notifications.SesMailer()


def _request_id(record: SQSRecord) -> str | None:
    attribute = record.message_attributes["requestId"]  # None when absent
    return attribute.string_value if attribute is not None else None


def notify_record(record: SQSRecord) -> str:
    receive_count = int(record.attributes.approximate_receive_count or 1)
    logger.set_correlation_id(_request_id(record))
    logger.append_keys(message_id=record.message_id, receive_count=receive_count)
    try:
        message = notifications.NotifyMessage.parse(record.body)
        settings = get_settings()
        delivery = notifications.deliver(
            get_database(),
            _mailer(),
            message,
            sender=settings.sender_email,
            last_attempt=receive_count >= settings.max_receive_count,
        )
    except PermanentMessageError as exc:
        # Fails alone; SQS dead-letters it after maxReceiveCount receives.
        logger.error("message rejected", extra={"reason": exc.detail})
        metrics.add_metric(name="MessagesRejected", unit=MetricUnit.Count, value=1)
        raise
    except notifications.TransientDeliveryError as exc:
        logger.warning("delivery will be retried", extra={"reason": str(exc)})
        metrics.add_metric(name="NotificationRetries", unit=MetricUnit.Count, value=1)
        raise
    finally:
        logger.remove_keys(["message_id", "receive_count"])
    logger.info(
        "notification handled", extra={"job_id": str(message.job_id), "outcome": delivery.outcome}
    )
    metrics.add_metric(name=f"Notifications_{delivery.outcome}", unit=MetricUnit.Count, value=1)
    return delivery.outcome


def sweep_outbox() -> dict[str, Any]:
    db = get_database()
    min_age = get_settings().outbox_sweep_min_age_seconds
    result = outbox.sweep(db, outbox.default_publisher(), min_age_seconds=min_age)
    purged = outbox.purge_sent(db) + idempotency.purge_expired(db)
    metrics.add_metric(name="OutboxSwept", unit=MetricUnit.Count, value=len(result.sent))
    metrics.add_metric(name="OutboxSweepFailed", unit=MetricUnit.Count, value=len(result.failed))
    logger.info(
        "outbox swept",
        extra={"sent": len(result.sent), "failed": len(result.failed), "purged": purged},
    )
    return {"sent": len(result.sent), "failed": len(result.failed), "purged": purged}
