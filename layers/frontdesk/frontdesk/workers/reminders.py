"""Reminders (every 5 minutes): enqueue the appointment reminders now due, once each."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from frontdesk.appointments import reminders
from frontdesk.entry import lambda_handler
from frontdesk.observability import logger, metrics
from frontdesk.services import get_services

NEEDS = ("database", "notifications_queue_url")


def send_reminders(event: dict[str, Any], context: Any) -> dict[str, Any]:
    with get_services().unit_of_work() as uow:
        enqueued = reminders.enqueue_due(uow)
    metrics.add_metric(name="RemindersEnqueued", unit=MetricUnit.Count, value=enqueued)
    logger.info("reminders enqueued", extra={"enqueued": enqueued})
    return {"enqueued": enqueued}


def make_handler() -> Any:
    return lambda_handler("Reminders", NEEDS, send_reminders)
