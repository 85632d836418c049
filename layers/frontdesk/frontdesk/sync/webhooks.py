"""Provider webhooks: signature check over the raw body, then one unit of work that records
the delivery (its id is the replay guard) and starts the sync job.

The signature (frontdesk.platform.signature, the same one outbound webhooks carry):
`Webhook-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>]`, v1 = HMAC-SHA256(secret,
"<t>." + raw body), the timestamp within the tolerance (300 s) in either direction.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from frontdesk.errors import Forbidden, InvalidInput, NotFound
from frontdesk.platform.crypto import EnvelopeCipher
from frontdesk.platform.db import Database, transaction
from frontdesk.platform.queues import JobKind
from frontdesk.platform.signature import (
    check_timestamp,
    parse_signature,
    verify,
)
from frontdesk.platform.unit_of_work import UnitOfWork
from frontdesk.sync import accounts as provider_accounts
from frontdesk.sync.providers import RESOURCES
from frontdesk.values import ApiModel


@dataclass(frozen=True)
class Delivery:
    id: str
    type: str
    resource: str
    external_id: str


def parse_delivery(body: bytes) -> Delivery:
    """The signed body: {"id", "type", "resource": "lead"|"booking", "resourceId"}."""
    try:
        data: Any = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        delivery = Delivery(
            id=str(data["id"]),
            type=str(data.get("type", "")),
            resource=str(data["resource"]),
            external_id=str(data["resourceId"]),
        )
    except (ValueError, KeyError, TypeError):
        raise InvalidInput("the webhook body needs id, resource and resourceId") from None
    if delivery.resource not in RESOURCES:
        raise InvalidInput(f"resource must be one of {', '.join(RESOURCES)}")
    if not 1 <= len(delivery.id) <= 200 or not 1 <= len(delivery.external_id) <= 200:
        raise InvalidInput("id and resourceId must have 1 to 200 characters")
    return delivery


class WebhookAccepted(ApiModel):
    delivery_id: str
    job_id: UUID
    duplicate: bool


@dataclass(frozen=True)
class VerifiedDelivery:
    account_id: UUID
    clinic_id: UUID
    delivery: Delivery


def check_delivery(
    db: Database,
    cipher: EnvelopeCipher,
    *,
    provider: str,
    account_id: UUID,
    body: bytes,
    signature_header: str | None,
    tolerance_seconds: int,
    now: float | None = None,
) -> VerifiedDelivery:
    """The delivery, once its signature, timestamp and account check out (a short read; the
    secret is decrypted outside any transaction)."""
    signature = parse_signature(signature_header)
    check_timestamp(
        signature, now=time.time() if now is None else now, tolerance_seconds=tolerance_seconds
    )
    account = provider_accounts.webhook_account(db, cipher, account_id=account_id)
    if account is None or account.provider != provider:
        raise NotFound("no such provider account")
    verify(account.webhook_secret, signature, body)
    if account.status == "disabled":
        raise Forbidden("this provider account is disabled")
    return VerifiedDelivery(account_id, account.clinic_id, parse_delivery(body))


def record_delivery(uow: UnitOfWork, verified: VerifiedDelivery) -> WebhookAccepted:
    """Record the delivery (its id is the replay guard) and start its sync job, in `uow`.

    Nothing here calls the provider: the answer depends on the database only.
    """
    account_id, delivery = verified.account_id, verified.delivery
    cur = uow.cur
    cur.execute(
        """INSERT INTO webhook_deliveries
               (account_id, delivery_id, clinic_id, via, resource, external_id)
           VALUES (%(account)s, %(delivery)s, %(clinic)s, 'webhook', %(resource)s,
                   %(external_id)s)
           ON CONFLICT (account_id, delivery_id) DO NOTHING
           RETURNING delivery_id""",
        {
            "account": account_id,
            "delivery": delivery.id,
            "clinic": verified.clinic_id,
            "resource": delivery.resource,
            "external_id": delivery.external_id,
        },
    )
    if cur.fetchone() is None:
        cur.execute(
            """SELECT job_id FROM webhook_deliveries
               WHERE account_id = %(account)s AND delivery_id = %(delivery)s""",
            {"account": account_id, "delivery": delivery.id},
        )
        row = cur.fetchone()
        assert row is not None
        return WebhookAccepted(delivery_id=delivery.id, job_id=row["job_id"], duplicate=True)
    job_id = uow.start_job(
        JobKind.SYNC_FETCH,
        verified.clinic_id,
        {
            "accountId": str(account_id),
            "items": [{"resource": delivery.resource, "externalId": delivery.external_id}],
            "deliveryId": delivery.id,
        },
    )
    cur.execute(
        """UPDATE webhook_deliveries SET job_id = %(job)s
           WHERE account_id = %(account)s AND delivery_id = %(delivery)s""",
        {"job": job_id, "account": account_id, "delivery": delivery.id},
    )
    return WebhookAccepted(delivery_id=delivery.id, job_id=job_id, duplicate=False)


def purge_deliveries(db: Database, *, older_than_days: int, limit: int) -> int:
    """Forget deliveries received before the retention, at most `limit` (the replay guard
    needs them only as long as a provider may still send or list them again)."""
    with transaction(db) as cur:
        cur.execute(
            """DELETE FROM webhook_deliveries WHERE (account_id, delivery_id) IN (
                   SELECT account_id, delivery_id FROM webhook_deliveries
                   WHERE received_at < now() - make_interval(days => %(days)s)
                   LIMIT %(limit)s)""",
            {"days": older_than_days, "limit": limit},
        )
        return cur.rowcount
