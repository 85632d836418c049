"""Patients: PII encrypted like leads' (envelope encryption, AAD 'patients:<id>:<field>'),
HMAC blind indexes of email and phone, optionally converted from a lead."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from frontdesk.errors import NotFound
from frontdesk.platform.crypto import BlindIndex, EnvelopeCipher, field_aad
from frontdesk.platform.db import Database, transaction
from frontdesk.platform.unit_of_work import UnitOfWork
from frontdesk.values import ApiModel, Created, Email, Name, Phone, Timestamp


class PatientIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Name
    email: Email | None = None
    phone: Phone | None = Field(
        default=None, description="E.164 (+ and country code) so that SMS can reach it"
    )

    @model_validator(mode="after")
    def _reachable(self) -> PatientIn:
        if self.email is None and self.phone is None:
            raise ValueError("give an email, a phone number, or both")
        if self.phone is not None and not self.phone.startswith("+"):
            raise ValueError("phone must start with + and the country code")
        return self


class PatientOut(ApiModel):
    id: UUID
    name: str
    email: str | None
    phone: str | None
    lead_id: UUID | None
    created_at: Timestamp


@dataclass(frozen=True)
class Contact:
    """A patient's decrypted contact details (the worker's view)."""

    name: str
    email: str | None
    phone: str | None


def create_patient(
    uow: UnitOfWork,
    cipher: EnvelopeCipher,
    blind_index: BlindIndex,
    *,
    clinic_id: UUID,
    patient: PatientIn,
    lead_id: UUID | None = None,
) -> Created:
    """Encrypt and insert one patient, in `uow`."""
    patient_id = uuid.uuid4()
    key = cipher.data_key()

    def enc(field: str, value: str | None) -> bytes | None:
        return cipher.encrypt(key, value, field_aad("patients", patient_id, field))

    uow.cur.execute(
        """INSERT INTO patients (id, clinic_id, name_enc, email_enc, phone_enc, dek, kms_key_id,
                                 email_bidx, phone_bidx, lead_id, request_id)
           VALUES (%(id)s, %(clinic_id)s, %(name)s, %(email)s, %(phone)s, %(dek)s,
                   %(kms_key_id)s, %(email_bidx)s, %(phone_bidx)s, %(lead_id)s, %(request_id)s)""",
        {
            "id": patient_id,
            "clinic_id": clinic_id,
            "name": enc("name", patient.name),
            "email": enc("email", patient.email),
            "phone": enc("phone", patient.phone),
            "dek": key.encrypted,
            "kms_key_id": key.kms_key_id,
            "email_bidx": blind_index.email(patient.email),
            "phone_bidx": blind_index.phone(patient.phone),
            "lead_id": lead_id,
            "request_id": uow.request_id,
        },
    )
    return Created(id=patient_id)


def convert_lead(
    uow: UnitOfWork,
    cipher: EnvelopeCipher,
    blind_index: BlindIndex,
    *,
    clinic_id: UUID,
    lead_id: UUID,
) -> UUID:
    """The patient made from a lead, in the caller's transaction: the existing one if the lead
    was converted before, else a new one with the lead's details re-encrypted for patients
    (a ciphertext is bound to its table, row and column, so it cannot simply be copied).
    Concurrent bookings of one lead wait for each other on the lead's row lock, so it is
    converted once."""
    cur = uow.cur
    cur.execute(
        """SELECT name_enc, email_enc, phone_enc, dek FROM leads
           WHERE id = %(lead_id)s AND clinic_id = %(clinic_id)s
           FOR UPDATE""",
        {"lead_id": lead_id, "clinic_id": clinic_id},
    )
    row = cur.fetchone()
    if row is None:
        raise NotFound(f"lead {lead_id} not found")
    # A statement of its own, after the lead's lock: it sees a patient that a concurrent
    # booking of the same lead committed while this one waited for the lock (a join in the
    # locking statement would still show that booking's snapshot: no patient).
    cur.execute("SELECT id FROM patients WHERE lead_id = %(lead_id)s", {"lead_id": lead_id})
    converted = cur.fetchone()
    if converted is not None:
        existing: UUID = converted["id"]
        return existing

    def dec(field: str) -> str | None:
        blob = row[f"{field}_enc"]
        return cipher.decrypt(
            bytes(row["dek"]), blob and bytes(blob), field_aad("leads", lead_id, field)
        )

    phone = dec("phone")
    details = PatientIn.model_construct(name=dec("name") or "", email=dec("email"), phone=phone)
    created = create_patient(
        uow, cipher, blind_index, clinic_id=clinic_id, patient=details, lead_id=lead_id
    )
    return created.id


def get_patient(
    db: Database, cipher: EnvelopeCipher, *, clinic_id: UUID, patient_id: UUID
) -> PatientOut:
    with transaction(db) as cur:
        cur.execute(
            """SELECT id, name_enc, email_enc, phone_enc, dek, lead_id, created_at
               FROM patients WHERE id = %(id)s AND clinic_id = %(clinic_id)s""",
            {"id": patient_id, "clinic_id": clinic_id},
        )
        row = cur.fetchone()
    if row is None:
        raise NotFound(f"patient {patient_id} not found")
    contact = decrypt_contact(cipher, row)
    return PatientOut(
        id=row["id"],
        name=contact.name,
        email=contact.email,
        phone=contact.phone,
        lead_id=row["lead_id"],
        created_at=row["created_at"],
    )


def decrypt_contact(cipher: EnvelopeCipher, row: dict[str, Any]) -> Contact:
    """Decrypt a patients row's name_enc/email_enc/phone_enc (plus dek and id)."""
    patient_id = row["id"]

    def dec(field: str) -> str | None:
        blob = row[f"{field}_enc"]
        return cipher.decrypt(
            bytes(row["dek"]), blob and bytes(blob), field_aad("patients", patient_id, field)
        )

    return Contact(name=dec("name") or "", email=dec("email"), phone=dec("phone"))


def decrypt_name_snapshot(
    cipher: EnvelopeCipher, patient_id: UUID, name_enc: bytes, dek: bytes
) -> str:
    """An appointment's patient name snapshot: the patient's ciphertext, bound to the patient."""
    return cipher.decrypt(dek, name_enc, field_aad("patients", patient_id, "name")) or ""
