"""The HTTP API (FastAPI): one router per feature, plumbing in web/http.py.

One HTTP API, two functions: ApiFunction serves every route but the operators', OpsFunction
the operators' (/ops), each with its own role, so the public-facing function holds no
right on a dead-letter queue. `create_app` builds the app of a set of routers; with none
given, all of them (the whole API's document, as the gateway serves it).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

from fastapi import FastAPI

from frontdesk.config import Settings
from frontdesk.web.http import RequestContextMiddleware, install_error_handlers
from frontdesk.web.routes import (
    appointments,
    assistant,
    dashboard,
    jobs,
    leads,
    ops,
    sync,
    webhooks,
)

API_ROUTERS: tuple[ModuleType, ...] = (
    leads,
    jobs,
    assistant,
    appointments,
    sync,
    dashboard,
    webhooks,
)
OPS_ROUTERS: tuple[ModuleType, ...] = (ops,)


def create_app(settings: Settings, routers: Sequence[ModuleType] | None = None) -> FastAPI:
    app = FastAPI(
        title="Frontdesk API",
        version="0.1.0",
        description="The clinic front office: leads and the jobs that follow them up.",
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        body_rules=sync.body_rules(settings),
    )
    install_error_handlers(app)
    for module in API_ROUTERS + OPS_ROUTERS if routers is None else routers:
        app.include_router(module.router)
    return app


NEEDS = (
    "database",
    "kms_key_id",
    "blind_index",
    "notifications_queue_url",
    "llm_queue_url",
    "sync_queue_url",
)


# OpsFunction: the queues it reports on and the dead-letter queues it replays from.
OPS_NEEDS = (
    "database",
    "notifications_queue_url",
    "llm_queue_url",
    "sync_queue_url",
    "notifications_dlq_url",
    "llm_dlq_url",
    "sync_dlq_url",
)


def make_app() -> FastAPI:
    """ApiFunction's app, configured by the container's settings."""
    from frontdesk.services import get_services

    return create_app(get_services().settings, API_ROUTERS)


def make_ops_app() -> FastAPI:
    """OpsFunction's app: the operators' routes only."""
    from frontdesk.services import get_services

    return create_app(get_services().settings, OPS_ROUTERS)


def make_handler(app: FastAPI, function: str = "ApiFunction") -> Any:
    """An HTTP function's Lambda handler: API Gateway HTTP API -> `app` through Mangum."""
    from aws_lambda_powertools.logging import correlation_paths
    from mangum import Mangum

    from frontdesk.entry import lambda_handler

    _give_the_thread_an_event_loop()
    asgi = Mangum(
        app,
        lifespan="off",
        # Without it Mangum base64-encodes problem+json bodies.
        text_mime_types=["application/json", "application/problem+json"],
    )
    api = function == "ApiFunction"
    handler = lambda_handler(
        function,
        NEEDS if api else OPS_NEEDS,
        asgi,
        correlation_id_path=correlation_paths.API_GATEWAY_HTTP,
        emits_metrics=False,
        # Only the API's writes hand work off through the outbox; only it has SnapStart.
        relay_after_response=api,
        snap_start=api,
    )
    return handler


def _give_the_thread_an_event_loop() -> None:
    """Mangum looks the thread's event loop up when it is built, which Python 3.12+ deprecates
    when the thread has none: give it one first (once; later calls reuse it)."""
    import asyncio
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            asyncio.get_event_loop()
        except (RuntimeError, DeprecationWarning):
            asyncio.set_event_loop(asyncio.new_event_loop())
