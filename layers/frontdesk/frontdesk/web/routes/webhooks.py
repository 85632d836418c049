"""Outbound webhook routes (admin): a clinic's endpoints, their deliveries, and replay.

The provider webhooks we receive are in routes/sync.py (`POST /webhooks/{provider}/{account}`).
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from frontdesk.sync.egress import Egress
from frontdesk.web.auth import Admin, GuardedRoute
from frontdesk.web.context import Web, Write
from frontdesk.web.http import ERROR_RESPONSES, Envelope
from frontdesk.webhooks import delivery, endpoints
from frontdesk.webhooks.delivery import DeliveryDetail, DeliveryOut
from frontdesk.webhooks.endpoints import (
    EndpointCreated,
    EndpointDeleted,
    EndpointIn,
    EndpointOut,
    EndpointUpdate,
    SecretRotation,
)

router = APIRouter(route_class=GuardedRoute, tags=["webhooks"], responses=ERROR_RESPONSES)


@router.post(
    "/webhooks/endpoints",
    status_code=201,
    summary="Register an endpoint (admin); its signing secret is in this answer only",
)
def create_webhook_endpoint(
    admin: Admin, endpoint: EndpointIn, web: Write
) -> Envelope[EndpointCreated]:
    services = web.services
    created = web.run(
        EndpointCreated,
        "createWebhookEndpoint",
        endpoint.model_dump(),
        admin.clinic_id,
        lambda uow: endpoints.register(
            uow,
            services.cipher,
            Egress.for_webhooks(services.settings),
            clinic_id=admin.clinic_id,
            endpoint=endpoint,
        ),
        secret_result=True,  # the secret is shown once, and again to a retry: stored encrypted
    )
    return web.ok(created, "createWebhookEndpoint", "webhookEndpoint", [created.id])


@router.post(
    "/webhooks/endpoints/{endpoint_id}/rotate-secret",
    summary="Give an endpoint a new signing secret, in this answer only; the old one signs "
    "beside it for the hours asked (admin)",
)
def rotate_webhook_secret(
    admin: Admin, endpoint_id: UUID, rotation: SecretRotation, web: Write
) -> Envelope[EndpointCreated]:
    services = web.services
    rotated = web.run(
        EndpointCreated,
        "rotateWebhookSecret",
        {"id": str(endpoint_id), **rotation.model_dump()},
        admin.clinic_id,
        lambda uow: endpoints.rotate_secret(
            uow,
            services.cipher,
            clinic_id=admin.clinic_id,
            endpoint_id=endpoint_id,
            rotation=rotation,
        ),
        secret_result=True,
    )
    return web.ok(rotated, "rotateWebhookSecret", "webhookEndpoint", [endpoint_id])


@router.get("/webhooks/endpoints", summary="The clinic's endpoints, without secrets (admin)")
def list_webhook_endpoints(admin: Admin, web: Web) -> Envelope[list[EndpointOut]]:
    found = endpoints.list_endpoints(web.services.database, clinic_id=admin.clinic_id)
    return web.ok(found, "listWebhookEndpoints", "webhookEndpoint", [e.id for e in found])


@router.get("/webhooks/endpoints/{endpoint_id}", summary="An endpoint, without its secret (admin)")
def read_webhook_endpoint(admin: Admin, endpoint_id: UUID, web: Web) -> Envelope[EndpointOut]:
    found = endpoints.get_endpoint(
        web.services.database, clinic_id=admin.clinic_id, endpoint_id=endpoint_id
    )
    return web.ok(found, "getWebhookEndpoint", "webhookEndpoint", [endpoint_id])


@router.patch(
    "/webhooks/endpoints/{endpoint_id}",
    summary="Change an endpoint's URL, events or description; enable or disable it (admin)",
)
def update_webhook_endpoint(
    admin: Admin, endpoint_id: UUID, change: EndpointUpdate, web: Write
) -> Envelope[EndpointOut]:
    services = web.services
    updated = web.run(
        EndpointOut,
        "updateWebhookEndpoint",
        {"id": str(endpoint_id), **change.model_dump(exclude_unset=True)},
        admin.clinic_id,
        lambda uow: endpoints.update(
            uow,
            Egress.for_webhooks(services.settings),
            clinic_id=admin.clinic_id,
            endpoint_id=endpoint_id,
            change=change,
        ),
    )
    return web.ok(updated, "updateWebhookEndpoint", "webhookEndpoint", [endpoint_id])


@router.delete(
    "/webhooks/endpoints/{endpoint_id}",
    summary="Delete an endpoint and its deliveries (admin)",
)
def delete_webhook_endpoint(
    admin: Admin, endpoint_id: UUID, web: Write
) -> Envelope[EndpointDeleted]:
    deleted = web.run(
        EndpointDeleted,
        "deleteWebhookEndpoint",
        {"id": str(endpoint_id)},
        admin.clinic_id,
        lambda uow: endpoints.delete(uow, clinic_id=admin.clinic_id, endpoint_id=endpoint_id),
    )
    return web.ok(deleted, "deleteWebhookEndpoint", "webhookEndpoint", [endpoint_id])


@router.get(
    "/webhooks/endpoints/{endpoint_id}/deliveries",
    summary="An endpoint's latest deliveries, newest first (admin)",
)
def list_webhook_deliveries(
    admin: Admin,
    endpoint_id: UUID,
    web: Web,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Envelope[list[DeliveryOut]]:
    found = delivery.list_deliveries(
        web.services.database, clinic_id=admin.clinic_id, endpoint_id=endpoint_id, limit=limit
    )
    return web.ok(found, "listWebhookDeliveries", "webhookDelivery", [d.id for d in found])


@router.get(
    "/webhooks/deliveries/{delivery_id}",
    summary="A delivery with its attempts (status code, error, latency) and body (admin)",
)
def read_webhook_delivery(admin: Admin, delivery_id: UUID, web: Web) -> Envelope[DeliveryDetail]:
    found = delivery.get_delivery(
        web.services.database, clinic_id=admin.clinic_id, delivery_id=delivery_id
    )
    return web.ok(found, "getWebhookDelivery", "webhookDelivery", [delivery_id])


@router.post(
    "/webhooks/deliveries/{delivery_id}/replay",
    status_code=202,
    summary="Send a delivery again (admin): a new delivery of the same event, same event id",
)
def replay_webhook_delivery(admin: Admin, delivery_id: UUID, web: Write) -> Envelope[DeliveryOut]:
    replayed = web.run(
        DeliveryOut,
        "replayWebhookDelivery",
        {"id": str(delivery_id)},
        admin.clinic_id,
        lambda uow: delivery.replay(uow, clinic_id=admin.clinic_id, delivery_id=delivery_id),
    )
    headers = {"Location": f"/webhooks/deliveries/{replayed.id}"}
    return web.ok(
        replayed, "replayWebhookDelivery", "webhookDelivery", [replayed.id], headers=headers
    )
