"""Provider accounts: a clinic's connection to a lead/booking provider.

Credentials and the webhook signing secret are envelope-encrypted like lead PII. Saving
them answers at once; a `sync.validate` job checks them against the provider in the
background and sets the status (pending -> active | invalid). The table also holds the
change-feed cursor and the shared per-account rate limit (`next_call_at`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from frontdesk.errors import NotFound
from frontdesk.platform.crypto import EnvelopeCipher, field_aad
from frontdesk.platform.db import Cursor, Database, transaction
from frontdesk.platform.queues import JobKind
from frontdesk.platform.signature import new_secret
from frontdesk.platform.unit_of_work import UnitOfWork
from frontdesk.sync.egress import Egress
from frontdesk.sync.providers import KINDS
from frontdesk.values import ApiModel, SingleLine, Timestamp

_TABLE = "provider_accounts"

ProviderKind = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_\-]{0,39}$")]
Secret = Annotated[str, StringConstraints(min_length=16, max_length=256), SingleLine]


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    apiKey: Annotated[
        str, StringConstraints(min_length=1, max_length=1000, pattern=r"^[\x21-\x7e]+$")
    ]


class AccountIn(BaseModel):
    """What an admin saves: where the provider is, how to call it, how it signs webhooks."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    provider: ProviderKind
    name: Annotated[str, StringConstraints(max_length=200), SingleLine] | None = None
    apiBaseUrl: Annotated[str, StringConstraints(min_length=8, max_length=2000), SingleLine]
    credentials: Credentials
    webhookSecret: Secret | None = Field(
        default=None, description="the provider's signing secret; omitted: one is generated"
    )
    requestsPerSecond: float = Field(
        default=5.0, gt=0, le=1000, description="calls to the provider, across all workers"
    )

    @field_validator("provider")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in KINDS:
            raise ValueError(f"provider must be one of {', '.join(KINDS)}")
        return value


class CredentialsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    credentials: Credentials
    webhookSecret: Secret | None = None


class AccountSaved(ApiModel):
    """Saved; `webhookSecret` appears once, when it was generated (configure the provider)."""

    id: UUID
    status: str
    job_id: UUID
    webhook_path: str | None = None
    webhook_secret: str | None = None


class AccountOut(ApiModel):
    """An account as its clinic's admins see it: never a secret."""

    id: UUID
    provider: str
    name: str | None
    api_base_url: str
    requests_per_second: float
    status: str
    last_error: str | None
    sync_cursor: str | None
    validated_at: Timestamp | None
    last_polled_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp


def _save(
    uow: UnitOfWork,
    cipher: EnvelopeCipher,
    *,
    clinic_id: UUID,
    account_id: UUID,
    credentials: Credentials,
    webhook_secret: str,
) -> UUID:
    """Encrypt the secrets onto the row, then start the validation job."""
    key = cipher.data_key()
    cur = uow.cur
    cur.execute(
        """UPDATE provider_accounts
           SET credentials_enc = %(credentials)s, webhook_secret_enc = %(secret)s,
               dek = %(dek)s, kms_key_id = %(kms_key_id)s, status = 'pending',
               last_error = NULL, updated_at = now()
           WHERE id = %(id)s AND clinic_id = %(clinic_id)s""",
        {
            "id": account_id,
            "clinic_id": clinic_id,
            "credentials": cipher.encrypt(
                key,
                json.dumps(credentials.model_dump()),
                field_aad(_TABLE, account_id, "credentials"),
            ),
            "secret": cipher.encrypt(
                key, webhook_secret, field_aad(_TABLE, account_id, "webhook_secret")
            ),
            "dek": key.encrypted,
            "kms_key_id": key.kms_key_id,
        },
    )
    if cur.rowcount != 1:
        raise NotFound(f"provider account {account_id} not found")
    return uow.start_job(JobKind.SYNC_VALIDATE, clinic_id, {"accountId": str(account_id)})


