"""A clinic's webhook endpoints: where its events go, which ones, and the signing secret.

The secret is generated here (never chosen by the client), shown once in the answer to the
registration, and kept envelope-encrypted on the row like lead PII; no list or read shows
it again. Rotating it makes a new one, shown once the same way; the one it replaces stays
valid for the hours asked (24 by default, 0 to stop it at once), during which deliveries
carry a signature with each. The URL is checked against the SSRF rule when it is saved
(https, no credentials, no private, loopback, link-local or metadata address or name:
frontdesk.sync.egress) and again, after DNS, at every send. Every statement names the
clinic: one clinic never reads or changes another's endpoints.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from frontdesk.errors import NotFound
from frontdesk.platform.crypto import EnvelopeCipher, field_aad
from frontdesk.platform.db import Cursor, Database, transaction
from frontdesk.platform.queues import EventType
from frontdesk.platform.signature import new_secret
from frontdesk.platform.unit_of_work import UnitOfWork
from frontdesk.sync.egress import Egress
from frontdesk.values import ApiModel, SingleLine, Timestamp

_TABLE = "webhook_endpoints"

# What an endpoint may subscribe to: every domain event but the assistant's streamed reply
# (its text travels encrypted, for the conversation's own screens only).
SUBSCRIBABLE: tuple[str, ...] = tuple(
    e.value
    for e in EventType
    if e not in (EventType.ASSISTANT_REPLY_DELTA, EventType.ASSISTANT_REPLY_DONE)
)

Url = Annotated[str, StringConstraints(min_length=8, max_length=2000), SingleLine]
Description = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200), SingleLine]
EventTypes = Annotated[
    list[Annotated[str, StringConstraints(max_length=100)]],
    Field(min_length=1, max_length=32, description=f"any of: {', '.join(SUBSCRIBABLE)}"),
]


def _known_types(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    unknown = sorted(set(value) - set(SUBSCRIBABLE))
    if unknown:
        raise ValueError(f"eventTypes must be among {', '.join(SUBSCRIBABLE)}")
    return sorted(set(value))


class EndpointIn(BaseModel):
    """An endpoint as an admin registers it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    url: Url
    eventTypes: EventTypes
    description: Description | None = None

    _types = field_validator("eventTypes")(_known_types)


class EndpointUpdate(BaseModel):
    """A change: any of the fields; `enabled: true` re-enables a disabled endpoint (its run
    of failures starts again from zero)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    url: Url | None = None
    eventTypes: EventTypes | None = None
    description: Description | None = None
    enabled: bool | None = None

    _types = field_validator("eventTypes")(_known_types)


class SecretRotation(BaseModel):
    """How long the secret being replaced stays valid beside the new one."""

    model_config = ConfigDict(extra="forbid")

    previousSecretValidHours: int = Field(
        default=24,
        ge=0,
        le=168,
        description="hours the replaced secret still signs deliveries (0: it stops now)",
    )


class EndpointOut(ApiModel):
    """An endpoint as its clinic's admins see it: never the secret."""

    id: UUID
    url: str
    event_types: list[str]
    description: str | None
    status: str
    disabled_reason: str | None
    consecutive_failures: int
    last_success_at: Timestamp | None
    last_failure_at: Timestamp | None
    previous_secret_expires_at: Timestamp | None = Field(
        description="while a rotated-out secret still signs deliveries: until when"
    )
    created_at: Timestamp
    updated_at: Timestamp


class EndpointCreated(EndpointOut):
    """The registration's (or a rotation's) answer: the endpoint and, this once, its
    signing secret (a retry with the same Idempotency-Key answers it again, stored
    encrypted: `Write.run(..., secret_result=True)`)."""

    secret: str = Field(description="the signing secret, shown only in this answer")


class EndpointDeleted(ApiModel):
    id: UUID
    deleted: bool


_COLUMNS = """id, url, event_types, description, status, disabled_reason, consecutive_failures,
              last_success_at, last_failure_at,
              CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
                  AS previous_secret_expires_at,
              created_at, updated_at"""


