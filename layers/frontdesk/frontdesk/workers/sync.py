"""SyncWorker (the sync queue) and ProviderPoller (a schedule): events in, sync calls out.

One record handler per message kind, behind Powertools BatchProcessor: a transient
failure fails its record alone (SQS redelivers it after the visibility timeout; on the
last receive the job is marked dead), a malformed message fails alone and reaches the DLQ.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal
from uuid import UUID

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from pydantic import BaseModel, ConfigDict, Field

from frontdesk.config import Settings, get_settings
from frontdesk.errors import PermanentMessageError
from frontdesk.leads import imports
from frontdesk.observability import logger, metrics
from frontdesk.platform import jobs
from frontdesk.platform.crypto import get_blind_index, get_cipher
from frontdesk.platform.db import get_database, transaction
from frontdesk.platform.outbox import default_publisher
from frontdesk.platform.queues import parse_message
from frontdesk.sync import fetch as sync
from frontdesk.sync.webhooks import SYNC_FETCH_JOB

# Every record failing is reported record by record too (the same effect in SQS as failing
# the invocation, without an exception in the logs for an expected retry).
_processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


class SyncMessage(BaseModel):
    """The body of a sync queue message (written by outbox.enqueue_job_message)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: UUID = Field(alias="jobId")
    kind: Literal["sync.fetch", "sync.validate", "leads.import"]
    clinic_id: UUID = Field(alias="clinicId")

    @classmethod
    def parse(cls, body: str) -> SyncMessage:
        return parse_message(cls, body, "sync")


@cache
def ports() -> sync.SyncPorts:
    return sync.SyncPorts(get_cipher(), get_blind_index(), default_publisher())


def call_policy(settings: Settings) -> sync.CallPolicy:
    return sync.CallPolicy(
        timeout_seconds=settings.provider_timeout_seconds,
        max_attempts=settings.provider_max_attempts,
        backoff_base_seconds=settings.provider_backoff_base_seconds,
        backoff_max_seconds=settings.provider_backoff_max_seconds,
        breaker_threshold=settings.provider_breaker_failure_threshold,
        breaker_cooldown_seconds=settings.provider_breaker_cooldown_seconds,
    )


def _remaining(context: Any) -> Any:
    getter = getattr(context, "get_remaining_time_in_millis", None)
    if getter is None:
        return lambda: 900.0
    return lambda: getter() / 1000.0


def handle_sync(event: dict[str, Any], context: Any) -> dict[str, Any]:
    settings = get_settings()
    db = get_database()
    metrics.add_metric(name="SyncRecords", unit=MetricUnit.Count, value=len(event["Records"]))

    def record_handler(record: SQSRecord) -> str:
        attribute = record.message_attributes["requestId"]
        logger.set_correlation_id(attribute.string_value if attribute is not None else None)
        keys = {
            "message_id": record.message_id,
            "receive_count": record.attributes.approximate_receive_count,
        }
        try:
            message = SyncMessage.parse(record.body)
        except PermanentMessageError as exc:
            logger.error("message rejected", extra={**keys, "reason": exc.detail})
            metrics.add_metric(name="MessagesRejected", unit=MetricUnit.Count, value=1)
            raise
        keys["job_id"] = str(message.job_id)
        try:
            if message.kind == SYNC_FETCH_JOB:
                outcome = sync.run_fetch(
                    db,
                    ports(),
                    call_policy(settings),
                    job_id=message.job_id,
                    clinic_id=message.clinic_id,
                )
            elif message.kind == "sync.validate":
                outcome = sync.run_validate(
                    db,
                    ports(),
                    call_policy(settings),
                    job_id=message.job_id,
                    clinic_id=message.clinic_id,
                )
            else:
                p = ports()
                outcome = imports.run(
                    db,
                    imports.ImportPorts(p.cipher, p.blind_index, p.publisher),
                    job_id=message.job_id,
                    clinic_id=message.clinic_id,
                    chunk_bytes=settings.import_chunk_bytes,
                    remaining_seconds=_remaining(context),
                )
        except sync.TransientSyncError as exc:
            last = int(record.attributes.approximate_receive_count or 1)
            with transaction(db) as cur:
                if last >= settings.max_receive_count:
                    jobs.finish(cur, message.job_id, status="dead", error=str(exc))
                else:
                    jobs.record_error(cur, message.job_id, str(exc))
            logger.warning("sync will be retried", extra={**keys, "reason": str(exc)})
            metrics.add_metric(name="SyncRetries", unit=MetricUnit.Count, value=1)
            raise
        except Exception:
            # Unexpected (a bug, the database): the record fails alone and is retried.
            logger.exception("sync failed", extra=keys)
            raise
        if outcome == "busy":
            raise sync.TransientSyncError("another worker holds this import")
        logger.info("sync handled", extra={**keys, "kind": message.kind, "outcome": outcome})
        metrics.add_metric(name=f"Sync_{outcome}", unit=MetricUnit.Count, value=1)
        return outcome

    response = process_partial_response(
        event=event, record_handler=record_handler, processor=_processor, context=context
    )
    return dict(response)


def poll_providers() -> dict[str, int]:
    """ProviderPoller: every active account's missed changes, enqueued durably."""
    settings = get_settings()
    # No blind index here: the poller only reads cursors and enqueues jobs.
    totals = sync.poll_all(
        get_database(),
        get_cipher(),
        default_publisher(),
        call_policy(settings),
        max_changes=settings.poll_max_changes,
    )
    metrics.add_metric(name="PollMissed", unit=MetricUnit.Count, value=totals["missed"])
    logger.info("providers polled", extra=totals)
    return totals
