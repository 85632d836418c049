"""OutboxSweeper: every minute, publish the outbox rows the post-commit relay missed."""

from frontdesk.observability import logger, metrics
from frontdesk.workers.notify import sweep_outbox


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event, context):  # type: ignore[no-untyped-def]
    return sweep_outbox()
