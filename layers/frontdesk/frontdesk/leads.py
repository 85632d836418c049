"""Leads: validated, PII encrypted, deduplicated by blind index, followed up via the outbox."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints, model_validator

from frontdesk import jobs, outbox
from frontdesk.crypto import BlindIndex, EnvelopeCipher, field_aad
from frontdesk.db import Cursor, Database, transaction
from frontdesk.errors import NotFound
from frontdesk.idempotency import IdempotencyRequest, Outcome, run_once

NOTIFY_STAFF_JOB = "notify.lead_created"

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
]
Phone = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=32, pattern=r"^\+?[0-9 ()\-.]+$")
]
Source = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_\-]{0,39}$")]
Notes = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)]
_DIGITS = re.compile(r"\d")


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
        if self.phone is not None and len(_DIGITS.findall(self.phone)) < 5:
            raise ValueError("phone must have at least 5 digits")
        return self


class LeadOut(BaseModel):
    id: UUID
    name: str
    email: str | None
    phone: str | None
    source: str
    notes: str | None
    consent: bool
    duplicate_of: UUID | None = Field(serialization_alias="duplicateOf")
    created_at: str = Field(serialization_alias="createdAt")


@dataclass(frozen=True)
class Ports:
    """What creating and reading leads needs besides the database."""

    cipher: EnvelopeCipher
    blind_index: BlindIndex
    publisher: outbox.Publisher


def create_lead(
    db: Database,
    ports: Ports,
    *,
    clinic_id: UUID,
    lead: LeadIn,
    request_id: str | None,
    idempotency: IdempotencyRequest | None = None,
) -> Outcome:
    """Store the lead, its `lead.created` event and the staff notification job in one
    transaction; then relay the outbox rows. Returns {"id", "jobId", "duplicateOf"}."""
    with transaction(db) as cur:
        outcome, outbox_ids = run_once(
            cur,
            clinic_id,
            idempotency,
            201,
            lambda: _insert_lead(cur, ports, clinic_id, lead, request_id),
            nothing=list[int](),
        )
    outbox.relay(db, outbox_ids, ports.publisher)
    return outcome


def _insert_lead(
    cur: Cursor, ports: Ports, clinic_id: UUID, lead: LeadIn, request_id: str | None
) -> tuple[dict[str, Any], list[int]]:
    lead_id = uuid.uuid4()
    key = ports.cipher.data_key()

    def enc(field: str, value: str | None) -> bytes | None:
        return ports.cipher.encrypt(key, value, field_aad("leads", lead_id, field))

    email_bidx = ports.blind_index.email(lead.email)
    phone_bidx = ports.blind_index.phone(lead.phone)
    cur.execute(
        """INSERT INTO leads (id, clinic_id, source, consent, name_enc, email_enc, phone_enc,
                              notes_enc, dek, kms_key_id, email_bidx, phone_bidx, request_id,
                              duplicate_of)
           VALUES (%(id)s, %(clinic_id)s, %(source)s, %(consent)s, %(name)s, %(email)s,
                   %(phone)s, %(notes)s, %(dek)s, %(kms_key_id)s, %(email_bidx)s,
                   %(phone_bidx)s, %(request_id)s,
                   (SELECT id FROM leads
                    WHERE clinic_id = %(clinic_id)s AND duplicate_of IS NULL
                      AND (email_bidx = %(email_bidx)s OR phone_bidx = %(phone_bidx)s)
                    ORDER BY created_at LIMIT 1))
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
            "request_id": request_id,
        },
    )
    row = cur.fetchone()
    assert row is not None
    duplicate_of = row["duplicate_of"]
    job_id = jobs.create_job(
        cur,
        clinic_id=clinic_id,
        kind=NOTIFY_STAFF_JOB,
        payload={"leadId": str(lead_id)},
        request_id=request_id,
    )
    outbox_ids = [
        outbox.add_domain_event(
            cur,
            detail_type="lead.created",
            detail={
                "leadId": str(lead_id),
                "clinicId": str(clinic_id),
                "source": lead.source,
                "duplicateOf": str(duplicate_of) if duplicate_of else None,
            },
            request_id=request_id,
        ),
        outbox.enqueue_job_message(
            cur,
            queue="notifications",
            job_id=job_id,
            kind=NOTIFY_STAFF_JOB,
            clinic_id=clinic_id,
            request_id=request_id,
        ),
    ]
    data = {
        "id": str(lead_id),
        "jobId": str(job_id),
        "duplicateOf": str(duplicate_of) if duplicate_of else None,
    }
    return data, outbox_ids


def get_lead(db: Database, cipher: EnvelopeCipher, *, clinic_id: UUID, lead_id: UUID) -> LeadOut:
    with transaction(db) as cur:
        cur.execute(
            """SELECT id, source, consent, name_enc, email_enc, phone_enc, notes_enc, dek,
                      duplicate_of, created_at
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
        created_at=row["created_at"].isoformat(),
    )
