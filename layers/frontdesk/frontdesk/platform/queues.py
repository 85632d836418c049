"""Queues and the messages on them: one home for every message format.

Three queues take handed-off work. A queue carries job messages (a row of `jobs` to work
on), and the notifications queue also reminders and the appointment events an EventBridge
rule routes to it. The push queue carries domain events (a rule routes them); the webhooks
queue domain events (to fan out to the clinic's endpoints) and outbound deliveries. A
`JobKind` knows its queue, so a producer names the kind of work and never a queue; each
queue has one parser (`parse`), used by its worker and by the dead-letter routes to explain
a body the worker refused. A refusal names fields and error types, never values: a message
may carry PII.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)

from frontdesk.errors import PermanentMessageError


class Queue(StrEnum):
    """A source queue, by the logical name outbox rows and settings use."""

    NOTIFICATIONS = "notifications"
    LLM = "llm"
    SYNC = "sync"
    PUSH = "push"
    WEBHOOKS = "webhooks"

    @property
    def label(self) -> str:
        """How refusals name this queue's messages."""
        return "notify" if self is Queue.NOTIFICATIONS else self.value


class JobKind(StrEnum):
    """A kind of handed-off work: a `jobs` row and a message on the kind's queue."""

    NOTIFY_LEAD_CREATED = "notify.lead_created"
    ASSISTANT_REPLY = "assistant.reply"
    SYNC_FETCH = "sync.fetch"
    SYNC_VALIDATE = "sync.validate"
    LEADS_IMPORT = "leads.import"

    @property
    def queue(self) -> Queue:
        return _JOB_QUEUES[self]


_JOB_QUEUES = {
    JobKind.NOTIFY_LEAD_CREATED: Queue.NOTIFICATIONS,
    JobKind.ASSISTANT_REPLY: Queue.LLM,
    JobKind.SYNC_FETCH: Queue.SYNC,
    JobKind.SYNC_VALIDATE: Queue.SYNC,
    JobKind.LEADS_IMPORT: Queue.SYNC,
}


class EventType(StrEnum):
    """Domain events: written to the outbox with the change, published to the bus."""

    LEAD_CREATED = "lead.created"
    LEAD_UPDATED = "lead.updated"
    # The inbox's lifecycle (frontdesk.leads.inbox): ids, statuses, staff subjects only.
    LEAD_STATUS_CHANGED = "lead.status_changed"
    LEAD_ASSIGNED = "lead.assigned"
    LEAD_NOTES_CHANGED = "lead.notes_changed"
    APPOINTMENT_BOOKED = "appointment.booked"
    APPOINTMENT_RESCHEDULED = "appointment.rescheduled"
    APPOINTMENT_CANCELLED = "appointment.cancelled"
    APPOINTMENT_COMPLETED = "appointment.completed"
    APPOINTMENT_NO_SHOW = "appointment.no_show"
    DOCTOR_UPDATED = "doctor.updated"
    DOCTOR_DEACTIVATED = "doctor.deactivated"
    DOCTOR_ACTIVATED = "doctor.activated"
    LEAD_IMPORT_COMPLETED = "lead_import.completed"
    # Written by the jobs table's trigger on every change of a job's status or progress.
    JOB_PROGRESS = "job.progress"
    JOB_COMPLETED = "job.completed"
    JOB_FAILED = "job.failed"
    # The assistant's reply as it streams, then its end (frontdesk.assistant.reply_events:
    # the text travels encrypted).
    ASSISTANT_REPLY_DELTA = "assistant.reply.delta"
    ASSISTANT_REPLY_DONE = "assistant.reply.done"
    # An outbound webhook endpoint was disabled after a run of failed attempts
    # (frontdesk.webhooks.delivery).
    WEBHOOK_ENDPOINT_DISABLED = "webhook.endpoint_disabled"


EVENT_SOURCE = "frontdesk"
REMINDER_KIND = "appointment.reminder"


class JobMessage(BaseModel):
    """`{"jobId", "kind", "clinicId"}`: the job to work on; its row holds the rest."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    job_id: UUID = Field(alias="jobId")
    kind: JobKind
    clinic_id: UUID = Field(alias="clinicId")

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class ReminderMessage(BaseModel):
    """`{"reminderId", "kind": "appointment.reminder", "clinicId"}` (the Reminders schedule)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    reminder_id: UUID = Field(alias="reminderId")
    kind: Literal["appointment.reminder"] = "appointment.reminder"
    clinic_id: UUID = Field(alias="clinicId")

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class WebhookDeliveryMessage(BaseModel):
    """`{"deliveryId", "kind": "webhook.delivery", "clinicId"}`: one outbound delivery to
    attempt (its row holds the endpoint, the body and the attempts so far)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    delivery_id: UUID = Field(alias="deliveryId")
    kind: Literal["webhook.delivery"] = "webhook.delivery"
    clinic_id: UUID = Field(alias="clinicId")

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class AppointmentDetail(BaseModel):
    """The detail of an `appointment.*` event: ids and times, never PII."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: UUID = Field(alias="eventId")
    appointment_id: UUID = Field(alias="appointmentId")
    clinic_id: UUID = Field(alias="clinicId")
    starts_at: datetime = Field(alias="startsAt")


