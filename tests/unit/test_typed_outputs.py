"""Every route answers with a typed model inside the envelope, and the answer is checked
against it: the OpenAPI document and the answers come from the same models."""

from __future__ import annotations

import typing
import uuid
from typing import Any

from fastapi import FastAPI, Response
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from frontdesk.config import Settings
from frontdesk.values import Created
from frontdesk.web.app import create_app
from frontdesk.web.http import Envelope, RequestContextMiddleware, install_error_handlers


def envelope_models(annotation: Any) -> list[type]:
    """The Envelope[...] types an endpoint's return annotation allows."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) else (annotation,)
    if typing.get_origin(annotation) is None and isinstance(annotation, type):
        options = (annotation,)
    return [o for o in options if isinstance(o, type) and issubclass(o, Envelope)]


def api_routes(routes: list[Any]) -> list[APIRoute]:
    """The app's API routes, through the routers it includes."""
    found = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        included = getattr(route, "original_router", None)
        if included is not None:
            found += api_routes(included.routes)
    return found


def test_every_route_declares_its_envelope_and_returns_it() -> None:
    # Given the API's routes
    app = create_app(Settings())
    routes = api_routes(app.routes)
    operations = {(m, r.path) for r in routes for m in r.methods}
    documented = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    assert operations == documented
    for route in routes:
        # When its declared answer and its endpoint's return annotation are read
        hints = typing.get_type_hints(route.endpoint)
        returned = envelope_models(hints["return"])
        # Then the answer is an Envelope of a model, and the endpoint returns that very type
        where = f"{route.methods} {route.path}"
        assert route.response_model is not None, where
        assert issubclass(route.response_model, Envelope), where
        assert returned == [route.response_model], where


def test_an_answer_off_its_declared_model_is_refused() -> None:
    # Given a route that declares Envelope[Created] and answers something else
    app = FastAPI()
    app.add_middleware(RequestContextMiddleware, max_body_bytes=1024)
    install_error_handlers(app)

    @app.get("/wrong")
    def wrong() -> Envelope[Created]:
        return {"data": {"id": "not-a-uuid"}, "meta": {}}  # type: ignore[return-value]

    @app.get("/right")
    def right() -> Envelope[Created]:
        return Envelope[Created].model_validate(
            {
                "data": {"id": str(uuid.uuid4())},
                "meta": {
                    "requestId": "r",
                    "timestamp": "t",
                    "operation": "o",
                    "entity": "e",
                    "success": True,
                    "affectedIds": [],
                    "executionTimeMs": 0,
                },
            }
        )

    client = TestClient(app, raise_server_exceptions=False)
    # When both are called / Then the wrong answer never reaches the client as data
    assert client.get("/right").status_code == 200
    answer: Response = client.get("/wrong")  # type: ignore[assignment]
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/problem+json"