def register(
    uow: UnitOfWork,
    cipher: EnvelopeCipher,
    egress: Egress,
    *,
    clinic_id: UUID,
    endpoint: EndpointIn,
) -> EndpointCreated:
    """Save the endpoint with a new secret, encrypted. InvalidInput for a URL the SSRF rule
    refuses (nothing is written)."""
    egress.check_url(endpoint.url, "url")
    endpoint_id = uuid.uuid4()
    secret = new_secret()
    key = cipher.data_key()
    uow.cur.execute(
        f"""INSERT INTO webhook_endpoints
               (id, clinic_id, url, event_types, description, secret_enc, dek, kms_key_id)
           VALUES (%(id)s, %(clinic)s, %(url)s, %(types)s, %(description)s, %(secret)s,
                   %(dek)s, %(kms_key_id)s)
           RETURNING {_COLUMNS}""",
        {
            "id": endpoint_id,
            "clinic": clinic_id,
            "url": endpoint.url,
            "types": endpoint.eventTypes,
            "description": endpoint.description,
            "secret": cipher.encrypt(key, secret, field_aad(_TABLE, endpoint_id, "secret")),
            "dek": key.encrypted,
            "kms_key_id": key.kms_key_id,
        },
    )
    row = uow.cur.fetchone()
    assert row is not None
    return EndpointCreated(**EndpointOut.model_validate(row).model_dump(), secret=secret)


def rotate_secret(
    uow: UnitOfWork,
    cipher: EnvelopeCipher,
    *,
    clinic_id: UUID,
    endpoint_id: UUID,
    rotation: SecretRotation,
) -> EndpointCreated:
    """Give the endpoint a new secret; the current one moves, still encrypted under its own
    data key, to the previous secret's place for the hours asked (none: it is dropped)."""
    secret = new_secret()
    key = cipher.data_key()
    hours = rotation.previousSecretValidHours
    uow.cur.execute(
        f"""UPDATE webhook_endpoints SET
               previous_secret_enc = CASE WHEN %(hours)s > 0 THEN secret_enc END,
               previous_dek = CASE WHEN %(hours)s > 0 THEN dek END,
               previous_secret_expires_at = CASE WHEN %(hours)s > 0
                   THEN now() + make_interval(hours => %(hours)s) END,
               secret_enc = %(secret)s, dek = %(dek)s, kms_key_id = %(kms_key_id)s,
               updated_at = now()
           WHERE id = %(id)s AND clinic_id = %(clinic)s
           RETURNING {_COLUMNS}""",
        {
            "id": endpoint_id,
            "clinic": clinic_id,
            "hours": hours,
            "secret": cipher.encrypt(key, secret, field_aad(_TABLE, endpoint_id, "secret")),
            "dek": key.encrypted,
            "kms_key_id": key.kms_key_id,
        },
    )
    return EndpointCreated(**_one(uow.cur, clinic_id, endpoint_id).model_dump(), secret=secret)


def forget_expired_secrets(db: Database, *, limit: int) -> int:
    """Drop up to `limit` rotated-out secrets whose time is up (Housekeeping)."""
    with transaction(db) as cur:
        cur.execute(
            """UPDATE webhook_endpoints
               SET previous_secret_enc = NULL, previous_dek = NULL,
                   previous_secret_expires_at = NULL
               WHERE id IN (SELECT id FROM webhook_endpoints
                            WHERE previous_secret_expires_at <= now() LIMIT %(limit)s)""",
            {"limit": limit},
        )
        return cur.rowcount


def decrypt_secret(cipher: EnvelopeCipher, row: dict[str, Any]) -> str:
    """The signing secret of an endpoint row (its id, secret_enc and dek)."""
    value = cipher.decrypt(
        bytes(row["dek"]), bytes(row["secret_enc"]), field_aad(_TABLE, row["id"], "secret")
    )
    assert value is not None
    return value


