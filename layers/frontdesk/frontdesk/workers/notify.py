"""Queue and schedule handlers: an event in, one domain call, the answer Lambda expects.

Queue consumers use Powertools BatchProcessor, which reports the failed records as
batchItemFailures so only they return to the queue.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from frontdesk.appointments import reminders
from frontdesk.config import get_settings
from frontdesk.dashboard import daily_metrics as dashboard
from frontdesk.errors import PermanentMessageError
from frontdesk.notifications import patients as patient_notifications
from frontdesk.notifications import staff as notifications
from frontdesk.observability import logger, metrics
from frontdesk.platform import idempotency, outbox
from frontdesk.platform.crypto import get_cipher
from frontdesk.platform.db import get_database

_notify_processor = BatchProcessor(event_type=EventType.SQS)


@cache
def _mailer() -> notifications.Mailer:
    return notifications.SesMailer()


def _request_id(record: SQSRecord) -> str | None:
    attribute = record.message_attributes["requestId"]  # None when absent
    return attribute.string_value if attribute is not None else None


def handle_notifications(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """NotifyWorker: deliver the batch set-based, then report each record through Powertools.

    A malformed record fails alone (SQS dead-letters it after maxReceiveCount receives);
    a transient failure fails its record so SQS redelivers it; the rest are deleted.
    """
    settings = get_settings()
    records = [SQSRecord(raw) for raw in event["Records"]]
    messages: dict[str, notifications.NotifyMessage] = {}
    notices: dict[str, patient_notifications.PatientNotice] = {}
    rejected: dict[str, PermanentMessageError] = {}
    for record in records:
        try:
            message = patient_notifications.parse_message(record.body)
        except PermanentMessageError as exc:
            rejected[record.message_id] = exc
            continue
        if isinstance(message, patient_notifications.PatientNotice):
            notices[record.message_id] = message
        else:
            messages[record.message_id] = message
    last_attempts = frozenset(
        record.message_id
        for record in records
        if int(record.attributes.approximate_receive_count or 1) >= settings.max_receive_count
    )
    outcomes = notifications.deliver_batch(
        get_database(),
        _mailer(),
        messages,
        sender=settings.sender_email,
        template=settings.new_lead_email_template,
        last_attempts=last_attempts,
    )
    if notices:
        outcomes.update(
            patient_notifications.deliver_patient_batch(
                get_database(),
                get_cipher(),
                _mailer(),
                patient_notifications.SnsSms(),
                notices,
                sender=settings.sender_email,
                template=settings.patient_email_template,
            )
        )
    metrics.add_metric(name="NotifyRecords", unit=MetricUnit.Count, value=len(records))

    def report(record: SQSRecord) -> str:
        logger.set_correlation_id(_request_id(record))
        keys = {
            "message_id": record.message_id,
            "receive_count": record.attributes.approximate_receive_count,
        }
        if record.message_id in rejected:
            reason = rejected[record.message_id].detail
            logger.error("message rejected", extra={**keys, "reason": reason})
            metrics.add_metric(name="MessagesRejected", unit=MetricUnit.Count, value=1)
            raise rejected[record.message_id]
        outcome = outcomes[record.message_id]
        if record.message_id in notices:
            keys["notification_id"] = notices[record.message_id].notification_id
        else:
            keys["job_id"] = str(messages[record.message_id].job_id)
        if isinstance(outcome, Exception):
            logger.warning("delivery will be retried", extra={**keys, "reason": str(outcome)})
            metrics.add_metric(name="NotificationRetries", unit=MetricUnit.Count, value=1)
            raise outcome
        logger.info("notification handled", extra={**keys, "outcome": outcome})
        metrics.add_metric(name=f"Notifications_{outcome}", unit=MetricUnit.Count, value=1)
        return outcome

    response = process_partial_response(
        event=event, record_handler=report, processor=_notify_processor, context=context
    )
    return dict(response)


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


def compute_metrics(event: dict[str, Any]) -> dict[str, Any]:
    """MetricsFunction: the recent run (every 5 minutes) or, with {"mode": "full"}, the
    nightly re-check; then the dashboard's lag, which an alarm watches."""
    mode: dashboard.Mode = "full" if event.get("mode") == "full" else "recent"
    db = get_database()
    timeout_ms = get_settings().metrics_statement_timeout_ms
    result = dashboard.run(db, mode, statement_timeout_ms=timeout_ms)
    lag = dashboard.lag_seconds(db)
    if lag is not None:
        metrics.add_metric(name="DashboardLagSeconds", unit=MetricUnit.Seconds, value=lag)
    metrics.add_metric(
        name="MetricsDaysComputed", unit=MetricUnit.Count, value=result.days_computed
    )
    logger.info("metrics computed", extra={**result.as_dict(), "lag_seconds": lag})
    return {**result.as_dict(), "lagSeconds": lag}


def send_reminders() -> dict[str, Any]:
    """Reminders (every 5 minutes): enqueue the appointment reminders now due, once each."""
    enqueued = reminders.enqueue_due(get_database(), outbox.default_publisher())
    metrics.add_metric(name="RemindersEnqueued", unit=MetricUnit.Count, value=enqueued)
    logger.info("reminders enqueued", extra={"enqueued": enqueued})
    return {"enqueued": enqueued}
