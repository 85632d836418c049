"""MetricsFunction: every 5 minutes the recent days, nightly ({"mode": "full"}) the last 35."""

from frontdesk.observability import logger, metrics
from frontdesk.workers.notify import compute_metrics


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event, context):  # type: ignore[no-untyped-def]
    return compute_metrics(event)