def decrypt_previous_secret(cipher: EnvelopeCipher, row: dict[str, Any]) -> str:
    """The rotated-out secret of an endpoint row (id, previous_secret_enc, previous_dek):
    the ciphertext it had as the current one."""
    return decrypt_secret(
        cipher,
        {"id": row["id"], "secret_enc": row["previous_secret_enc"], "dek": row["previous_dek"]},
    )


def list_endpoints(db: Database, *, clinic_id: UUID) -> list[EndpointOut]:
    with transaction(db) as cur:
        cur.execute(
            f"""SELECT {_COLUMNS} FROM webhook_endpoints WHERE clinic_id = %(clinic)s
                ORDER BY created_at, id""",
            {"clinic": clinic_id},
        )
        return [EndpointOut.model_validate(row) for row in cur.fetchall()]


def _one(cur: Cursor, clinic_id: UUID, endpoint_id: UUID) -> EndpointOut:
    row = cur.fetchone()
    if row is None:
        raise NotFound(f"webhook endpoint {endpoint_id} not found")
    return EndpointOut.model_validate(row)


def get_endpoint(db: Database, *, clinic_id: UUID, endpoint_id: UUID) -> EndpointOut:
    with transaction(db) as cur:
        cur.execute(
            f"""SELECT {_COLUMNS} FROM webhook_endpoints
                WHERE id = %(id)s AND clinic_id = %(clinic)s""",
            {"id": endpoint_id, "clinic": clinic_id},
        )
        return _one(cur, clinic_id, endpoint_id)


def update(
    uow: UnitOfWork,
    egress: Egress,
    *,
    clinic_id: UUID,
    endpoint_id: UUID,
    change: EndpointUpdate,
) -> EndpointOut:
    """Apply the fields given; `enabled` false disables it by hand, true re-enables it."""
    if change.url is not None:
        egress.check_url(change.url, "url")
    fields = change.model_fields_set
    uow.cur.execute(
        f"""UPDATE webhook_endpoints SET
               url = CASE WHEN %(set_url)s THEN %(url)s ELSE url END,
               event_types = CASE WHEN %(set_types)s THEN %(types)s::text[]
                                  ELSE event_types END,
               description = CASE WHEN %(set_description)s THEN %(description)s
                                  ELSE description END,
               status = CASE %(enabled)s::boolean WHEN true THEN 'enabled'
                             WHEN false THEN 'disabled' ELSE status END,
               disabled_reason = CASE %(enabled)s::boolean WHEN true THEN NULL
                   WHEN false THEN coalesce(disabled_reason, 'disabled by an admin')
                   ELSE disabled_reason END,
               consecutive_failures = CASE WHEN %(enabled)s::boolean THEN 0
                                           ELSE consecutive_failures END,
               updated_at = now()
           WHERE id = %(id)s AND clinic_id = %(clinic)s
           RETURNING {_COLUMNS}""",
        {
            "id": endpoint_id,
            "clinic": clinic_id,
            "set_url": "url" in fields and change.url is not None,
            "url": change.url,
            "set_types": "eventTypes" in fields and change.eventTypes is not None,
            "types": change.eventTypes,
            "set_description": "description" in fields,
            "description": change.description,
            "enabled": change.enabled,
        },
    )
    return _one(uow.cur, clinic_id, endpoint_id)


def delete(uow: UnitOfWork, *, clinic_id: UUID, endpoint_id: UUID) -> EndpointDeleted:
    """Delete the endpoint with its deliveries (a delivery message still queued finds
    nothing and is done)."""
    uow.cur.execute(
        "DELETE FROM webhook_endpoints WHERE id = %(id)s AND clinic_id = %(clinic)s",
        {"id": endpoint_id, "clinic": clinic_id},
    )
    if uow.cur.rowcount != 1:
        raise NotFound(f"webhook endpoint {endpoint_id} not found")
    return EndpointDeleted(id=endpoint_id, deleted=True)
