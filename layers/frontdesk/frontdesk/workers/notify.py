"""NotifyWorker (the notifications queue): staff emails for new leads, patient emails and
SMS for appointment events and reminders; one delivery per notification id and channel.

The batch is handled set-based (frontdesk.notifications): one transaction to claim, one
SES bulk call, one transaction to record, for the staff emails and the patient notices
each. A job's last receive marks it dead when its email fails again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from frontdesk.entry import lambda_handler
from frontdesk.notifications import patients, staff
from frontdesk.notifications.patients import PatientNotice
from frontdesk.platform.queues import (
    AppointmentEvent,
    JobMessage,
    Queue,
    QueueMessage,
    ReminderMessage,
)
from frontdesk.services import get_services
from frontdesk.workers.records import Item, QueueWorker, RecordOutcome

NEEDS = (
    "database",
    "kms_key_id",
    "sender_email",
    "new_lead_email_template",
    "patient_email_template",
)


def deliver(
    items: Sequence[Item[QueueMessage]], lambda_context: Any
) -> Mapping[str, RecordOutcome]:
    services = get_services()
    settings = services.settings
    jobs: dict[str, JobMessage] = {}
    notices: dict[str, PatientNotice] = {}
    for item in items:
        if isinstance(item.message, JobMessage):
            jobs[item.context.message_id] = item.message
        elif isinstance(item.message, AppointmentEvent | ReminderMessage):
            notices[item.context.message_id] = PatientNotice.of(item.message)
    last_attempts = frozenset(i.context.message_id for i in items if i.context.is_last_attempt)
    outcomes: dict[str, RecordOutcome] = dict(
        staff.deliver_batch(
            services,
            jobs,
            sender=settings.sender_email,
            template=settings.new_lead_email_template,
            last_attempts=last_attempts,
        )
    )
    if notices:
        outcomes.update(
            patients.deliver_patient_batch(
                services.database,
                services.cipher,
                services.mailer,
                services.sms,
                notices,
                sender=settings.sender_email,
                template=settings.patient_email_template,
            )
        )
    return outcomes


def describe(message: QueueMessage) -> dict[str, Any]:
    if isinstance(message, JobMessage):
        return {"job_id": str(message.job_id)}
    if isinstance(message, AppointmentEvent | ReminderMessage):
        return {"notification_id": PatientNotice.of(message).notification_id}
    return {}


worker = QueueWorker("Notify", Queue.NOTIFICATIONS, deliver, "notification", describe)


def make_handler() -> Any:
    return lambda_handler("NotifyWorker", NEEDS, worker)
