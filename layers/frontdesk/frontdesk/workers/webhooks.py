"""WebhookWorker (the webhooks queue): domain events fanned out to the clinic's endpoints,
and the deliveries they become posted, signed (frontdesk.webhooks.delivery).

A batch holds both kinds of message. The events of a batch are fanned out in one unit of
work (a delivery row and message per matching endpoint; a redelivered event adds nothing)
and their records succeed. The deliveries of a batch are attempted together, the posts
concurrent; what becomes of each record:
- delivered, or nothing left to do (delivered before, its endpoint deleted or disabled,
  another copy of the message being posted by another worker): the record succeeds and
  Lambda deletes the message;
- failed: the message's visibility timeout is set to a full-jitter backoff
  (ChangeMessageVisibility, at most 900 s) and the record fails, so SQS hands it back
  after that delay: the next attempt;
- failed on the last receive (MAX_RECEIVE_COUNT): the delivery is marked failed and the
  message made visible at once, so the next receive moves it to the DLQ, where the
  dead-letter listing shows the delivery's state and last error as the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from frontdesk.entry import lambda_handler
from frontdesk.observability import metrics
from frontdesk.platform.queues import BusEvent, Queue, WebhookDeliveryMessage
from frontdesk.services import Services, get_services
from frontdesk.sync.egress import Egress
from frontdesk.webhooks import delivery
from frontdesk.workers.records import Item, QueueWorker, RecordOutcome, Retry, reappear_after

# Secrets are decrypted with the PII key; fan-outs queue deliveries on this same queue.
NEEDS = ("database", "kms_key_id", "webhooks_queue_url")


def _later(services: Services, item: Item[Any], seconds: int) -> None:
    sqs, url = services.aws.client("sqs"), services.settings.webhooks_queue_url
    reappear_after(sqs, url, item.context.record, seconds)


def handle(items: Sequence[Item[Any]], lambda_context: Any) -> dict[str, RecordOutcome]:
    services = get_services()
    settings = services.settings
    outcomes: dict[str, RecordOutcome] = {}
    events = [i for i in items if isinstance(i.message, BusEvent)]
    deliveries = [i for i in items if isinstance(i.message, WebhookDeliveryMessage)]
    if events:
        with services.unit_of_work(request_id=events[0].context.request_id) as uow:
            counts = delivery.fan_out(uow, [i.message for i in events])
        for item, count in zip(events, counts, strict=True):
            outcomes[item.context.message_id] = "fanned_out" if count else "no_endpoints"
    if not deliveries:
        return outcomes
    policy = delivery.Policy(
        connect_timeout=settings.webhook_connect_timeout_seconds,
        retry_base_seconds=settings.webhook_retry_base_seconds,
        retry_max_seconds=settings.webhook_retry_max_seconds,
        disable_after_failures=settings.webhook_disable_after_failures,
    )
    results = delivery.attempt(
        services.database,
        services.cipher,
        Egress.for_webhooks(settings),
        policy,
        lambda: services.unit_of_work(request_id=deliveries[0].context.request_id),
        [(i.message, i.context.is_last_attempt) for i in deliveries],
    )
    for item, result in zip(deliveries, results, strict=True):
        if result.outcome == "retry":
            _later(services, item, result.delay)
            outcomes[item.context.message_id] = Retry(f"{result.reason}; again in {result.delay} s")
        elif result.outcome == "given_up":
            # Visible again at once: the next receive moves it to the DLQ.
            _later(services, item, 0)
            metrics.add_metric(name="WebhookDeliveriesFailed", unit=MetricUnit.Count, value=1)
            outcomes[item.context.message_id] = Retry(
                f"{result.reason}; the message goes to the DLQ"
            )
        else:
            outcomes[item.context.message_id] = result.outcome
    return outcomes


def describe(message: Any) -> dict[str, Any]:
    if isinstance(message, BusEvent):
        return {"event_id": str(message.event_id), "event_type": message.detail_type.value}
    return {"delivery_id": str(message.delivery_id)}


worker = QueueWorker("Webhook", Queue.WEBHOOKS, handle, "webhook message", describe)


def make_handler() -> Any:
    return lambda_handler("WebhookWorker", NEEDS, worker)
