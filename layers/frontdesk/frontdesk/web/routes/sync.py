"""Provider sync routes: webhooks (signed, public), CSV imports (staff), provider accounts
(staff with the admin role)."""

from __future__ import annotations

import hashlib
import re
import tempfile
from typing import IO, Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request
from starlette.concurrency import run_in_threadpool

from frontdesk.config import Settings
from frontdesk.errors import InvalidInput
from frontdesk.leads import imports
from frontdesk.leads.imports import ImportAccepted
from frontdesk.sync import accounts, webhooks
from frontdesk.sync.accounts import AccountIn, AccountOut, AccountSaved, CredentialsIn
from frontdesk.sync.egress import Egress
from frontdesk.sync.webhooks import WebhookAccepted
from frontdesk.web.auth import Admin, GuardedRoute, Staff
from frontdesk.web.context import Web, Write, WriteContext
from frontdesk.web.http import ERROR_RESPONSES, BodyRule, Envelope

router = APIRouter(route_class=GuardedRoute, tags=["sync"], responses=ERROR_RESPONSES)

_SOURCE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,39}$")
_SPOOL_IN_MEMORY = 1024 * 1024  # an upload beyond this goes to a temporary file


def body_rules(settings: Settings) -> tuple[BodyRule, ...]:
    """The raw-bodied routes: their media types and size limits (see RequestContextMiddleware)."""
    return (
        BodyRule(
            "POST",
            re.compile(r"/webhooks/[^/]+/[^/]+"),
            frozenset({b"application/json", b"text/plain", b"application/octet-stream"}),
            settings.webhook_max_body_bytes,
        ),
        BodyRule(
            "POST",
            re.compile(r"/leads/imports"),
            frozenset({b"text/csv", b"application/csv"}),
            settings.import_max_bytes,
        ),
    )


@router.post(
    "/webhooks/{provider}/{account_id}",
    status_code=202,
    summary="A provider's webhook (signed: Webhook-Signature t=...,v1=...); 200 for a replay",
    openapi_extra={"security": []},
)
async def receive_webhook(
    request: Request,
    provider: str,
    account_id: UUID,
    web: Write,
    signature: Annotated[str | None, Header(alias="Webhook-Signature")] = None,
) -> Envelope[WebhookAccepted]:
    body = await request.body()  # the raw bytes the signature covers
    accepted = await run_in_threadpool(_accept_webhook, web, provider, account_id, body, signature)
    if accepted.duplicate:
        # A replay changes nothing; 2xx still, so an honest provider retry stops.
        web.response.status_code = 200
    affected = [] if accepted.duplicate else [accepted.job_id]
    return web.ok(accepted, "receiveWebhook", "webhookDelivery", affected)


def _accept_webhook(
    web: WriteContext, provider: str, account_id: UUID, body: bytes, signature: str | None
) -> WebhookAccepted:
    services = web.services
    verified = webhooks.check_delivery(
        services.database,
        services.cipher,
        provider=provider,
        account_id=account_id,
        body=body,
        signature_header=signature,
        tolerance_seconds=services.settings.webhook_tolerance_seconds,
    )
    # The delivery id is the replay guard; an Idempotency-Key, when a provider sends one,
    # is kept per the account's clinic like any other.
    return web.run(
        WebhookAccepted,
        f"receiveWebhook:{provider}:{account_id}",
        hashlib.sha256(body).hexdigest(),
        verified.clinic_id,
        lambda uow: webhooks.record_delivery(uow, verified),
    )


