"""LlmWorker's record handler: one llm queue message -> at most one stored reply.

What happens to a message (used with Powertools BatchProcessor, ReportBatchItemFailures):
- reply stored, or nothing left to do (done, cancelled, duplicate): the record succeeds and
  Lambda deletes the message;
- permanent model error: the job fails with a readable error and the record succeeds;
- transient model error (timeout, 429, 5xx): the message's visibility timeout is set to an
  exponential backoff with jitter (ChangeMessageVisibility), then the record fails, so SQS
  hands it back after that delay; on the last receive (MAX_RECEIVE_COUNT) the job is marked
  dead and the message made visible at once, so the next receive moves it to the DLQ;
- circuit breaker open: the provider is not called and the attempt is not spent. The
  message is re-sent to the queue with DelaySeconds until the cool-down ends (a fresh copy
  with its receive count at zero) and the record succeeds, which deletes the original.
  Changing the visibility and failing the record would instead spend one of the message's
  maxReceiveCount receives on every wait, and a long outage would dead-letter every
  question without a single model call.
"""

from __future__ import annotations

import math
import random
from functools import cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from frontdesk.assistant import conversations as assistant
from frontdesk.assistant.llm import ChatModel, model_from_settings
from frontdesk.config import Settings, get_settings
from frontdesk.errors import PermanentMessageError
from frontdesk.observability import logger, metrics
from frontdesk.platform.db import get_database

# SQS limits: DelaySeconds at most 15 minutes, a visibility timeout at most 12 hours.
MAX_DELAY_SECONDS = 900
MAX_VISIBILITY_SECONDS = 43_200
# Time kept back from the Lambda deadline for the two short transactions around the call.
DEADLINE_MARGIN_SECONDS = 5.0
MIN_CALL_SECONDS = 1.0


@cache
def chat_model() -> ChatModel:
    """The container's model client, created on first use."""
    return model_from_settings(get_settings())


def reset_model() -> None:
    """Close and forget the container's model client (tests, benchmarks)."""
    if chat_model.cache_info().currsize:
        chat_model().close()
    chat_model.cache_clear()


def backoff_seconds(
    receive_count: int, base: float, cap: float, *, hint: float | None = None
) -> int:
    """Exponential backoff with equal jitter: half of base * 2^(n-1) fixed, half random,
    capped; never shorter than the provider's own Retry-After hint."""
    ceiling = min(cap, base * 2 ** max(0, receive_count - 1))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    if hint is not None:
        delay = max(delay, min(hint, cap))
    return int(min(MAX_VISIBILITY_SECONDS, math.ceil(delay)))


def call_timeout(settings: Settings, remaining_ms: int | None) -> float:
    """The per-call timeout: the setting, but always inside the function's remaining time."""
    timeout = settings.llm_timeout_seconds
    if remaining_ms is not None:
        timeout = min(timeout, remaining_ms / 1000 - DEADLINE_MARGIN_SECONDS)
    return max(MIN_CALL_SECONDS, timeout)


def _request_id(record: SQSRecord) -> str | None:
    attribute = record.message_attributes["requestId"]  # None when absent
    return attribute.string_value if attribute is not None else None


def _queue_url(settings: Settings) -> str:
    if not settings.llm_queue_url:
        raise RuntimeError("LLM_QUEUE_URL is not set")
    return settings.llm_queue_url


def _retry_later(record: SQSRecord, seconds: int, settings: Settings) -> None:
    from frontdesk.platform.aws import client

    client("sqs").change_message_visibility(
        QueueUrl=_queue_url(settings),
        ReceiptHandle=record.receipt_handle,
        VisibilityTimeout=seconds,
    )


def _send_again_later(record: SQSRecord, seconds: float, settings: Settings) -> int:
    """A copy of the message, delayed until the breaker's cool-down is over."""
    from frontdesk.platform.aws import client

    delay = min(MAX_DELAY_SECONDS, math.ceil(seconds + random.uniform(0, 1)))
    waits = record.message_attributes["breakerWaits"]
    attributes: dict[str, Any] = {
        "breakerWaits": {
            "DataType": "Number",
            "StringValue": str(int(waits.string_value or 0) + 1 if waits is not None else 1),
        }
    }
    request_id = _request_id(record)
    if request_id:
        attributes["requestId"] = {"DataType": "String", "StringValue": request_id}
    client("sqs").send_message(
        QueueUrl=_queue_url(settings),
        MessageBody=record.body,
        DelaySeconds=delay,
        MessageAttributes=attributes,
    )
    return delay


def llm_record(record: SQSRecord, lambda_context: Any = None) -> str:
    receive_count = int(record.attributes.approximate_receive_count or 1)
    logger.set_correlation_id(_request_id(record))
    logger.append_keys(message_id=record.message_id, receive_count=receive_count)
    settings = get_settings()
    try:
        message = assistant.ReplyJobMessage.parse(record.body)
        remaining = lambda_context.get_remaining_time_in_millis() if lambda_context else None
        result = assistant.answer(
            get_database(),
            chat_model(),
            message,
            assistant.WorkerPolicy(
                breaker_threshold=settings.llm_breaker_failure_threshold,
                breaker_cooldown_seconds=settings.llm_breaker_cooldown_seconds,
                history_messages=settings.llm_history_messages,
            ),
            timeout_seconds=call_timeout(settings, remaining),
            last_attempt=receive_count >= settings.max_receive_count,
        )
        if result.outcome == "wait":
            delay = _send_again_later(record, result.wait_seconds, settings)
            logger.info("circuit open: message re-sent with a delay", extra={"delay_s": delay})
            metrics.add_metric(name="LlmBreakerWaits", unit=MetricUnit.Count, value=1)
            return result.outcome
    except PermanentMessageError as exc:
        logger.error("message rejected", extra={"reason": exc.detail})
        metrics.add_metric(name="MessagesRejected", unit=MetricUnit.Count, value=1)
        raise
    except assistant.ReplyDeferred as exc:
        if exc.dead:
            # Visible again at once: the next receive moves it to the DLQ (SQS counts it
            # past maxReceiveCount) instead of after a whole visibility timeout.
            _retry_later(record, 0, settings)
            logger.error("reply abandoned after the last attempt", extra={"reason": exc.reason})
            metrics.add_metric(name="LlmRepliesDead", unit=MetricUnit.Count, value=1)
        else:
            delay = backoff_seconds(
                receive_count,
                settings.llm_retry_base_seconds,
                settings.llm_retry_max_seconds,
                hint=exc.retry_after_seconds,
            )
            _retry_later(record, delay, settings)
            logger.warning("reply will be retried", extra={"reason": exc.reason, "delay_s": delay})
            metrics.add_metric(name="LlmRetries", unit=MetricUnit.Count, value=1)
        raise
    finally:
        logger.remove_keys(["message_id", "receive_count"])
    logger.info(
        "assistant reply handled",
        extra={"job_id": str(message.job_id), "outcome": result.outcome, "tokens": result.tokens},
    )
    metrics.add_metric(name=f"LlmReplies_{result.outcome}", unit=MetricUnit.Count, value=1)
    return result.outcome
