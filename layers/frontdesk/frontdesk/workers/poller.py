"""ProviderPoller (every 15 minutes): every active account's missed changes, enqueued
durably (frontdesk.sync.poller)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from frontdesk.entry import lambda_handler
from frontdesk.observability import logger, metrics
from frontdesk.services import get_services
from frontdesk.sync.poller import poll_all
from frontdesk.workers.sync import call_policy

NEEDS = ("database", "kms_key_id", "sync_queue_url")


def poll(event: dict[str, Any], context: Any) -> dict[str, int]:
    services = get_services()
    settings = services.settings
    totals = poll_all(services, call_policy(settings), max_changes=settings.poll_max_changes)
    metrics.add_metric(name="PollMissed", unit=MetricUnit.Count, value=totals["missed"])
    logger.info("providers polled", extra=totals)
    return totals


def make_handler() -> Any:
    return lambda_handler("ProviderPoller", NEEDS, poll)