def create_account(
    uow: UnitOfWork,
    cipher: EnvelopeCipher,
    *,
    clinic_id: UUID,
    account: AccountIn,
    egress: Egress,
) -> AccountSaved:
    egress.check_url(account.apiBaseUrl)
    account_id = uuid.uuid4()
    generated = account.webhookSecret is None
    webhook_secret = account.webhookSecret or new_secret()
    uow.cur.execute(
        """INSERT INTO provider_accounts
               (id, clinic_id, provider, name, api_base_url, requests_per_second,
                credentials_enc, webhook_secret_enc, dek, kms_key_id)
           VALUES (%(id)s, %(clinic_id)s, %(provider)s, %(name)s, %(url)s, %(rps)s,
                   '', '', '', '')""",
        {
            "id": account_id,
            "clinic_id": clinic_id,
            "provider": account.provider,
            "name": account.name,
            "url": account.apiBaseUrl,
            "rps": account.requestsPerSecond,
        },
    )
    job_id = _save(
        uow,
        cipher,
        clinic_id=clinic_id,
        account_id=account_id,
        credentials=account.credentials,
        webhook_secret=webhook_secret,
    )
    return AccountSaved(
        id=account_id,
        status="pending",
        job_id=job_id,
        webhook_path=f"/webhooks/{account.provider}/{account_id}",
        # shown once, to configure the provider
        webhook_secret=webhook_secret if generated else None,
    )


def replace_credentials(
    uow: UnitOfWork,
    cipher: EnvelopeCipher,
    *,
    clinic_id: UUID,
    account_id: UUID,
    update: CredentialsIn,
) -> AccountSaved:
    secret = update.webhookSecret
    if secret is None:  # keep the current one: decrypt it to re-encrypt under the new key
        current = _webhook_row(uow.cur, account_id)
        if current is None or current["clinic_id"] != clinic_id:
            raise NotFound(f"provider account {account_id} not found")
        secret = _decrypt(cipher, current, "webhook_secret")
    job_id = _save(
        uow,
        cipher,
        clinic_id=clinic_id,
        account_id=account_id,
        credentials=update.credentials,
        webhook_secret=secret,
    )
    return AccountSaved(id=account_id, status="pending", job_id=job_id)


_PUBLIC = """id, provider, name, api_base_url, requests_per_second, status, last_error,
             sync_cursor, validated_at, last_polled_at, created_at, updated_at"""


def get_account(db: Database, *, clinic_id: UUID, account_id: UUID) -> AccountOut:
    with transaction(db) as cur:
        cur.execute(
            f"SELECT {_PUBLIC} FROM provider_accounts WHERE id = %(id)s AND clinic_id = %(c)s",
            {"id": account_id, "c": clinic_id},
        )
        row = cur.fetchone()
    if row is None:
        raise NotFound(f"provider account {account_id} not found")
    return AccountOut.model_validate(row)


def list_accounts(db: Database, *, clinic_id: UUID) -> list[AccountOut]:
    with transaction(db) as cur:
        cur.execute(
            f"SELECT {_PUBLIC} FROM provider_accounts WHERE clinic_id = %(c)s ORDER BY created_at",
            {"c": clinic_id},
        )
        return [AccountOut.model_validate(row) for row in cur.fetchall()]


def _webhook_row(cur: Cursor, account_id: UUID) -> dict[str, Any] | None:
    cur.execute(
        """SELECT id, clinic_id, provider, status, webhook_secret_enc, dek
           FROM provider_accounts WHERE id = %(id)s""",
        {"id": account_id},
    )
    row = cur.fetchone()
    return None if row is None else dict(row)


def _decrypt(cipher: EnvelopeCipher, row: dict[str, Any], field: str) -> str:
    value = cipher.decrypt(
        bytes(row["dek"]), bytes(row[f"{field}_enc"]), field_aad(_TABLE, row["id"], field)
    )
    assert value is not None
    return value


@dataclass(frozen=True)
class WebhookAccount:
    clinic_id: UUID
    provider: str
    status: str
    webhook_secret: bytes


def webhook_account(
    db: Database, cipher: EnvelopeCipher, *, account_id: UUID
) -> WebhookAccount | None:
    with transaction(db) as cur:
        row = _webhook_row(cur, account_id)
    if row is None:
        return None
    secret = _decrypt(cipher, row, "webhook_secret")
    return WebhookAccount(row["clinic_id"], row["provider"], row["status"], secret.encode())