@router.post(
    "/leads/imports",
    status_code=202,
    summary="Import leads from a CSV body (text/csv): 202 with the job that processes it",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string"}}},
        }
    },
)
async def import_leads(
    request: Request,
    staff: Staff,
    web: Write,
    source: Annotated[str, Query(description="the leads' source label")] = "csv_import",
) -> Envelope[ImportAccepted]:
    if not _SOURCE.match(source):
        raise InvalidInput("source: lowercase letters, digits, _ and -, at most 40")
    # Spooled: at most 1 MiB in memory, the rest in a temporary file; never held whole.
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
        size = lines = 0
        last = b""
        digest = hashlib.sha256()  # what the Idempotency-Key is checked against
        async for chunk in request.stream():
            if chunk:
                spool.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                lines += chunk.count(b"\n")
                last = chunk[-1:]
        if size == 0:
            raise InvalidInput("the CSV body is empty")
        if last != b"\n":
            lines += 1
        created = await run_in_threadpool(
            _store_import, web, staff.clinic_id, source, spool, size, lines, digest.hexdigest()
        )
    headers = {"Location": f"/jobs/{created.job_id}", "Retry-After": "1"}
    return web.ok(created, "importLeads", "leadImport", [created.import_id], headers=headers)


def _store_import(
    web: WriteContext,
    clinic_id: UUID,
    source: str,
    spool: IO[bytes],
    size: int,
    lines: int,
    sha256: str,
) -> ImportAccepted:
    return web.run(
        ImportAccepted,
        "importLeads",
        {"source": source, "sha256": sha256, "size": size},
        clinic_id,
        lambda uow: imports.store_upload(
            uow,
            web.services.cipher,
            clinic_id=clinic_id,
            source=source,
            file=spool,
            size=size,
            lines=lines,
        ),
    )


@router.post(
    "/provider-accounts",
    status_code=202,
    response_model_exclude_none=True,
    summary="Connect a provider (admin): saved at once, credentials checked in the background",
)
def create_provider_account(admin: Admin, account: AccountIn, web: Write) -> Envelope[AccountSaved]:
    services = web.services
    saved = web.run(
        AccountSaved,
        "createProviderAccount",
        account.model_dump(mode="json"),
        admin.clinic_id,
        lambda uow: accounts.create_account(
            uow,
            services.cipher,
            clinic_id=admin.clinic_id,
            account=account,
            egress=Egress.from_settings(services.settings),
        ),
        # a generated webhook secret is shown once, and again to a retry: stored encrypted
        secret_result=True,
    )
    headers = {"Location": f"/jobs/{saved.job_id}"}
    return web.ok(saved, "createProviderAccount", "providerAccount", [saved.id], headers=headers)


@router.put(
    "/provider-accounts/{account_id}/credentials",
    status_code=202,
    response_model_exclude_none=True,
    summary="Replace a provider account's credentials (admin); checked in the background",
)
def replace_provider_credentials(
    admin: Admin, account_id: UUID, update: CredentialsIn, web: Write
) -> Envelope[AccountSaved]:
    services = web.services
    saved = web.run(
        AccountSaved,
        f"replaceProviderCredentials:{account_id}",
        update.model_dump(mode="json"),
        admin.clinic_id,
        lambda uow: accounts.replace_credentials(
            uow, services.cipher, clinic_id=admin.clinic_id, account_id=account_id, update=update
        ),
    )
    headers = {"Location": f"/jobs/{saved.job_id}"}
    return web.ok(
        saved, "replaceProviderCredentials", "providerAccount", [account_id], headers=headers
    )


@router.get(
    "/provider-accounts",
    summary="The clinic's provider accounts, without secrets (admin)",
)
def list_provider_accounts(admin: Admin, web: Web) -> Envelope[list[AccountOut]]:
    found = accounts.list_accounts(web.services.database, clinic_id=admin.clinic_id)
    return web.ok(found, "listProviderAccounts", "providerAccount", [a.id for a in found])


@router.get(
    "/provider-accounts/{account_id}",
    summary="A provider account's status, last error and cursor, without secrets (admin)",
)
def read_provider_account(admin: Admin, account_id: UUID, web: Web) -> Envelope[AccountOut]:
    account = accounts.get_account(
        web.services.database, clinic_id=admin.clinic_id, account_id=account_id
    )
    return web.ok(account, "getProviderAccount", "providerAccount", [account_id])
