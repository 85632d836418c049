"""Leads from a clinic's web form and its staff: validated, PII encrypted, deduplicated by
blind index, followed up through the unit of work (a staff email job, a `lead.created` event).
"""

from __future__ import annotations

import uuid
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from frontdesk.errors import NotFound
from frontdesk.platform.crypto import BlindIndex, EnvelopeCipher, field_aad
from frontdesk.platform.db import Database, transaction
from frontdesk.platform.queues import EventType, JobKind
from frontdesk.platform.unit_of_work import UnitOfWork
from frontdesk.values import ApiModel, Email, Name, Notes, Phone, Source, Timestamp, phone_digits_ok


class LeadIn(BaseModel):
    """A lead as a web form or a staff app submits it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Name
    email: Email | None = None
    phone: Phone | None = None
    source: Source = "web_form"
    notes: Notes | None = None
    consent: StrictBool = Field(description="the person agreed to be contacted")

    @model_validator(mode="after")
    def _reachable(self) -> LeadIn:
        if self.email is None and self.phone is None:
            raise ValueError("give an email, a phone number, or both")
        if self.phone is not None and not phone_digits_ok(self.phone):
            raise ValueError("phone must have at least 5 digits")
        return self


class LeadCreated(ApiModel):
    id: UUID
    job_id: UUID
    duplicate_of: UUID | None


class LeadOut(ApiModel):
    id: UUID
    name: str
    email: str | None
    phone: str | None
    source: str
    notes: str | None
    consent: bool
    duplicate_of: UUID | None
    created_at: Timestamp
    # the inbox (frontdesk.leads.inbox): lifecycle, assignee, staff notes
    status: str
    assigned_to: str | None
    staff_notes: str | None
    updated_at: Timestamp


def create_lead(
    uow: UnitOfWork,
    cipher: EnvelopeCipher,
    blind_index: BlindIndex,
    *,
    clinic_id: UUID,
    lead: LeadIn,
) -> LeadCreated:
    """The lead, its staff notification job and its `lead.created` event, in `uow`."""
    lead_id = uuid.uuid4()
    key = cipher.data_key()

    def enc(field: str, value: str | None) -> bytes | None:
        return cipher.encrypt(key, value, field_aad("leads", lead_id, field))

    email_bidx = blind_index.email(lead.email)
    phone_bidx = blind_index.phone(lead.phone)
    uow.cur.execute(
        """INSERT INTO leads (id, clinic_id, source, consent, name_enc, email_enc, phone_enc,
                              notes_enc, dek, kms_key_id, email_bidx, phone_bidx, request_id,
                              duplicate_of)
           VALUES (%(id)s, %(clinic_id)s, %(source)s, %(consent)s, %(name)s, %(email)s,
                   %(phone)s, %(notes)s, %(dek)s, %(kms_key_id)s, %(email_bidx)s,
                   %(phone_bidx)s, %(request_id)s,
                   -- one index probe per blind index (an OR would walk the clinic's leads)
                   coalesce(
                       (SELECT id FROM leads
                        WHERE clinic_id = %(clinic_id)s AND duplicate_of IS NULL
                          AND email_bidx = %(email_bidx)s
                        ORDER BY created_at LIMIT 1),
                       (SELECT id FROM leads
                        WHERE clinic_id = %(clinic_id)s AND duplicate_of IS NULL
                          AND phone_bidx = %(phone_bidx)s
                        ORDER BY created_at LIMIT 1)))
           RETURNING duplicate_of""",
        {
            "id": lead_id,
            "clinic_id": clinic_id,
            "source": lead.source,
            "consent": lead.consent,
            "name": enc("name", lead.name),
            "email": enc("email", lead.email),
            "phone": enc("phone", lead.phone),
            "notes": enc("notes", lead.notes),
            "dek": key.encrypted,
            "kms_key_id": key.kms_key_id,
            "email_bidx": email_bidx,
            "phone_bidx": phone_bidx,
            "request_id": uow.request_id,
        },
    )
    row = uow.cur.fetchone()
    assert row is not None
    duplicate_of: UUID | None = row["duplicate_of"]
    job_id = uow.start_job(JobKind.NOTIFY_LEAD_CREATED, clinic_id, {"leadId": str(lead_id)})
    uow.emit(
        EventType.LEAD_CREATED,
        {
            "leadId": str(lead_id),
            "clinicId": str(clinic_id),
            "source": lead.source,
            "duplicateOf": str(duplicate_of) if duplicate_of else None,
        },
    )
    return LeadCreated(id=lead_id, job_id=job_id, duplicate_of=duplicate_of)


def get_lead(db: Database, cipher: EnvelopeCipher, *, clinic_id: UUID, lead_id: UUID) -> LeadOut:
    with transaction(db) as cur:
        cur.execute(
            """SELECT id, source, consent, name_enc, email_enc, phone_enc, notes_enc, dek,
                      duplicate_of, created_at, status, assigned_to, staff_notes_enc,
                      updated_at
               FROM leads WHERE id = %(id)s AND clinic_id = %(clinic_id)s""",
            {"id": lead_id, "clinic_id": clinic_id},
        )
        row = cur.fetchone()
    if row is None:
        raise NotFound(f"lead {lead_id} not found")

    def dec(field: str) -> str | None:
        blob = row[f"{field}_enc"]
        return cipher.decrypt(
            bytes(row["dek"]), blob and bytes(blob), field_aad("leads", lead_id, field)
        )

    return LeadOut(
        id=row["id"],
        name=dec("name") or "",
        email=dec("email"),
        phone=dec("phone"),
        source=row["source"],
        notes=dec("notes"),
        consent=row["consent"],
        duplicate_of=row["duplicate_of"],
        created_at=row["created_at"],
        status=row["status"],
        assigned_to=row["assigned_to"],
        staff_notes=dec("staff_notes"),
        updated_at=row["updated_at"],
    )
