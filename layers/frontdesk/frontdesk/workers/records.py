"""One shape for every SQS worker: parse each record, handle the batch, report per record.

A queue worker is a batch handler, `handle(items, lambda_context) -> {message id: outcome
or exception}`, given the parsed messages with a `RecordContext` each (message id, request
id, receive count, `is_last_attempt`). Workers that handle a record at a time use
`one_by_one`. The machinery around it is the same for every queue:

- a body the queue's parser refuses is rejected: logged with the reason, counted
  (`MessagesRejected`), and its record fails until SQS dead-letters it;
- an outcome (a string) deletes the record; an exception fails only its record, which SQS
  redelivers after the visibility timeout (the worker may have shortened it);
- an error of the whole batch (the database unreachable) fails every record, reported as
  batch item failures: the function itself never fails for a batch, so its Errors alarm
  means a bug, not an outage.

Powertools' BatchProcessor builds the `batchItemFailures` answer
(`raise_on_entire_batch_failure=False`: every record failing is an answer too).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from frontdesk.errors import FrontdeskError, PermanentMessageError
from frontdesk.observability import logger, metrics
from frontdesk.platform.queues import Queue, QueueMessage, parse


@dataclass(frozen=True)
class RecordContext:
    """What a worker knows about one record besides its message."""

    record: SQSRecord
    message_id: str
    request_id: str | None
    receive_count: int
    is_last_attempt: bool  # maxReceiveCount reached: failing now dead-letters the message

    @classmethod
    def of(cls, record: SQSRecord, max_receive_count: int) -> RecordContext:
        attribute = record.message_attributes["requestId"]  # None when absent
        receive_count = int(record.attributes.approximate_receive_count or 1)
        return cls(
            record=record,
            message_id=record.message_id,
            request_id=attribute.string_value if attribute is not None else None,
            receive_count=receive_count,
            is_last_attempt=receive_count >= max_receive_count,
        )


@dataclass(frozen=True)
class Item[M: QueueMessage]:
    context: RecordContext
    message: M


RecordOutcome = str | Exception
BatchHandler = Callable[[Sequence[Item[Any]], Any], Mapping[str, RecordOutcome]]


def one_by_one(handle: Callable[[Item[Any], Any], str]) -> BatchHandler:
    """A batch handler from a record handler: each record's exception is its own outcome."""

    def handle_batch(items: Sequence[Item[Any]], lambda_context: Any) -> dict[str, RecordOutcome]:
        outcomes: dict[str, RecordOutcome] = {}
        for item in items:
            logger.set_correlation_id(item.context.request_id)
            try:
                outcomes[item.context.message_id] = handle(item, lambda_context)
            except Exception as exc:
                outcomes[item.context.message_id] = exc
        return outcomes

    return handle_batch


def reappear_after(sqs: Any, queue_url: str, record: SQSRecord, seconds: int) -> None:
    """Make the record's message visible again in `seconds` (ChangeMessageVisibility): when
    the record fails, SQS hands it back then, not after the queue's visibility timeout."""
    sqs.change_message_visibility(
        QueueUrl=queue_url, ReceiptHandle=record.receipt_handle, VisibilityTimeout=seconds
    )


class Retry(Exception):
    """An expected, transient failure: the record fails and SQS redelivers it."""


def _no_keys(message: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class QueueWorker:
    """The worker of one queue: its name (metrics), the queue (its parser), the batch handler,
    what it handles (log lines say "<what> handled") and what to log of a message besides
    its ids (`describe`: ids, never PII)."""

    name: str
    queue: Queue
    handle: BatchHandler
    what: str
    describe: Callable[[Any], dict[str, Any]] = _no_keys

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        from frontdesk.services import get_services

        max_receive_count = get_services().settings.max_receive_count
        records = [SQSRecord(raw) for raw in event["Records"]]
        metrics.add_metric(name=f"{self.name}Records", unit=MetricUnit.Count, value=len(records))
        contexts = {r.message_id: RecordContext.of(r, max_receive_count) for r in records}
        items: list[Item[Any]] = []
        outcomes: dict[str, RecordOutcome] = {}
        messages: dict[str, Any] = {}
        for record in records:
            try:
                message = parse(self.queue, record.body)
            except PermanentMessageError as exc:
                outcomes[record.message_id] = exc
                continue
            messages[record.message_id] = message
            items.append(Item(contexts[record.message_id], message))
        if items:
            try:
                outcomes.update(self.handle(items, context))
            except Exception as exc:  # the whole batch failed (the database is down)
                logger.warning(
                    "batch failed; every record will be retried",
                    extra={"error": _error_name(exc), "records": len(items)},
                )
                outcomes.update({item.context.message_id: exc for item in items})

        def report(record: SQSRecord) -> str:
            ctx = contexts[record.message_id]
            logger.set_correlation_id(ctx.request_id)
            keys: dict[str, Any] = {
                "message_id": ctx.message_id,
                "receive_count": ctx.receive_count,
            }
            if record.message_id in messages:
                keys.update(self.describe(messages[record.message_id]))
            outcome = outcomes.get(record.message_id)
            if outcome is None:
                outcome = RuntimeError("the worker gave no outcome for this record")
            if isinstance(outcome, PermanentMessageError):
                reject(outcome, keys)
            if isinstance(outcome, Exception):
                logger.warning(
                    f"{self.what} will be retried",
                    extra={**keys, "reason": _reason(outcome)},
                    exc_info=not isinstance(outcome, Retry | FrontdeskError),
                )
                metrics.add_metric(name=f"{self.name}Retries", unit=MetricUnit.Count, value=1)
                raise outcome
            logger.info(f"{self.what} handled", extra={**keys, "outcome": outcome})
            metrics.add_metric(name=f"{self.name}_{outcome}", unit=MetricUnit.Count, value=1)
            return outcome

        processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
        return dict(
            process_partial_response(
                event=event, record_handler=report, processor=processor, context=context
            )
        )


def reject(exc: PermanentMessageError, keys: Mapping[str, Any]) -> None:
    """A message that can never succeed: log why, count it, fail its record (SQS moves it to
    the DLQ after maxReceiveCount receives; the dead-letter routes show the same reason)."""
    logger.error("message rejected", extra={**keys, "reason": exc.detail})
    metrics.add_metric(name="MessagesRejected", unit=MetricUnit.Count, value=1)
    raise exc


def _reason(exc: Exception) -> str:
    return exc.detail if isinstance(exc, FrontdeskError) else str(exc) or _error_name(exc)


def _error_name(exc: Exception) -> str:
    return type(exc).__name__
