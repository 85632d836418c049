"""ProviderPoller's work: every active account's change feed, read past its cursor; the
changes no webhook delivered become one sync job per account (a backup for missed
webhooks). The cursor moves in the unit of work that starts the job."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any
from uuid import UUID

from frontdesk.observability import logger
from frontdesk.platform.db import transaction
from frontdesk.platform.queues import JobKind
from frontdesk.sync import accounts as provider_accounts
from frontdesk.sync.fetch import CallPolicy, ProviderCaller, TransientSyncError, adapter_of
from frontdesk.sync.providers import Change, ProviderError

if TYPE_CHECKING:
    from frontdesk.services import Services


def poll_account(
    services: Services,
    policy: CallPolicy,
    *,
    account_id: UUID,
    clinic_id: UUID,
    max_changes: int,
) -> dict[str, Any]:
    """List the changes since the cursor; enqueue those no webhook delivered; advance the
    cursor in the same unit of work as the job."""
    db = services.database
    account = provider_accounts.sync_account(
        db, services.cipher, account_id=account_id, clinic_id=clinic_id
    )
    if account is None or account.status != "active":
        return {"changes": 0, "missed": 0}
    caller = ProviderCaller(db, account_id, policy)
    adapter = adapter_of(account, policy)
    caller.admit()
    changes: list[Change] = []
    cursor = account.sync_cursor
    while len(changes) < max_changes:
        limit = min(100, max_changes - len(changes))
        page = caller.call(partial(adapter.list_changes, cursor, limit))
        changes += page.changes
        cursor = page.next_cursor
        if not page.has_more or not page.changes:
            break
    with services.unit_of_work() as uow:
        cur = uow.cur
        cur.execute(
            """INSERT INTO webhook_deliveries
                   (account_id, delivery_id, clinic_id, via, resource, external_id)
               SELECT %(account)s, c.id, %(clinic)s, 'poll', c.resource, c.external_id
               FROM unnest(%(ids)s::text[], %(resources)s::text[], %(externals)s::text[])
                   AS c(id, resource, external_id)
               ON CONFLICT (account_id, delivery_id) DO NOTHING
               RETURNING delivery_id, resource, external_id""",
            {
                "account": account_id,
                "clinic": clinic_id,
                "ids": [c.id for c in changes],
                "resources": [c.resource for c in changes],
                "externals": [c.external_id for c in changes],
            },
        )
        missed = cur.fetchall()
        items = list(
            {
                (row["resource"], row["external_id"]): {
                    "resource": row["resource"],
                    "externalId": row["external_id"],
                }
                for row in missed
            }.values()
        )
        job_id = None
        if items:
            job_id = uow.start_job(
                JobKind.SYNC_FETCH,
                clinic_id,
                {"accountId": str(account_id), "items": items, "via": "poll"},
            )
            cur.execute(
                """UPDATE webhook_deliveries SET job_id = %(job)s
                   WHERE account_id = %(account)s AND delivery_id = ANY(%(ids)s)""",
                {"job": job_id, "account": account_id, "ids": [r["delivery_id"] for r in missed]},
            )
        provider_accounts.advance_cursor(cur, account_id, cursor)
    if missed:
        logger.info(
            "poller enqueued missed changes",
            extra={"account_id": str(account_id), "missed": len(missed)},
        )
    return {"changes": len(changes), "missed": len(missed), "jobId": job_id and str(job_id)}


def poll_all(services: Services, policy: CallPolicy, *, max_changes: int) -> dict[str, int]:
    """Every active account, one after the other; one account's failure skips only it."""
    totals = {"accounts": 0, "changes": 0, "missed": 0, "failed": 0}
    db = services.database
    for account_id, clinic_id in provider_accounts.active_account_ids(db):
        totals["accounts"] += 1
        try:
            polled = poll_account(
                services,
                policy,
                account_id=account_id,
                clinic_id=clinic_id,
                max_changes=max_changes,
            )
        except (TransientSyncError, ProviderError) as exc:
            totals["failed"] += 1
            with transaction(db) as cur:
                provider_accounts.record_error(cur, account_id, str(exc))
            logger.warning("poll failed", extra={"account_id": str(account_id), "error": str(exc)})
            continue
        totals["changes"] += polled["changes"]
        totals["missed"] += polled["missed"]
    return totals
