"""Patient notifications: appointment confirmations, changes and reminders by email (SES)
and SMS (SNS), per the clinic's settings, once per notification id and channel.

The notifications queue carries three shapes (frontdesk.platform.queues parses them):
a job message (the staff email, frontdesk.notifications.staff), an `appointment.*` event
in its EventBridge envelope (the rule in template.yaml routes it here) and a reminder
(frontdesk.appointments.reminders); the last two become a `PatientNotice`.

A batch of patient notices is handled like the staff emails: (1) one short transaction
reads every notice's appointment, patient and clinic and claims one delivery row per
notification id and channel; (2) with no transaction open, the contact details are
decrypted, the emails go out in one SES SendBulkTemplatedEmail call and the SMS one SNS
Publish each (SNS has no batch call for phone numbers: PublishBatch only takes topics);
(3) one short transaction marks each delivery sent or failed. A redelivered message finds
its deliveries sent and sends nothing.

The notification id of an event is its `eventId` (stable when the outbox row is published
twice, unlike EventBridge's own event id); of a reminder, its reminder id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast
from uuid import UUID

from frontdesk.appointments.patients import decrypt_contact
from frontdesk.errors import FrontdeskError
from frontdesk.notifications.channels import (
    Email,
    Mailer,
    PermanentDeliveryError,
    SmsSender,
    TransientDeliveryError,
)
from frontdesk.notifications.staff import DeliveryOutcome
from frontdesk.platform.crypto import EnvelopeCipher, normalise_phone
from frontdesk.platform.db import Cursor, Database, transaction
from frontdesk.platform.queues import AppointmentEvent, ReminderMessage

_CLAIM_SECONDS = 120  # as for staff emails: beyond NotifyWorker's timeout, within visibility
NoticeKind = Literal["booked", "rescheduled", "cancelled", "reminder"]
Channel = Literal["email", "sms"]


@dataclass(frozen=True)
class PatientNotice:
    """What to tell a patient, from an event or a reminder."""

    notification_id: str
    kind: NoticeKind
    clinic_id: UUID
    appointment_id: UUID | None  # events name it; reminders are looked up
    reminder_id: UUID | None
    starts_at: datetime | None  # the time the event announces

    @classmethod
    def of(cls, message: AppointmentEvent | ReminderMessage) -> PatientNotice:
        if isinstance(message, ReminderMessage):
            return cls(
                notification_id=f"reminder:{message.reminder_id}",
                kind="reminder",
                clinic_id=message.clinic_id,
                appointment_id=None,
                reminder_id=message.reminder_id,
                starts_at=None,
            )
        return cls(
            notification_id=f"event:{message.detail.event_id}",
            kind=cast(NoticeKind, message.detail_type.removeprefix("appointment.")),
            clinic_id=message.detail.clinic_id,
            appointment_id=message.detail.appointment_id,
            reminder_id=None,
            starts_at=message.detail.starts_at,
        )


_TEXTS: dict[str, tuple[str, str]] = {
    "booked": ("Your appointment is booked", "Your appointment with {doctor} on {when} is booked."),
    "rescheduled": (
        "Your appointment has moved",
        "Your appointment with {doctor} is now on {when}.",
    ),
    "cancelled": (
        "Your appointment is cancelled",
        "Your appointment with {doctor} on {when} is cancelled.",
    ),
    "reminder": ("Appointment reminder", "Reminder: your appointment with {doctor} is on {when}."),
}


@dataclass(frozen=True)
class _Delivery:
    message_id: str  # the SQS message
    notification_id: str  # notice id + channel
    channel: Channel
    to: str
    subject: str
    text: str
    data: dict[str, str]


def deliver_patient_batch(
    db: Database,
    cipher: EnvelopeCipher,
    mailer: Mailer,
    sms: SmsSender,
    notices: Mapping[str, PatientNotice],
    *,
    sender: str,
    template: str,
) -> dict[str, DeliveryOutcome | TransientDeliveryError]:
    """Send each notice (keyed by SQS message id) once per channel; an outcome per message,
    or the TransientDeliveryError to fail its record with."""
    results: dict[str, DeliveryOutcome | TransientDeliveryError] = {}
    first: dict[str, str] = {}
    for message_id, notice in notices.items():
        if notice.notification_id in first:
            results[message_id] = "already_done"  # the same notice twice in one batch
        else:
            first[notice.notification_id] = message_id
    if not first:
        return results

    with transaction(db) as cur:
        rows = _read(cur, [notices[m] for m in first.values()])
        wanted: dict[str, list[tuple[Channel, dict[str, Any]]]] = {}
        for notice_id, message_id in first.items():
            row = rows.get(notice_id)
            if row is not None:
                row = {**row, "kind": notices[message_id].kind}
            channels = _channels(notices[message_id], row)
            if not channels or row is None:
                results[message_id] = "already_done"  # nothing (left) to tell this patient
            else:
                wanted[notice_id] = [(channel, row) for channel in channels]
        claimed, sent_before = _claim(cur, wanted)

    deliveries: list[_Delivery] = []
    errors: dict[str, Exception] = {}  # notification id (+ channel) -> error
    for notice_id, chosen in wanted.items():
        message_id = first[notice_id]
        for channel, notice_row in chosen:
            delivery_id = f"{notice_id}:{channel}"
            if delivery_id not in claimed:
                continue
            try:
                deliveries.append(_delivery(cipher, message_id, delivery_id, channel, notice_row))
            except FrontdeskError as exc:  # KMS unavailable: retry later
                errors[delivery_id] = TransientDeliveryError(exc.detail)
            except Exception as exc:  # a ciphertext that does not decrypt: never will
                errors[delivery_id] = PermanentDeliveryError(
                    f"the patient's contact cannot be decrypted ({type(exc).__name__})"
                )

    outcomes: dict[str, str | Exception] = dict(errors)
    emails = [d for d in deliveries if d.channel == "email"]
    if emails:
        answers = mailer.send_templated(
            sender=sender, template=template, emails=[Email(d.to, d.data) for d in emails]
        )
        outcomes.update(zip((d.notification_id for d in emails), answers, strict=True))
    for delivery in deliveries:
        if delivery.channel == "sms":
            outcomes[delivery.notification_id] = sms.send(delivery.to, delivery.text)

    if outcomes:
        with transaction(db) as cur:
            _record(cur, outcomes)

    for notice_id, chosen in wanted.items():
        message_id = first[notice_id]
        mine = [f"{notice_id}:{channel}" for channel, _ in chosen]
        busy = [d for d in mine if d not in claimed and d not in sent_before]
        failures = [outcomes[d] for d in mine if isinstance(outcomes.get(d), Exception)]
        transient = [e for e in failures if isinstance(e, TransientDeliveryError)]
        if transient:
            results[message_id] = transient[0]
        elif busy:
            results[message_id] = TransientDeliveryError("another worker is sending this notice")
        elif failures:
            results[message_id] = "failed"
        elif any(d in claimed for d in mine):
            results[message_id] = "sent"
        else:
            results[message_id] = "already_done"
    return results


def _read(cur: Cursor, notices: Sequence[PatientNotice]) -> dict[str, dict[str, Any]]:
    """Each notice's appointment, patient and clinic (settings, local time), set-based."""
    cur.execute(
        """WITH batch AS (
               SELECT * FROM unnest(%(ids)s::text[], %(clinic_ids)s::uuid[],
                                    %(appointment_ids)s::uuid[], %(reminder_ids)s::uuid[],
                                    %(starts)s::timestamptz[])
                   AS b(notice_id, clinic_id, appointment_id, reminder_id, event_starts_at)),
           resolved AS (
               SELECT b.*, coalesce(b.appointment_id, r.appointment_id) AS target_id,
                      r.starts_at AS reminder_starts_at
               FROM batch b
               LEFT JOIN appointment_reminders r
                      ON r.id = b.reminder_id AND r.clinic_id = b.clinic_id)
           SELECT res.notice_id, res.reminder_starts_at, a.clinic_id, a.status, a.starts_at,
                  a.doctor_name,
                  to_char(coalesce(res.event_starts_at, a.starts_at) AT TIME ZONE c.timezone,
                          'FMDay DD Mon YYYY "at" HH24:MI')
                      || ' (' || c.timezone || ')' AS whenever,
                  c.name AS clinic_name, c.notify_patients_by_email, c.notify_patients_by_sms,
                  p.id, p.name_enc, p.email_enc, p.phone_enc, p.dek
           FROM resolved res
           JOIN appointments a ON a.id = res.target_id AND a.clinic_id = res.clinic_id
           JOIN clinics c ON c.id = a.clinic_id
           JOIN patients p ON p.id = a.patient_id AND p.clinic_id = a.clinic_id""",
        {
            "ids": [n.notification_id for n in notices],
            "clinic_ids": [n.clinic_id for n in notices],
            "appointment_ids": [n.appointment_id for n in notices],
            "reminder_ids": [n.reminder_id for n in notices],
            "starts": [n.starts_at for n in notices],
        },
    )
    return {row["notice_id"]: dict(row) for row in cur.fetchall()}