class AppointmentEvent(BaseModel):
    """An `appointment.*` event as an EventBridge rule's SQS target delivers it: the whole
    EventBridge envelope, the domain event's detail inside."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    source: Literal["frontdesk"]
    detail_type: Literal[
        "appointment.booked", "appointment.rescheduled", "appointment.cancelled"
    ] = Field(alias="detail-type")
    detail: AppointmentDetail


class BusEvent(BaseModel):
    """A domain event as an EventBridge rule's SQS target delivers it: the envelope, and the
    detail every event carries (its stable eventId and its clinic) besides its own fields."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    id: str
    source: Literal["frontdesk"]
    detail_type: EventType = Field(alias="detail-type")
    detail: dict[str, Any]
    time: str | None = None  # when EventBridge took the event (ISO 8601, UTC)
    event_id: UUID = Field(alias="eventId")
    clinic_id: UUID = Field(alias="clinicId")

    @model_validator(mode="before")
    @classmethod
    def _ids_from_detail(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("detail"), dict):
            detail = data["detail"]
            return {**data, "eventId": detail.get("eventId"), "clinicId": detail.get("clinicId")}
        return data


type QueueMessage = (
    JobMessage | ReminderMessage | AppointmentEvent | BusEvent | WebhookDeliveryMessage
)


def validation_reasons(exc: ValidationError) -> str:
    """Field locations and error types, never the values (a message may carry PII)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['type']}" for err in exc.errors()
    )


def parse_model[M: BaseModel](model: type[M], body: str, what: str) -> M:
    """The body as `model`; a malformed one is a PermanentMessageError with a reason."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise PermanentMessageError(
            f"malformed {what} message ({validation_reasons(exc)})"
        ) from None


def _jobs_of(queue: Queue) -> type[JobMessage]:
    """A JobMessage whose kind must be one of the queue's job kinds."""
    kinds = tuple(kind.value for kind in JobKind if kind.queue is queue)
    kind_type: Any = Literal.__getitem__(kinds)
    model: type[JobMessage] = create_model(
        f"{queue.name.title()}JobMessage", __base__=JobMessage, kind=(kind_type, ...)
    )
    return model


_NOTIFICATIONS: TypeAdapter[JobMessage | ReminderMessage] = TypeAdapter(
    Annotated[_jobs_of(Queue.NOTIFICATIONS) | ReminderMessage, Field(discriminator="kind")]
)
_JOB_MESSAGES = {queue: _jobs_of(queue) for queue in (Queue.LLM, Queue.SYNC)}
# The push queue carries the domain events a rule routes to it, nothing else.
_EVENTS: dict[Queue, type[BaseModel]] = {Queue.PUSH: BusEvent}


def parse(queue: Queue, body: str) -> QueueMessage:
    """A body of `queue` as its typed message; PermanentMessageError when malformed."""
    if queue in _EVENTS:
        event: BusEvent = parse_model(BusEvent, body, queue.label)
        return event
    if queue is Queue.WEBHOOKS:  # a domain event to fan out, or a delivery to attempt
        return _event_or(queue, body, BusEvent, WebhookDeliveryMessage.model_validate)
    if queue is Queue.NOTIFICATIONS:  # an appointment's event, or a notification job
        return _event_or(queue, body, AppointmentEvent, _NOTIFICATIONS.validate_python)
    return parse_model(_JOB_MESSAGES[queue], body, queue.label)


def _event_or(
    queue: Queue,
    body: str,
    event: type[BusEvent | AppointmentEvent],
    other: Callable[[Any], QueueMessage],
) -> QueueMessage:
    """A body of a queue that takes both the bus's events (they have a detail-type) and
    messages of its own, parsed once."""
    try:
        data = json.loads(body)
        if isinstance(data, dict) and "detail-type" in data:
            return event.model_validate(data)
        return other(data)
    except ValidationError as exc:
        reason = validation_reasons(exc)
    except ValueError:
        reason = "not JSON"
    raise PermanentMessageError(f"malformed {queue.label} message ({reason})")
