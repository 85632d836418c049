"""Provider sync routes: webhooks (signed, public), CSV imports (staff), provider accounts
(staff with the admin role)."""

from __future__ import annotations

import re
import tempfile
from functools import cache
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from frontdesk.config import Settings, get_settings
from frontdesk.errors import InvalidInput
from frontdesk.leads import imports
from frontdesk.platform.crypto import get_cipher
from frontdesk.platform.db import get_database
from frontdesk.platform.outbox import Publisher, default_publisher
from frontdesk.sync import accounts as provider_accounts
from frontdesk.sync import webhooks
from frontdesk.web.auth import Staff, admin
from frontdesk.web.http import ERROR_RESPONSES, BodyRule, Envelope, envelope

router = APIRouter(tags=["sync"], responses=ERROR_RESPONSES)

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


@cache
def publisher() -> Publisher:
    return default_publisher()


class WebhookAccepted(BaseModel):
    deliveryId: str
    jobId: UUID
    duplicate: bool


@router.post(
    "/webhooks/{provider}/{account_id}",
    status_code=202,
    response_model=Envelope[WebhookAccepted],
    summary="A provider's webhook (signed: Webhook-Signature t=...,v1=...); 200 for a replay",
    openapi_extra={"security": []},
)
async def receive_webhook(
    request: Request,
    provider: str,
    account_id: UUID,
    signature: Annotated[str | None, Header(alias="Webhook-Signature")] = None,
) -> JSONResponse:
    body = await request.body()  # the raw bytes the signature covers
    accepted = await run_in_threadpool(
        webhooks.accept,
        get_database(),
        get_cipher(),
        publisher(),
        provider=provider,
        account_id=account_id,
        body=body,
        signature_header=signature,
        request_id=request.state.request_id,
        tolerance_seconds=get_settings().webhook_tolerance_seconds,
    )
    return envelope(
        request,
        {
            "deliveryId": accepted.delivery_id,
            "jobId": str(accepted.job_id),
            "duplicate": accepted.duplicate,
        },
        operation="receiveWebhook",
        entity="webhookDelivery",
        affected_ids=[] if accepted.duplicate else [str(accepted.job_id)],
        # A replay changes nothing; 2xx still, so an honest provider retry stops.
        status_code=200 if accepted.duplicate else 202,
    )


class ImportAccepted(BaseModel):
    importId: UUID
    jobId: UUID
    rowsTotal: int


@router.post(
    "/leads/imports",
    status_code=202,
    response_model=Envelope[ImportAccepted],
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
    source: Annotated[str, Query(description="the leads' source label")] = "csv_import",
) -> JSONResponse:
    if not _SOURCE.match(source):
        raise InvalidInput("source: lowercase letters, digits, _ and -, at most 40")
    # Spooled: at most 1 MiB in memory, the rest in a temporary file; never held whole.
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
        size = lines = 0
        last = b""
        async for chunk in request.stream():
            if chunk:
                spool.write(chunk)
                size += len(chunk)
                lines += chunk.count(b"\n")
                last = chunk[-1:]
        if size == 0:
            raise InvalidInput("the CSV body is empty")
        if last != b"\n":
            lines += 1
        created = await run_in_threadpool(
            imports.store_upload,
            get_database(),
            publisher(),
            clinic_id=staff.clinic_id,
            source=source,
            file=spool,
            size=size,
            lines=lines,
            request_id=request.state.request_id,
        )
    return envelope(
        request,
        created,
        operation="importLeads",
        entity="leadImport",
        affected_ids=[created["importId"]],
        status_code=202,
        headers={"Location": f"/jobs/{created['jobId']}", "Retry-After": "1"},
    )


class AccountSaved(BaseModel):
    id: UUID
    status: str
    jobId: UUID
    webhookPath: str | None = None
    webhookSecret: str | None = None


class Account(BaseModel):
    id: UUID
    provider: str
    name: str | None
    apiBaseUrl: str
    requestsPerSecond: float
    status: str
    lastError: str | None
    syncCursor: str | None
    validatedAt: str | None
    lastPolledAt: str | None
    createdAt: str
    updatedAt: str


@router.post(
    "/provider-accounts",
    status_code=202,
    response_model=Envelope[AccountSaved],
    summary="Connect a provider (admin): saved at once, credentials checked in the background",
)
def create_provider_account(
    request: Request, staff: Staff, account: provider_accounts.AccountIn
) -> JSONResponse:
    admin(staff)
    settings = get_settings()
    saved = provider_accounts.create_account(
        get_database(),
        get_cipher(),
        publisher(),
        clinic_id=staff.clinic_id,
        account=account,
        request_id=request.state.request_id,
        allow_http=settings.provider_allow_http,
    )
    return envelope(
        request,
        saved,
        operation="createProviderAccount",
        entity="providerAccount",
        affected_ids=[saved["id"]],
        status_code=202,
        headers={"Location": f"/jobs/{saved['jobId']}"},
    )


@router.put(
    "/provider-accounts/{account_id}/credentials",
    status_code=202,
    response_model=Envelope[AccountSaved],
    summary="Replace a provider account's credentials (admin); checked in the background",
)
def replace_provider_credentials(
    request: Request, staff: Staff, account_id: UUID, update: provider_accounts.CredentialsIn
) -> JSONResponse:
    admin(staff)
    saved = provider_accounts.replace_credentials(
        get_database(),
        get_cipher(),
        publisher(),
        clinic_id=staff.clinic_id,
        account_id=account_id,
        update=update,
        request_id=request.state.request_id,
    )
    return envelope(
        request,
        saved,
        operation="replaceProviderCredentials",
        entity="providerAccount",
        affected_ids=[str(account_id)],
        status_code=202,
        headers={"Location": f"/jobs/{saved['jobId']}"},
    )


@router.get(
    "/provider-accounts",
    response_model=Envelope[list[Account]],
    summary="The clinic's provider accounts, without secrets (admin)",
)
def list_provider_accounts(request: Request, staff: Staff) -> JSONResponse:
    admin(staff)
    accounts: list[dict[str, Any]] = provider_accounts.list_accounts(
        get_database(), clinic_id=staff.clinic_id
    )
    return envelope(
        request,
        accounts,
        operation="listProviderAccounts",
        entity="providerAccount",
        affected_ids=[str(a["id"]) for a in accounts],
    )


@router.get(
    "/provider-accounts/{account_id}",
    response_model=Envelope[Account],
    summary="A provider account's status, last error and cursor, without secrets (admin)",
)
def read_provider_account(request: Request, staff: Staff, account_id: UUID) -> JSONResponse:
    admin(staff)
    account = provider_accounts.get_account(
        get_database(), clinic_id=staff.clinic_id, account_id=account_id
    )
    return envelope(
        request,
        account,
        operation="getProviderAccount",
        entity="providerAccount",
        affected_ids=[str(account_id)],
    )
