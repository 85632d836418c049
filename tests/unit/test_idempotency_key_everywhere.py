"""Every mutating route takes an Idempotency-Key: the OpenAPI document of the real app (the
API's and the operators' routes) is walked, and a POST, PUT or PATCH that does not declare
the header parameter (a route that does not take `Write`) fails here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI

from frontdesk.web.context import Web, Write

MUTATING = {"post", "put", "patch"}


def routes_without_the_key(spec: dict[str, Any]) -> list[str]:
    missing = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method not in MUTATING:
                continue
            headers = {
                p["name"].lower()
                for p in operation.get("parameters", [])
                if p.get("in") == "header"
            }
            if "idempotency-key" not in headers:
                missing.append(f"{method.upper()} {path}")
    return sorted(missing)


def test_every_post_put_and_patch_declares_the_idempotency_key() -> None:
    from frontdesk.config import Settings
    from frontdesk.web.app import create_app

    # Given the real app's OpenAPI document, the operators' routes included
    spec = create_app(Settings()).openapi()
    mutating = [
        (method, path)
        for path, operations in spec["paths"].items()
        for method in operations
        if method in MUTATING
    ]
    # Then every mutating route declares the Idempotency-Key header
    assert len(mutating) >= 12
    assert routes_without_the_key(spec) == [], "take `web: Write` and run the write with it"


def test_the_check_finds_a_mutating_route_without_the_key() -> None:
    # Given an app with a POST and a PATCH taking `Web` only, and a PUT taking `Write`
    router = APIRouter()

    @router.post("/things")
    def create_thing(web: Web) -> None: ...

    @router.patch("/things/{thing_id}")
    def change_thing(thing_id: str, web: Web) -> None: ...

    @router.put("/things/{thing_id}")
    def replace_thing(thing_id: str, web: Write) -> None: ...

    @router.get("/things")
    def list_things(web: Web) -> None: ...

    app = FastAPI()
    app.include_router(router)
    # Then the check names exactly the two mutating routes without it
    assert routes_without_the_key(app.openapi()) == [
        "PATCH /things/{thing_id}",
        "POST /things",
    ]
