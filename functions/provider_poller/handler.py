"""ProviderPoller: every 15 minutes, enqueue the provider changes webhooks missed."""

from frontdesk.observability import logger, metrics
from frontdesk.workers.sync import poll_providers


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event, context):  # type: ignore[no-untyped-def]
    return poll_providers()
