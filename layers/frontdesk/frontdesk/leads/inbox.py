"""The lead inbox: a clinic's leads page by page, found by exact email or phone, and moved
through their lifecycle by staff.

Pages are keyset pages in (created_at DESC, id DESC) order: the cursor is the last row's
(created_at, id), so a lead inserted meanwhile never shifts a page or shows twice, and a late
page costs what the first does (migration 0021 lists the indexes each filter walks). The
cursor is opaque to clients: base64url JSON that also carries a digest of the filters, so a
cursor used with other filters is refused rather than misread.

Search by email or phone never decrypts the clinic's table: the value's HMAC blind index
(frontdesk.platform.crypto) is compared in SQL, and only the rows of the page returned are
decrypted.

The lifecycle (new -> contacted -> booked | lost) is the database's rule: a trigger refuses
any other move (leads_status_transition), which becomes a 409 here. Each change is an event
in the same unit of work: `lead.status_changed`, `lead.assigned`, `lead.notes_changed`
(ids, statuses and the staff member's subject, never the notes or other PII).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import psycopg
from pydantic import BaseModel, ConfigDict, StringConstraints, model_validator

from frontdesk.errors import Conflict, InvalidInput, NotFound
from frontdesk.platform.crypto import BlindIndex, EnvelopeCipher, field_aad
from frontdesk.platform.db import Database
from frontdesk.platform.queues import EventType
from frontdesk.platform.unit_of_work import UnitOfWork
from frontdesk.values import ApiModel, Email, Notes, Phone, SingleLine, Source, Timestamp

Status = Literal["new", "contacted", "booked", "lost"]
# The moves the database allows (migration 0021); for the 409's explanation only.
NEXT: dict[str, tuple[str, ...]] = {
    "new": ("contacted",),
    "contacted": ("booked", "lost"),
    "booked": (),
    "lost": (),
}
StaffId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), SingleLine
]

DEFAULT_LIMIT = 25
MAX_LIMIT = 100


class InboxFilters(BaseModel):
    """What a page is filtered by; every filter is optional and they combine with AND."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Status | None = None
    source: Source | None = None
    assigned_to: StaffId | None = None
    created_from: datetime | None = None  # inclusive
    created_to: datetime | None = None  # exclusive
    email: Email | None = None
    phone: Phone | None = None

    @model_validator(mode="after")
    def _one_search(self) -> InboxFilters:
        if self.email is not None and self.phone is not None:
            raise ValueError("search by email or by phone, not both")
        if self.created_from and self.created_to and self.created_from >= self.created_to:
            raise ValueError("createdFrom must be before createdTo")
        return self

    def digest(self) -> str:
        """What a cursor remembers of the filters (the search value only as a digest)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class LeadSummary(ApiModel):
    """A lead as the inbox lists it: decrypted contact fields, lifecycle, assignee."""

    id: UUID
    name: str
    email: str | None
    phone: str | None
    source: str
    status: Status
    assigned_to: str | None
    duplicate_of: UUID | None
    created_at: Timestamp
    updated_at: Timestamp


class LeadPage(ApiModel):
    items: list[LeadSummary]
    # Give it back as `cursor` for the next page; null on the last page.
    next_cursor: str | None


class LeadChange(BaseModel):
    """A PATCH: any of the status, the assignee (null: nobody) and the staff notes (null:
    none)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    status: Status | None = None
    assignedTo: StaffId | None = None
    staffNotes: Notes | None = None

    @model_validator(mode="after")
    def _something(self) -> LeadChange:
        if not self.model_fields_set:
            raise ValueError("give status, assignedTo or staffNotes")
        if "status" in self.model_fields_set and self.status is None:
            raise ValueError("status cannot be null")
        return self


class LeadChanged(ApiModel):
    """The lead after a PATCH, without PII (it is stored under the Idempotency-Key), and
    the events the change emitted."""

    id: UUID
    status: Status
    assigned_to: str | None
    has_staff_notes: bool
    updated_at: Timestamp
    events: list[str]


# ---------------------------------------------------------------- the cursor