def _channels(notice: PatientNotice, row: dict[str, Any] | None) -> list[Channel]:
    if row is None:
        return []  # another clinic's, or gone
    if notice.kind == "reminder" and (
        row["status"] != "booked" or row["starts_at"] != row["reminder_starts_at"]
    ):
        return []  # cancelled or moved since the reminder was enqueued
    if notice.kind in ("booked", "rescheduled") and row["status"] == "cancelled":
        return []  # cancelled before the confirmation went out: the cancellation tells
    channels: list[Channel] = []
    if row["notify_patients_by_email"] and row["email_enc"] is not None:
        channels.append("email")
    if row["notify_patients_by_sms"] and row["phone_enc"] is not None:
        channels.append("sms")
    return channels


def _claim(
    cur: Cursor, wanted: Mapping[str, list[tuple[Channel, dict[str, Any]]]]
) -> tuple[set[str], set[str]]:
    """Claim the delivery rows: (claimed now, sent before)."""
    ids = [f"{notice_id}:{channel}" for notice_id, chans in wanted.items() for channel, _ in chans]
    if not ids:
        return set(), set()
    clinics = [row["clinic_id"] for chans in wanted.values() for _, row in chans]
    channels = [channel for chans in wanted.values() for channel, _ in chans]
    cur.execute(
        """INSERT INTO notification_deliveries
               (notification_id, clinic_id, channel, status, claimed_until)
           SELECT id, clinic_id, channel, 'sending', now() + make_interval(secs => %(claim)s)
           FROM unnest(%(ids)s::text[], %(clinics)s::uuid[], %(channels)s::text[])
               AS b(id, clinic_id, channel)
           ON CONFLICT (notification_id) DO UPDATE
               SET status = 'sending', claimed_until = excluded.claimed_until,
                   attempts = notification_deliveries.attempts + 1
               WHERE notification_deliveries.status = 'failed'
                  OR (notification_deliveries.status = 'sending'
                      AND notification_deliveries.claimed_until < now())
           RETURNING notification_id""",
        {"ids": ids, "clinics": clinics, "channels": channels, "claim": _CLAIM_SECONDS},
    )
    claimed = {row["notification_id"] for row in cur.fetchall()}
    unclaimed = [i for i in ids if i not in claimed]
    if not unclaimed:
        return claimed, set()
    cur.execute(
        """SELECT notification_id FROM notification_deliveries
           WHERE notification_id = ANY(%(ids)s) AND status = 'sent'""",
        {"ids": unclaimed},
    )
    return claimed, {row["notification_id"] for row in cur.fetchall()}


