"""The HTTP API (FastAPI): one router per feature, plumbing in web/http.py."""

from __future__ import annotations

from fastapi import FastAPI

from frontdesk.config import get_settings
from frontdesk.web import (
    routes_appointments,
    routes_assistant,
    routes_dead_letters,
    routes_jobs,
    routes_leads,
    routes_metrics,
    routes_ops,
    routes_sync,
)
from frontdesk.web.http import RequestContextMiddleware, install_error_handlers


def create_app() -> FastAPI:
    app = FastAPI(
        title="Frontdesk API",
        version="0.1.0",
        description="The clinic front office: leads and the jobs that follow them up.",
        docs_url=None,
        redoc_url=None,
    )
    settings = get_settings()
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        body_rules=routes_sync.body_rules(settings),
    )
    install_error_handlers(app)
    for module in (
        routes_leads,
        routes_jobs,
        routes_assistant,
        routes_appointments,
        routes_dead_letters,
        routes_sync,
        routes_metrics,
        routes_ops,
    ):
        app.include_router(module.router)
    return app