def encode_cursor(created_at: datetime, lead_id: UUID, filters: InboxFilters) -> str:
    raw = json.dumps(
        {"c": created_at.isoformat(), "i": str(lead_id), "f": filters.digest()},
        separators=(",", ":"),
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, filters: InboxFilters) -> tuple[datetime, UUID]:
    """(created_at, id) of the row the page continues after; InvalidInput for anything
    that is not a cursor this inbox gave out for these filters."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        fields = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        created_at = datetime.fromisoformat(fields["c"])
        lead_id = UUID(fields["i"])
        digest = fields["f"]
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeError) as exc:
        raise InvalidInput("cursor: not a cursor of this inbox (use nextCursor as given)") from exc
    if created_at.tzinfo is None:
        raise InvalidInput("cursor: not a cursor of this inbox (use nextCursor as given)")
    if digest != filters.digest():
        raise InvalidInput("cursor: it was given for other filters (keep the filters of page 1)")
    return created_at, lead_id


# ---------------------------------------------------------------- the page


def list_leads(
    db: Database,
    cipher: EnvelopeCipher,
    blind_index: BlindIndex,
    *,
    clinic_id: UUID,
    filters: InboxFilters,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> LeadPage:
    """One page of the clinic's leads, newest first; only its rows are decrypted."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit: 1 to {MAX_LIMIT}")
    after = decode_cursor(cursor, filters) if cursor else None
    where = ["clinic_id = %(clinic_id)s"]
    params: dict[str, Any] = {"clinic_id": clinic_id, "limit": limit + 1}
    # Each filter given: its condition, and its value under the condition's parameter name.
    given: dict[str, tuple[str, Any]] = {
        "status": ("status = %(status)s", filters.status),
        "source": ("source = %(source)s", filters.source),
        "assigned_to": ("assigned_to = %(assigned_to)s", filters.assigned_to),
        "created_from": ("created_at >= %(created_from)s", filters.created_from),
        "created_to": ("created_at < %(created_to)s", filters.created_to),
        "email_bidx": (
            "email_bidx = %(email_bidx)s",
            None if filters.email is None else blind_index.email(filters.email),
        ),
        "phone_bidx": (
            "phone_bidx = %(phone_bidx)s",
            None if filters.phone is None else blind_index.phone(filters.phone),
        ),
    }
    for name, (condition, value) in given.items():
        if value is not None:
            where.append(condition)
            params[name] = value
    if after is not None:
        # A row comparison: an index condition on (created_at, id), not a filter.
        where.append("(created_at, id) < (%(after_created)s, %(after_id)s)")
        params["after_created"], params["after_id"] = after
    # One statement, so no transaction around it (BEGIN and COMMIT would be two more round
    # trips on every page): the connection is in autocommit mode.
    with db.connection() as conn:
        rows = conn.execute(
            f"""SELECT id, source, status, assigned_to, duplicate_of, created_at, updated_at,
                       name_enc, email_enc, phone_enc, dek
                FROM leads
                WHERE {" AND ".join(where)}
                ORDER BY created_at DESC, id DESC
                LIMIT %(limit)s""",
            params,
        ).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    decryptors: dict[bytes, Callable[[bytes | None, bytes], str | None]] = {}
    items = []
    for row in rows:  # rows written together share a data key: one AES-GCM object each
        dek = bytes(row["dek"])
        if dek not in decryptors:
            decryptors[dek] = cipher.decryptor(dek)
        items.append(_summary(decryptors[dek], row))
    next_cursor = (
        encode_cursor(rows[-1]["created_at"], rows[-1]["id"], filters) if more and rows else None
    )
    return LeadPage(items=items, next_cursor=next_cursor)