@dataclass(frozen=True)
class SyncAccount:
    id: UUID
    clinic_id: UUID
    provider: str
    api_base_url: str
    credentials: dict[str, Any]
    sync_cursor: str | None
    status: str


def sync_account(
    db: Database, cipher: EnvelopeCipher, *, account_id: UUID, clinic_id: UUID
) -> SyncAccount | None:
    """The account with its credentials decrypted, for a worker about to call the provider."""
    with transaction(db) as cur:
        cur.execute(
            """SELECT id, clinic_id, provider, api_base_url, credentials_enc, dek, sync_cursor,
                      status
               FROM provider_accounts WHERE id = %(id)s AND clinic_id = %(c)s""",
            {"id": account_id, "c": clinic_id},
        )
        row = cur.fetchone()
    if row is None:
        return None
    credentials = json.loads(_decrypt(cipher, dict(row), "credentials"))
    return SyncAccount(
        row["id"],
        row["clinic_id"],
        row["provider"],
        row["api_base_url"],
        credentials,
        row["sync_cursor"],
        row["status"],
    )


def active_account_ids(db: Database, limit: int = 1000) -> list[tuple[UUID, UUID]]:
    """(account id, clinic id) of the active accounts, least recently polled first."""
    with transaction(db) as cur:
        cur.execute(
            """SELECT id, clinic_id FROM provider_accounts WHERE status = 'active'
               ORDER BY last_polled_at NULLS FIRST LIMIT %(limit)s""",
            {"limit": limit},
        )
        return [(row["id"], row["clinic_id"]) for row in cur.fetchall()]


def set_status(cur: Cursor, account_id: UUID, status: str, error: str | None) -> None:
    cur.execute(
        """UPDATE provider_accounts
           SET status = %(status)s, last_error = %(error)s, updated_at = now(),
               validated_at = CASE WHEN %(status)s = 'active' THEN now() ELSE validated_at END
           WHERE id = %(id)s""",
        {"id": account_id, "status": status, "error": error},
    )


def record_error(cur: Cursor, account_id: UUID, error: str) -> None:
    cur.execute(
        "UPDATE provider_accounts SET last_error = %(e)s, updated_at = now() WHERE id = %(id)s",
        {"id": account_id, "e": error},
    )


def reserve_calls(cur: Cursor, account_id: UUID, calls: int) -> tuple[float, float]:
    """Reserve the next `calls` slots of the account's shared rate limit.

    Returns (seconds to wait before the first call, seconds between calls). Every container
    reserves from the same row, so the provider sees at most requests_per_second overall.
    """
    cur.execute(
        """UPDATE provider_accounts
           SET next_call_at = greatest(next_call_at, now())
                              + make_interval(secs => %(calls)s / requests_per_second)
           WHERE id = %(id)s
           RETURNING greatest(0, extract(epoch FROM next_call_at - now())
                                 - %(calls)s / requests_per_second)::float8 AS wait,
                     (1.0 / requests_per_second)::float8 AS spacing""",
        {"id": account_id, "calls": calls},
    )
    row = cur.fetchone()
    if row is None:
        return 0.0, 0.0
    return float(row["wait"]), float(row["spacing"])


def hold_off(cur: Cursor, account_id: UUID, seconds: float) -> None:
    """The provider said 429: nobody calls it for this account before `seconds` from now."""
    cur.execute(
        """UPDATE provider_accounts
           SET next_call_at = greatest(next_call_at, now() + make_interval(secs => %(s)s))
           WHERE id = %(id)s""",
        {"id": account_id, "s": seconds},
    )


def advance_cursor(cur: Cursor, account_id: UUID, cursor: str | None) -> None:
    cur.execute(
        """UPDATE provider_accounts
           SET sync_cursor = coalesce(%(cursor)s, sync_cursor), last_polled_at = now(),
               updated_at = now()
           WHERE id = %(id)s""",
        {"id": account_id, "cursor": cursor},
    )
