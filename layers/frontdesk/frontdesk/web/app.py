"""The HTTP API (FastAPI): one router per feature, plumbing in web/http.py."""

from __future__ import annotations

from fastapi import FastAPI

from frontdesk.config import get_settings
from frontdesk.web.http import RequestContextMiddleware, install_error_handlers
from frontdesk.web.routes import appointments as routes_appointments
from frontdesk.web.routes import assistant as routes_assistant
from frontdesk.web.routes import dashboard as routes_metrics
from frontdesk.web.routes import dead_letters as routes_dead_letters
from frontdesk.web.routes import jobs as routes_jobs
from frontdesk.web.routes import leads as routes_leads
from frontdesk.web.routes import ops as routes_ops
from frontdesk.web.routes import sync as routes_sync


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
