"""MetricsFunction: every 5 minutes the recent days, nightly ({"mode": "full"}) the last 35;
then the dashboard's lag, which an alarm watches."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from frontdesk.dashboard import daily_metrics
from frontdesk.entry import lambda_handler
from frontdesk.observability import logger, metrics
from frontdesk.services import get_services

NEEDS = ("database",)


def compute(event: dict[str, Any], context: Any) -> dict[str, Any]:
    mode: daily_metrics.Mode = "full" if event.get("mode") == "full" else "recent"
    services = get_services()
    db = services.database
    timeout_ms = services.settings.metrics_statement_timeout_ms
    result = daily_metrics.run(db, mode, statement_timeout_ms=timeout_ms)
    lag = daily_metrics.lag_seconds(db)
    if lag is not None:
        metrics.add_metric(name="DashboardLagSeconds", unit=MetricUnit.Seconds, value=lag)
    metrics.add_metric(
        name="MetricsDaysComputed", unit=MetricUnit.Count, value=result.days_computed
    )
    logger.info("metrics computed", extra={**result.as_dict(), "lag_seconds": lag})
    return {**result.as_dict(), "lagSeconds": lag}


def make_handler() -> Any:
    return lambda_handler("MetricsFunction", NEEDS, compute)
