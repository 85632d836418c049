"""LlmWorker: SQS llm queue -> one assistant reply per job, partial batch failures."""

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)

from frontdesk.observability import logger, metrics
from frontdesk.workers.llm import llm_record

processor = BatchProcessor(event_type=EventType.SQS)


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event, context):  # type: ignore[no-untyped-def]
    metrics.add_metric(name="LlmRecords", unit=MetricUnit.Count, value=len(event["Records"]))
    return process_partial_response(
        event=event, record_handler=llm_record, processor=processor, context=context
    )