def _summary(
    decrypt: Callable[[bytes | None, bytes], str | None], row: dict[str, Any]
) -> LeadSummary:
    lead_id = row["id"]

    def dec(field: str) -> str | None:
        blob = row[f"{field}_enc"]
        return decrypt(blob and bytes(blob), field_aad("leads", lead_id, field))

    return LeadSummary(
        id=lead_id,
        name=dec("name") or "",
        email=dec("email"),
        phone=dec("phone"),
        source=row["source"],
        status=row["status"],
        assigned_to=row["assigned_to"],
        duplicate_of=row["duplicate_of"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


# ---------------------------------------------------------------- the lifecycle


def load_lead_key(db: Database, cipher: EnvelopeCipher, *, clinic_id: UUID, lead_id: UUID) -> None:
    """Before a change of staff notes: the lead's data key decrypted (and cached), so the
    change's transaction, which holds the lead's row lock, encrypts without calling KMS."""
    with db.connection() as conn:
        row = conn.execute(
            "SELECT dek FROM leads WHERE id = %(id)s AND clinic_id = %(clinic_id)s",
            {"id": lead_id, "clinic_id": clinic_id},
        ).fetchone()
    if row is not None:  # none: change_lead answers the 404
        cipher.load_key(bytes(row["dek"]))


def change_lead(
    uow: UnitOfWork,
    cipher: EnvelopeCipher,
    *,
    clinic_id: UUID,
    lead_id: UUID,
    change: LeadChange,
    changed_by: str,
) -> LeadChanged:
    """Apply a PATCH in `uow`: one event per aspect that changed. NotFound for another
    clinic's lead; Conflict (409) for a move the lifecycle forbids."""
    cur = uow.cur
    cur.execute(
        """SELECT status, assigned_to, staff_notes_enc IS NOT NULL AS has_notes, dek
           FROM leads WHERE id = %(id)s AND clinic_id = %(clinic_id)s
           FOR UPDATE""",
        {"id": lead_id, "clinic_id": clinic_id},
    )
    before = cur.fetchone()
    if before is None:
        raise NotFound(f"lead {lead_id} not found")
    given = change.model_fields_set
    status = change.status if "status" in given and change.status else before["status"]
    assignee = change.assignedTo if "assignedTo" in given else before["assigned_to"]
    params: dict[str, Any] = {
        "id": lead_id,
        "clinic_id": clinic_id,
        "status": status,
        "assignee": assignee,
        "set_notes": "staffNotes" in given,
        "notes": cipher.encrypt_under(
            bytes(before["dek"]), change.staffNotes, field_aad("leads", lead_id, "staff_notes")
        )
        if "staffNotes" in given
        else None,
    }
    try:
        cur.execute(
            """UPDATE leads
               SET status = %(status)s, assigned_to = %(assignee)s,
                   staff_notes_enc = CASE WHEN %(set_notes)s THEN %(notes)s
                                          ELSE staff_notes_enc END,
                   updated_at = now()
               WHERE id = %(id)s AND clinic_id = %(clinic_id)s
               RETURNING status, assigned_to, staff_notes_enc IS NOT NULL AS has_notes,
                         updated_at""",
            params,
        )
    except psycopg.errors.CheckViolation as exc:
        if exc.diag.constraint_name != "leads_status_transition":
            raise
        allowed = " or ".join(NEXT[before["status"]]) or "nothing (it is final)"
        raise Conflict(
            f"lead {lead_id} is {before['status']}: it can move to {allowed}, not {status}"
        ) from exc
    after = cur.fetchone()
    assert after is not None
    detail = {"leadId": str(lead_id), "clinicId": str(clinic_id), "changedBy": changed_by}
    events: list[str] = []
    if after["status"] != before["status"]:
        uow.emit(
            EventType.LEAD_STATUS_CHANGED,
            {**detail, "from": before["status"], "to": after["status"]},
        )
        events.append(EventType.LEAD_STATUS_CHANGED.value)
    if after["assigned_to"] != before["assigned_to"]:
        uow.emit(
            EventType.LEAD_ASSIGNED,
            {**detail, "assignedTo": after["assigned_to"], "previous": before["assigned_to"]},
        )
        events.append(EventType.LEAD_ASSIGNED.value)
    if "staffNotes" in given:
        uow.emit(EventType.LEAD_NOTES_CHANGED, {**detail, "hasStaffNotes": after["has_notes"]})
        events.append(EventType.LEAD_NOTES_CHANGED.value)
    return LeadChanged(
        id=lead_id,
        status=after["status"],
        assigned_to=after["assigned_to"],
        has_staff_notes=after["has_notes"],
        updated_at=after["updated_at"],
        events=events,
    )
