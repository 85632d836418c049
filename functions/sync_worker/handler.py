"""SyncWorker: SQS sync queue -> provider fetches, credential checks, CSV imports."""

from frontdesk.observability import logger, metrics
from frontdesk.workers.sync import handle_sync


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event, context):  # type: ignore[no-untyped-def]
    return handle_sync(event, context)
