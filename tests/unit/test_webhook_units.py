"""Outbound webhooks without I/O: the retry backoff, what a receiver gets, the webhooks
queue's parser, and the endpoint models' refusals."""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import ValidationError

from frontdesk.errors import PermanentMessageError
from frontdesk.platform.queues import BusEvent, Queue, WebhookDeliveryMessage, parse
from frontdesk.platform.signature import check_timestamp, parse_signature, verify
from frontdesk.webhooks.delivery import MAX_DELAY_SECONDS, payload_of, retry_delay, signed_request
from frontdesk.webhooks.endpoints import SUBSCRIBABLE, EndpointIn

CLINIC = "00000000-0000-4000-8000-000000000001"


def bus_event(detail_type: str = "lead.created") -> dict[str, object]:
    return {
        "id": "eb-1",
        "source": "frontdesk",
        "detail-type": detail_type,
        "time": "2026-11-28T09:00:00Z",
        "detail": {
            "eventId": str(uuid.uuid4()),
            "clinicId": CLINIC,
            "leadId": str(uuid.uuid4()),
            "requestId": "req-1",
        },
    }


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 10, 40])
def test_the_backoff_is_full_jitter_under_its_ceiling_and_never_over_900_s(attempt: int) -> None:
    # Given the default base and cap / When many delays are drawn
    delays = [retry_delay(attempt, 60, 900) for _ in range(300)]
    # Then each is within [0, min(900, 60 x 2^(attempt-1))] (rounded up to whole seconds)
    ceiling = min(900, 60 * 2 ** (attempt - 1))
    assert all(0 <= d <= ceiling for d in delays)
    assert max(delays) <= MAX_DELAY_SECONDS
    # And they spread over the range (full jitter, not a fixed wait)
    assert len(set(delays)) > 10


def test_a_cap_beyond_sqs_is_held_to_900_s() -> None:
    assert all(retry_delay(30, 10_000, 10_000) <= 900 for _ in range(100))


def test_the_body_carries_the_event_id_and_ids_only() -> None:
    # Given an event as the rule delivers it
    event = BusEvent.model_validate(bus_event())
    # When its body is made
    body = payload_of(event)
    # Then it names the event, its type, time and clinic, and the detail without our own keys
    assert body["id"] == str(event.event_id) and body["type"] == "lead.created"
    assert body["createdAt"] == "2026-11-28T09:00:00Z" and body["clinicId"] == CLINIC
    assert set(body["data"]) == {"leadId"}


def test_a_signed_request_verifies_with_our_verifier_and_names_the_event() -> None:
    # Given a delivery row / When its request is signed
    row = {
        "id": uuid.uuid4(),
        "event_id": uuid.uuid4(),
        "event_type": "lead.created",
        "payload": {"id": "e", "data": {"leadId": "l"}},
    }
    body, headers = signed_request(["whsec_unit"], row, 2, now=1_800_000_000)
    # Then the receiver's check passes with the secret, and fails with another
    signature = parse_signature(headers["Webhook-Signature"])
    check_timestamp(signature, now=1_800_000_010, tolerance_seconds=300)
    verify(b"whsec_unit", signature, body)
    with pytest.raises(Exception, match="does not match"):
        verify(b"whsec_other", signature, body)
    assert headers["Webhook-Event-Id"] == str(row["event_id"])
    assert headers["Webhook-Delivery-Id"] == str(row["id"])
    assert headers["Webhook-Attempt"] == "2"
    assert json.loads(body) == row["payload"]


def test_the_webhooks_queue_takes_events_and_deliveries_and_refuses_the_rest() -> None:
    delivery = WebhookDeliveryMessage(delivery_id=uuid.uuid4(), clinic_id=uuid.UUID(CLINIC))
    assert parse(Queue.WEBHOOKS, json.dumps(delivery.body())) == delivery
    assert isinstance(parse(Queue.WEBHOOKS, json.dumps(bus_event())), BusEvent)
    for body in ("not json", '{"deliveryId": "x", "kind": "webhook.delivery"}', "[]"):
        with pytest.raises(PermanentMessageError, match="malformed webhooks message"):
            parse(Queue.WEBHOOKS, body)


def test_endpoint_event_types_are_the_subscribable_ones() -> None:
    assert "lead.created" in SUBSCRIBABLE and "webhook.endpoint_disabled" in SUBSCRIBABLE
    assert not [t for t in SUBSCRIBABLE if t.startswith("assistant.reply")]
    chosen = EndpointIn(url="https://hooks.example/in", eventTypes=["job.failed", "lead.created"])
    assert chosen.eventTypes == ["job.failed", "lead.created"]
    for types in ([], ["assistant.reply.done"], ["lead.created", "nope"]):
        with pytest.raises(ValidationError):
            EndpointIn(url="https://hooks.example/in", eventTypes=types)
