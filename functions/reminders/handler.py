"""Reminders: every 5 minutes, enqueue each due appointment reminder exactly once."""

from frontdesk.observability import logger, metrics
from frontdesk.workers.notify import send_reminders


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event, context):  # type: ignore[no-untyped-def]
    return send_reminders()
