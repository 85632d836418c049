"""The API's refusals, through the real Lambda handler (Mangum), before any I/O."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from frontdesk.services import get_services
from tests.support import (
    UNREACHABLE_ENVIRONMENT,
    LambdaContext,
    http_event,
    http_response,
    load_handler,
    reset_process_state,
)

CLINIC = uuid.uuid4()


@pytest.fixture(scope="module")
def api() -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in UNREACHABLE_ENVIRONMENT.items():
            env.setenv(name, value)
        reset_process_state()
        handler = load_handler("api")
        # The token's clinic exists: this container has looked it up before (tests here
        # never reach the database).
        get_services().known_clinics.remember(CLINIC)
        yield handler
    reset_process_state()


def call(api: Any, event: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    response = api.handler(event, LambdaContext())
    assert response["isBase64Encoded"] is False  # problem+json travels as text
    return http_response(response)


def assert_problem(headers: dict[str, str], body: dict[str, Any], status: int, rid: str) -> None:
    assert headers["content-type"] == "application/problem+json"
    assert body["status"] == status
    assert body["requestId"] == rid
    assert headers["x-request-id"] == rid
    assert body["type"].startswith("https://frontdesk.dev/problems/")


def test_invalid_body_is_422_and_echoes_no_values(api: Any) -> None:
    # Given a lead without email or phone and a bad email elsewhere
    event = http_event(
        "POST",
        "/leads",
        body={"name": "Ada", "email": "ada-at-x", "consent": True},
        clinic_id=CLINIC,
    )
    # When it is posted
    status, headers, body = call(api, event)
    # Then it is a 422 problem that names the field but not the value
    assert status == 422
    assert_problem(headers, body, 422, event["requestContext"]["requestId"])
    assert body["errors"][0]["loc"] == ["body", "email"]
    assert "ada-at-x" not in json.dumps(body)


def test_not_json_is_415(api: Any) -> None:
    event = http_event(
        "POST",
        "/leads",
        body="name=Ada",
        clinic_id=CLINIC,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    status, headers, body = call(api, event)
    assert status == 415
    assert_problem(headers, body, 415, event["requestContext"]["requestId"])


def test_oversized_body_is_413(api: Any) -> None:
    event = http_event(
        "POST", "/leads", body={"name": "A", "notes": "x" * 70_000}, clinic_id=CLINIC
    )
    event["headers"]["content-length"] = str(len(event["body"]))
    status, headers, body = call(api, event)
    assert status == 413 and body["title"] == "Payload too large"
    assert_problem(headers, body, 413, event["requestContext"]["requestId"])


def test_malformed_json_is_422(api: Any) -> None:
    status, _, body = call(api, http_event("POST", "/leads", body="{not json", clinic_id=CLINIC))
    assert status == 422 and body["title"] == "Invalid input"


def test_staff_route_without_claims_is_401(api: Any) -> None:
    status, _, _ = call(api, http_event("GET", f"/leads/{uuid.uuid4()}"))
    assert status == 401


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        ("/leads", "{not json", "application/json"),
        ("/leads", '{"name": 1}', "application/json"),
        ("/leads", "name=Ada", "application/x-www-form-urlencoded"),
        ("/public/leads", "{not json", "application/json"),
        ("/leads/imports", "name\nAda\n", "text/plain"),
        ("/provider-accounts", "{not json", "application/json"),
        ("/ops/dead-letters/replay", "{not json", "application/json"),
    ],
)
def test_a_caller_without_credentials_is_401_whatever_the_body(
    api: Any, path: str, body: str, content_type: str
) -> None:
    # Given a body that is malformed, off the schema or of the wrong media type
    event = http_event("POST", path, body=body, headers={"content-type": content_type})
    # When it is posted without a token (or form key), to the function serving the route
    function = load_handler("ops") if path.startswith("/ops/") else api
    status, _, problem = call(function, event)
    # Then the answer is 401: the caller is checked before the body is read
    assert status == 401, problem


def test_every_route_checks_its_caller_before_reading_the_body() -> None:
    # Given the API's routes
    from frontdesk.config import Settings
    from frontdesk.web.app import create_app
    from frontdesk.web.auth import GuardedRoute
    from tests.unit.test_typed_outputs import api_routes

    routes = api_routes(create_app(Settings()).routes)
    # Then every one is a GuardedRoute (a router made without route_class would not be)
    assert routes and [r.path for r in routes if not isinstance(r, GuardedRoute)] == []


def test_token_without_clinic_is_403(api: Any) -> None:
    event = http_event("GET", f"/jobs/{uuid.uuid4()}", clinic_id="not-a-uuid")
    status, _, _ = call(api, event)
    assert status == 403


def test_unknown_route_is_404_problem(api: Any) -> None:
    event = http_event("GET", "/nope", clinic_id=CLINIC)
    status, headers, body = call(api, event)
    assert status == 404
    assert_problem(headers, body, 404, event["requestContext"]["requestId"])


def test_bad_path_parameter_is_422(api: Any) -> None:
    status, _, _ = call(api, http_event("GET", "/leads/123", clinic_id=CLINIC))
    assert status == 422


def test_bad_idempotency_key_is_422_before_any_write(api: Any) -> None:
    event = http_event(
        "POST",
        "/public/leads",
        body={"name": "Ada", "phone": "+15550100", "consent": True},
        headers={"idempotency-key": "x" * 300},
    )
    status, _, _ = call(api, event)
    # No form key: refused before the body or the key is looked at.
    assert status == 401


def test_a_bodyless_post_is_not_a_media_type_error(api: Any) -> None:
    # A POST without a body or Content-Type is judged by its route, not refused as 415.
    status, _, body = call(api, http_event("POST", "/leads", clinic_id=CLINIC))
    assert status == 422 and body["errors"][0]["loc"] == ["body"]


def test_a_bug_is_a_500_problem_with_the_request_id(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a route whose use case fails with an error nobody planned for
    from frontdesk.web.routes import jobs

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(jobs.jobs, "get_job", broken)
    event = http_event("GET", f"/jobs/{uuid.uuid4()}", clinic_id=CLINIC)
    # When it is called
    status, headers, body = call(api, event)
    # Then the answer is a 500 problem that carries the request id, in the body and header
    assert status == 500
    assert_problem(headers, body, 500, event["requestContext"]["requestId"])
    assert "a bug" not in json.dumps(body)
