"""NotifyWorker: SQS notifications queue -> one email per notification, partial batch failures."""

from frontdesk.observability import logger, metrics
from frontdesk.workers.notify import handle_notifications


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event, context):  # type: ignore[no-untyped-def]
    return handle_notifications(event, context)