def _delivery(
    cipher: EnvelopeCipher, message_id: str, delivery_id: str, channel: Channel, row: dict[str, Any]
) -> _Delivery:
    contact = decrypt_contact(cipher, row)
    subject, template = _TEXTS[row["kind"]]
    text = template.format(doctor=row["doctor_name"], when=row["whenever"])
    to = contact.email if channel == "email" else contact.phone
    assert to is not None  # _channels chose only channels with a contact
    if channel == "sms":
        to = normalise_phone(to)  # E.164, as SNS wants it
    return _Delivery(
        message_id=message_id,
        notification_id=delivery_id,
        channel=channel,
        to=to,
        subject=subject,
        text=f"{row['clinic_name']}: {text}",
        data={
            "subject": subject,
            "patientName": contact.name,
            "message": text,
            "clinicName": row["clinic_name"],
        },
    )


def _record(cur: Cursor, outcomes: Mapping[str, str | Exception]) -> None:
    sent = {d: mid for d, mid in outcomes.items() if isinstance(mid, str)}
    if sent:
        cur.execute(
            """UPDATE notification_deliveries d
               SET status = 'sent', sent_at = now(), provider_message_id = s.mid, error = NULL,
                   claimed_until = NULL
               FROM unnest(%(ids)s::text[], %(mids)s::text[]) AS s(id, mid)
               WHERE d.notification_id = s.id""",
            {"ids": list(sent), "mids": list(sent.values())},
        )
    failed = {d: str(e) for d, e in outcomes.items() if isinstance(e, Exception)}
    if failed:
        cur.execute(
            """UPDATE notification_deliveries d
               SET status = 'failed', claimed_until = NULL, error = f.error
               FROM unnest(%(ids)s::text[], %(errors)s::text[]) AS f(id, error)
               WHERE d.notification_id = f.id""",
            {"ids": list(failed), "errors": list(failed.values())},
        )
