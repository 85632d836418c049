"""PushWorker: SQS push queue (domain events from the bus) -> the browsers that follow them.

Each batch is pushed at once (frontdesk.push.delivery): one query for every event's
followers, the posts concurrent. An event delivered to all its followers, or with none,
is done; one whose post failed otherwise is retried alone (its followers may then see it
twice: they dedupe on `eventId`), and dead-lettered with its reason after the last attempt.
A reply event whose text cannot be opened is refused (dead-lettered with the reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from frontdesk.entry import lambda_handler
from frontdesk.errors import PermanentMessageError
from frontdesk.platform.queues import BusEvent, Queue
from frontdesk.push.delivery import push
from frontdesk.services import get_services
from frontdesk.workers.records import Item, QueueWorker, RecordOutcome, Retry

# The assistant's reply events carry the text encrypted: the PII key decrypts it.
NEEDS = ("database", "websocket_management_url", "kms_key_id")


def deliver(items: Sequence[Item[BusEvent]], lambda_context: Any) -> dict[str, RecordOutcome]:
    events = [item.message for item in items]
    services = get_services()
    results = push(services.database, services.cipher, services.websocket_management, events)
    outcomes: dict[str, RecordOutcome] = {}
    for item, result in zip(items, results, strict=True):
        if result.refused is not None:
            outcomes[item.context.message_id] = PermanentMessageError(result.refused)
        elif result.failed:
            outcomes[item.context.message_id] = Retry(
                f"{len(result.failed)} of {len(result.failed) + result.delivered} posts failed:"
                f" {result.failed[0]}"
            )
        else:
            outcomes[item.context.message_id] = "delivered" if result.delivered else "no_followers"
    return outcomes


def describe(event: BusEvent) -> dict[str, Any]:
    return {"event_id": str(event.event_id), "event_type": event.detail_type.value}


worker = QueueWorker("Push", Queue.PUSH, deliver, "event", describe)


def make_handler() -> Any:
    return lambda_handler("PushWorker", NEEDS, worker)
