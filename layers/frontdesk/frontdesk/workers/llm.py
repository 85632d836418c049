"""LlmWorker (the llm queue): one message -> at most one stored reply
(frontdesk.assistant.replies), a record at a time, streamed to staff as it is generated
(`assistant.reply.delta` events a few times a second, relayed as they commit, then
`assistant.reply.done`; frontdesk.assistant.reply_events).

What happens to a message:
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
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from frontdesk.assistant import replies
from frontdesk.config import Settings
from frontdesk.entry import lambda_handler
from frontdesk.observability import logger, metrics
from frontdesk.platform.queues import JobMessage, Queue
from frontdesk.services import Services, get_services
from frontdesk.workers.records import (
    Item,
    QueueWorker,
    RecordContext,
    Retry,
    one_by_one,
    reappear_after,
)

NEEDS = ("database", "llm_queue_url", "kms_key_id")

# SQS limits: DelaySeconds at most 15 minutes, a visibility timeout at most 12 hours.
MAX_DELAY_SECONDS = 900
MAX_VISIBILITY_SECONDS = 43_200
# Time kept back from the Lambda deadline for the two short transactions around the call.
DEADLINE_MARGIN_SECONDS = 5.0
MIN_CALL_SECONDS = 1.0


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


def _retry_later(services: Services, record: SQSRecord, seconds: int) -> None:
    reappear_after(services.aws.client("sqs"), services.settings.llm_queue_url, record, seconds)


def _send_again_later(services: Services, context: RecordContext, seconds: float) -> int:
    """A copy of the message, delayed until the breaker's cool-down is over."""
    record = context.record
    delay = min(MAX_DELAY_SECONDS, math.ceil(seconds + random.uniform(0, 1)))
    waits = record.message_attributes["breakerWaits"]
    attributes: dict[str, Any] = {
        "breakerWaits": {
            "DataType": "Number",
            "StringValue": str(int(waits.string_value or 0) + 1 if waits is not None else 1),
        }
    }
    if context.request_id:
        attributes["requestId"] = {"DataType": "String", "StringValue": context.request_id}
    services.aws.client("sqs").send_message(
        QueueUrl=services.settings.llm_queue_url,
        MessageBody=record.body,
        DelaySeconds=delay,
        MessageAttributes=attributes,
    )
    return delay


def answer(item: Item[JobMessage], lambda_context: Any) -> str:
    services = get_services()
    settings = services.settings
    context, message = item.context, item.message
    remaining = lambda_context.get_remaining_time_in_millis() if lambda_context else None
    try:
        result = replies.answer(
            services.database,
            services.cipher,
            services.chat_model,
            message,
            replies.WorkerPolicy(
                breaker_threshold=settings.llm_breaker_failure_threshold,
                breaker_cooldown_seconds=settings.llm_breaker_cooldown_seconds,
                history_messages=settings.llm_history_messages,
                delta_interval_seconds=settings.llm_delta_interval_ms / 1000,
                first_token_seconds=settings.llm_first_token_timeout_seconds,
                cache_ttl_seconds=settings.assistant_reply_cache_ttl_seconds,
            ),
            timeout_seconds=call_timeout(settings, remaining),
            last_attempt=context.is_last_attempt,
            relay=services.handoff,
        )
    except replies.ReplyDeferred as exc:
        if exc.dead:
            # Visible again at once: the next receive moves it to the DLQ (SQS counts it
            # past maxReceiveCount) instead of after a whole visibility timeout.
            _retry_later(services, context.record, 0)
            logger.error("reply abandoned after the last attempt", extra={"reason": exc.reason})
            metrics.add_metric(name="LlmRepliesDead", unit=MetricUnit.Count, value=1)
            raise Retry(f"{exc.reason}; the message goes to the DLQ") from exc
        delay = backoff_seconds(
            context.receive_count,
            settings.llm_retry_base_seconds,
            settings.llm_retry_max_seconds,
            hint=exc.retry_after_seconds,
        )
        _retry_later(services, context.record, delay)
        raise Retry(f"{exc.reason}; again in {delay} s") from exc
    if result.deltas:
        metrics.add_metric(name="LlmReplyDeltas", unit=MetricUnit.Count, value=result.deltas)
    if result.outcome == "wait":
        delay = _send_again_later(services, context, result.wait_seconds)
        logger.info("circuit open: message re-sent with a delay", extra={"delay_s": delay})
        metrics.add_metric(name="LlmBreakerWaits", unit=MetricUnit.Count, value=1)
    return result.outcome


def describe(message: JobMessage) -> dict[str, Any]:
    return {"job_id": str(message.job_id)}


worker = QueueWorker("Llm", Queue.LLM, one_by_one(answer), "assistant reply", describe)


def make_handler() -> Any:
    return lambda_handler("LlmWorker", NEEDS, worker)
