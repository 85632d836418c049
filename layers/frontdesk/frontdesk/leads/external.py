"""Leads from outside: provider leads and CSV rows, checked without a model per row and
upserted set-based by (clinic, provider, external id), in the caller's unit of work."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from frontdesk.platform.crypto import BlindIndex, EnvelopeCipher, field_aad
from frontdesk.platform.queues import EventType
from frontdesk.platform.unit_of_work import UnitOfWork
from frontdesk.values import phone_digits_ok, text_problem

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+?[0-9 ()\-.]+$")
_SOURCE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,39}$")
_CONSENT = {"true": True, "yes": True, "y": True, "1": True, "": False}
_CONSENT.update({"false": False, "no": False, "n": False, "0": False})


@dataclass(frozen=True)
class ExternalLead:
    external_id: str
    name: str
    email: str | None
    phone: str | None
    notes: str | None
    consent: bool
    updated_at: datetime | None = None


def check_external(
    name: str | None, email: str | None, phone: str | None, notes: str | None, consent: str | bool
) -> tuple[str, str | None, str | None, str | None, bool] | str:
    """The cleaned fields, or the reason they are refused (field names only, never values).

    The same rules as LeadIn (the text rule of frontdesk.values included), without building
    a pydantic model per row (imports check hundreds of thousands of rows)."""
    name = (name or "").strip()
    email = (email or "").strip() or None
    phone = (phone or "").strip() or None
    notes = (notes or "").strip() or None
    if not 1 <= len(name) <= 200:
        return "name: required, at most 200 characters"
    for field, value, multiline in (
        ("name", name, False),
        ("email", email, False),
        ("phone", phone, False),
        ("notes", notes, True),
    ):
        problem = value and text_problem(value, multiline=multiline)
        if problem:
            return f"{field}: {problem}"
    if email is not None and (len(email) > 254 or not _EMAIL.match(email)):
        return "email: not an email address"
    if phone is not None and (
        len(phone) > 32 or not _PHONE.match(phone) or not phone_digits_ok(phone)
    ):
        return "phone: not a phone number"
    if email is None and phone is None:
        return "give an email, a phone number, or both"
    if notes is not None and len(notes) > 2000:
        return "notes: at most 2000 characters"
    if isinstance(consent, str):
        parsed = _CONSENT.get(consent.strip().lower())
        if parsed is None:
            return "consent: use true/false, yes/no or 1/0"
        consent = parsed
    return name, email, phone, notes, consent


def upsert_external(
    uow: UnitOfWork,
    cipher: EnvelopeCipher,
    blind_index: BlindIndex,
    *,
    clinic_id: UUID,
    provider: str,
    source: str,
    items: list[ExternalLead],
) -> dict[str, str]:
    """Insert new leads and update changed ones by (clinic, provider, external id), in one
    statement; emit lead.created / lead.updated. Returns {external id: "created" |
    "updated" | "unchanged"}. An older or equal `updated_at` changes nothing."""
    cur = uow.cur
    latest: dict[str, ExternalLead] = {}
    for item in items:  # one row per external id, or ON CONFLICT would touch a row twice
        seen = latest.get(item.external_id)
        if seen is None or (item.updated_at or datetime.min.replace(tzinfo=UTC)) >= (
            seen.updated_at or datetime.min.replace(tzinfo=UTC)
        ):
            latest[item.external_id] = item
    if not latest:
        return {}
    cur.execute(
        """SELECT id, external_id FROM leads
           WHERE clinic_id = %(clinic)s AND provider = %(provider)s
             AND external_id = ANY(%(ids)s)""",
        {"clinic": clinic_id, "provider": provider, "ids": list(latest)},
    )
    # An update keeps the row id, and the ciphertexts are bound to it.
    ids = {row["external_id"]: row["id"] for row in cur.fetchall()}
    key = cipher.data_key()
    encrypt = cipher.encryptor(key)
    columns: dict[str, list[Any]] = {
        c: []
        for c in ("id", "ext", "upd", "consent", "name", "email", "phone", "notes", "eb", "pb")
    }
    for external_id, item in latest.items():
        lead_id = ids.get(external_id) or uuid.uuid4()
        columns["id"].append(lead_id)
        columns["ext"].append(external_id)
        columns["upd"].append(item.updated_at)
        columns["consent"].append(item.consent)
        for field in ("name", "email", "phone", "notes"):
            columns[field].append(encrypt(getattr(item, field), field_aad("leads", lead_id, field)))
        columns["eb"].append(blind_index.email(item.email))
        columns["pb"].append(blind_index.phone(item.phone))
    cur.execute(
        """INSERT INTO leads AS l (id, clinic_id, source, consent, name_enc, email_enc,
                                   phone_enc, notes_enc, dek, kms_key_id, email_bidx,
                                   phone_bidx, request_id, provider, external_id,
                                   external_updated_at, duplicate_of)
           SELECT u.id, %(clinic)s, %(source)s, u.consent, u.name, u.email, u.phone, u.notes,
                  %(dek)s, %(kms_key_id)s, u.eb, u.pb, %(request_id)s, %(provider)s, u.ext,
                  u.upd,
                  coalesce(
                      (SELECT d.id FROM leads d
                       WHERE d.clinic_id = %(clinic)s AND d.email_bidx = u.eb
                         AND d.duplicate_of IS NULL AND d.id <> u.id
                       ORDER BY d.created_at LIMIT 1),
                      (SELECT d.id FROM leads d
                       WHERE d.clinic_id = %(clinic)s AND d.phone_bidx = u.pb
                         AND d.duplicate_of IS NULL AND d.id <> u.id
                       ORDER BY d.created_at LIMIT 1))
           FROM unnest(%(id)s::uuid[], %(ext)s::text[], %(upd)s::timestamptz[],
                       %(consent)s::bool[], %(name)s::bytea[], %(email)s::bytea[],
                       %(phone)s::bytea[], %(notes)s::bytea[], %(eb)s::bytea[], %(pb)s::bytea[])
                AS u(id, ext, upd, consent, name, email, phone, notes, eb, pb)
           ON CONFLICT (clinic_id, provider, external_id) WHERE external_id IS NOT NULL
           DO UPDATE SET consent = excluded.consent, name_enc = excluded.name_enc,
                  email_enc = excluded.email_enc, phone_enc = excluded.phone_enc,
                  notes_enc = excluded.notes_enc, dek = excluded.dek,
                  kms_key_id = excluded.kms_key_id, email_bidx = excluded.email_bidx,
                  phone_bidx = excluded.phone_bidx,
                  external_updated_at = excluded.external_updated_at, updated_at = now()
           WHERE l.id = excluded.id
             AND (l.external_updated_at IS NULL OR excluded.external_updated_at IS NULL
                  OR excluded.external_updated_at > l.external_updated_at)
           RETURNING l.id, l.external_id, l.duplicate_of, (l.xmax = 0) AS inserted""",
        {
            **columns,
            "clinic": clinic_id,
            "source": source,
            "provider": provider,
            "dek": key.encrypted,
            "kms_key_id": key.kms_key_id,
            "request_id": uow.request_id,
        },
    )
    outcome = dict.fromkeys(latest, "unchanged")
    for row in cur.fetchall():
        created = bool(row["inserted"])
        outcome[row["external_id"]] = "created" if created else "updated"
        detail = {
            "leadId": str(row["id"]),
            "clinicId": str(clinic_id),
            "source": source,
            "provider": provider,
            "externalId": row["external_id"],
        }
        if created:
            detail["duplicateOf"] = str(row["duplicate_of"]) if row["duplicate_of"] else None
        uow.emit(EventType.LEAD_CREATED if created else EventType.LEAD_UPDATED, detail)
    return outcome


IMPORT_PROVIDER = "csv_import"


def insert_imported(
    uow: UnitOfWork,
    cipher: EnvelopeCipher,
    blind_index: BlindIndex,
    *,
    clinic_id: UUID,
    import_id: UUID,
    source: str,
    rows: list[tuple[int, str, str | None, str | None, str | None, bool]],
) -> int:
    """Insert checked CSV rows (line, name, email, phone, notes, consent): encrypt them,
    COPY them (binary) into a staging table, then one INSERT ... SELECT ... ON CONFLICT DO
    NOTHING keyed by (clinic, 'csv_import', '<import id>:<line>'), so a chunk that runs
    twice inserts nothing twice. Returns the number of leads inserted."""
    if not rows:
        return 0
    cur = uow.cur
    key = cipher.data_key()
    encrypt = cipher.encryptor(key)
    email_of, phone_of = blind_index.email, blind_index.phone
    cur.execute(
        """CREATE TEMP TABLE lead_import_staging (
               id uuid, line integer, consent boolean, name_enc bytea, email_enc bytea,
               phone_enc bytea, notes_enc bytea, email_bidx bytea, phone_bidx bytea
           ) ON COMMIT DROP"""
    )
    with cur.copy(
        """COPY lead_import_staging (id, line, consent, name_enc, email_enc, phone_enc,
                                     notes_enc, email_bidx, phone_bidx)
           FROM STDIN (FORMAT BINARY)"""
    ) as copy:
        copy.set_types(
            ["uuid", "int4", "bool", "bytea", "bytea", "bytea", "bytea", "bytea", "bytea"]
        )
        for line, name, email, phone, notes, consent in rows:
            lead_id = uuid.uuid4()
            prefix = f"leads:{lead_id}:".encode()
            copy.write_row(
                (
                    lead_id,
                    line,
                    consent,
                    encrypt(name, prefix + b"name"),
                    encrypt(email, prefix + b"email"),
                    encrypt(phone, prefix + b"phone"),
                    encrypt(notes, prefix + b"notes"),
                    email_of(email),
                    phone_of(phone),
                )
            )
    cur.execute(
        """INSERT INTO leads (id, clinic_id, source, consent, name_enc, email_enc, phone_enc,
                              notes_enc, dek, kms_key_id, email_bidx, phone_bidx, request_id,
                              provider, external_id, duplicate_of)
           SELECT s.id, %(clinic)s, %(source)s, s.consent, s.name_enc, s.email_enc,
                  s.phone_enc, s.notes_enc, %(dek)s, %(kms_key_id)s, s.email_bidx,
                  s.phone_bidx, %(request_id)s, %(provider)s, %(prefix)s || s.line,
                  -- one index probe per blind index (an OR would scan the clinic's leads)
                  coalesce(
                      (SELECT d.id FROM leads d
                       WHERE d.clinic_id = %(clinic)s AND d.email_bidx = s.email_bidx
                         AND d.duplicate_of IS NULL
                       ORDER BY d.created_at LIMIT 1),
                      (SELECT d.id FROM leads d
                       WHERE d.clinic_id = %(clinic)s AND d.phone_bidx = s.phone_bidx
                         AND d.duplicate_of IS NULL
                       ORDER BY d.created_at LIMIT 1))
           FROM lead_import_staging s
           ON CONFLICT (clinic_id, provider, external_id) WHERE external_id IS NOT NULL
           DO NOTHING""",
        {
            "clinic": clinic_id,
            "source": source,
            "dek": key.encrypted,
            "kms_key_id": key.kms_key_id,
            "request_id": uow.request_id,
            "provider": IMPORT_PROVIDER,
            "prefix": f"{import_id}:",
        },
    )
    return cur.rowcount
