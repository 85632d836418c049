"""OutboxSweeper (every minute): publish the outbox rows the post-commit relay missed. (Sent
rows are deleted by Housekeeping's retention, with the other tables that grow.)"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from frontdesk.entry import lambda_handler
from frontdesk.observability import logger, metrics
from frontdesk.platform import outbox
from frontdesk.services import get_services

NEEDS = ("database",)


def sweep(event: dict[str, Any], context: Any) -> dict[str, Any]:
    services = get_services()
    min_age = services.settings.outbox_sweep_min_age_seconds
    result = outbox.sweep(services.database, services.publisher, min_age_seconds=min_age)
    metrics.add_metric(name="OutboxSwept", unit=MetricUnit.Count, value=len(result.sent))
    metrics.add_metric(name="OutboxSweepFailed", unit=MetricUnit.Count, value=len(result.failed))
    logger.info("outbox swept", extra={"sent": len(result.sent), "failed": len(result.failed)})
    return {"sent": len(result.sent), "failed": len(result.failed)}


def make_handler() -> Any:
    return lambda_handler("OutboxSweeper", NEEDS, sweep)
