"""Bad input, generated: schemathesis walks the API's OpenAPI document in process (ASGI),
with an admin token and with none. No answer may be a 5xx or break its own documented
schema. Then the refusals every body route promises: 413 over the size limit, 415 for
a media type it does not take, 422 naming an unknown field where the schema forbids them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.integration.conftest import FORM_KEY, App

SECRET = "fuzz-local-jwt-secret-0123456789abcdef"
# Bounded so the whole walk stays well under a minute on 2 cores.
EXAMPLES_WITH_TOKEN = 8
EXAMPLES_WITHOUT_TOKEN = 3
CHECKS = [not_a_server_error, response_schema_conformance]


@pytest.fixture
def asgi_app(app: App, monkeypatch: pytest.MonkeyPatch) -> Any:
    from frontdesk.services import get_services
    from frontdesk.web.app import create_app
    from tests.support import reset_process_state

    monkeypatch.setenv("LOCAL_JWT_SECRET", SECRET)
    reset_process_state()
    return create_app(get_services().settings)


@pytest.fixture
def api_schema(asgi_app: Any) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", asgi_app)


def admin_token(clinic_id: Any) -> str:
    import jwt

    now = datetime.now(UTC)
    claims = {
        "sub": "fuzz",
        "clinic_id": str(clinic_id),
        "roles": ["staff", "admin", "operator"],
        "iss": "https://auth.frontdesk.local/",
        "aud": "frontdesk-api",
        "iat": now,
        "exp": now + timedelta(hours=1),
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


def walk(api_schema: Any, examples: int, mode: str, headers: dict[str, str]) -> dict[str, int]:
    """Every operation of the document, `examples` generated cases each (positive and
    negative data), each answer checked. Returns the number of cases and of 5xx answers."""
    from schemathesis import GenerationMode

    counts = {"cases": 0, "5xx": 0}
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    for result in api_schema.get_all_operations():
        operation = result.ok()
        for generation_mode in modes:

            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=generation_mode))
            def check(case: Any) -> None:
                case.headers = {
                    key: value
                    for key, value in {**(case.headers or {}), **headers}.items()
                    if not (mode == "none" and key.lower() == "authorization")
                }
                counts["cases"] += 1
                response = case.call()
                if response.status_code >= 500:
                    counts["5xx"] += 1
                case.validate_response(response, checks=CHECKS)

            check()
    return counts


@pytest.mark.slow
def test_with_an_admin_token_nothing_is_a_5xx_or_breaks_its_schema(
    api_schema: Any, app: App, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an admin token of a clinic with a form key
    headers = {"Authorization": f"Bearer {admin_token(app.clinic_id)}", "X-Form-Key": FORM_KEY}
    # When every operation gets generated valid and invalid requests
    counts = walk(api_schema, EXAMPLES_WITH_TOKEN, "token", headers)
    # Then no answer was a 5xx or broke its documented schema (validate_response raised none)
    assert counts["5xx"] == 0 and counts["cases"] > 0
    with capsys.disabled():
        print(f"\nschemathesis with token: {counts}")


@pytest.mark.slow
def test_the_webhook_routes_take_more_generated_cases_without_a_5xx(
    api_schema: Any, app: App, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an admin token, and the outbound webhook routes only (their own deeper walk)
    headers = {"Authorization": f"Bearer {admin_token(app.clinic_id)}"}
    webhook_routes = api_schema.include(path_regex=r"^/webhooks/(endpoints|deliveries)")
    # When each gets more generated valid and invalid requests than the whole walk gives it
    counts = walk(webhook_routes, 3 * EXAMPLES_WITH_TOKEN, "token", headers)
    # Then none was a 5xx or broke its documented schema
    assert counts["5xx"] == 0 and counts["cases"] > 0
    with capsys.disabled():
        print(f"\nschemathesis webhook routes: {counts}")


def test_without_a_token_nothing_is_a_5xx_or_breaks_its_schema(
    api_schema: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    counts = walk(api_schema, EXAMPLES_WITHOUT_TOKEN, "none", {})
    assert counts["5xx"] == 0 and counts["cases"] > 0
    with capsys.disabled():
        print(f"\nschemathesis without token: {counts}")


# The appointment and doctor lifecycle routes with ids that exist: walked with random ids,
# they mostly answer 404, so here the path names a real doctor and appointment of the clinic
# (an appointment that has begun, so an outcome can be recorded) and the rest is generated.
LIFECYCLE_ROUTES = [
    ("GET", "/appointments/{appointment_id}"),
    ("PATCH", "/appointments/{appointment_id}"),
    ("GET", "/doctors/{doctor_id}"),
    ("PATCH", "/doctors/{doctor_id}"),
    ("POST", "/doctors/{doctor_id}/deactivate"),
    ("POST", "/doctors/{doctor_id}/activate"),
    ("GET", "/doctors/{doctor_id}/appointments"),
    ("GET", "/ops/jobs"),
]
EXAMPLES_ON_REAL_IDS = 15


def real_ids(asgi_app: Any, token: dict[str, str], app: App) -> dict[str, str]:
    import psycopg
    from starlette.testclient import TestClient

    client = TestClient(asgi_app, raise_server_exceptions=False)
    hours = [{"weekday": d, "start": "08:00", "end": "18:00"} for d in range(1, 8)]
    doctor = client.post(
        "/doctors", json={"name": "Dr. Fuzz", "workingHours": hours}, headers=token
    ).json()["data"]["id"]
    person = {"name": "Fuzz Patient", "email": "fuzz@example.org"}
    created = client.post("/patients", json=person, headers=token)
    assert created.status_code == 201, created.text
    patient = created.json()["data"]["id"]
    day = datetime.now(UTC).date() + timedelta(days=2)
    starts = datetime(day.year, day.month, day.day, 9, tzinfo=UTC).isoformat()
    booked = client.post(
        "/appointments",
        json={"doctorId": doctor, "patientId": patient, "startsAt": starts},
        headers=token,
    )
    assert booked.status_code == 201, booked.text
    appointment = booked.json()["data"]["id"]
    with psycopg.connect(app.database_url) as conn:  # begun an hour ago
        conn.execute(
            """UPDATE appointments SET starts_at = now() - interval '1 hour',
                      ends_at = now() - interval '30 minutes' WHERE id = %s""",
            (appointment,),
        )
    return {"doctor_id": doctor, "appointment_id": appointment}


@pytest.mark.slow
def test_lifecycle_routes_on_real_ids_answer_no_5xx_and_keep_their_schema(
    api_schema: Any, asgi_app: Any, app: App, capsys: pytest.CaptureFixture[str]
) -> None:
    from schemathesis import GenerationMode

    # Given a doctor and a begun appointment of the token's clinic
    token = {"Authorization": f"Bearer {admin_token(app.clinic_id)}"}
    ids = real_ids(asgi_app, token, app)
    statuses: dict[str, set[int]] = {}
    for method, path in LIFECYCLE_ROUTES:
        operation = api_schema[path][method]
        for generation_mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES_ON_REAL_IDS,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=generation_mode))
            def check(case: Any) -> None:
                # When generated requests reach the real objects
                case.path_parameters = {
                    name: ids[name] for name in (case.path_parameters or {}) if name in ids
                }
                case.headers = {**(case.headers or {}), **token}
                response = case.call()
                statuses.setdefault(case.operation.label, set()).add(response.status_code)
                # Then none is a 5xx or off its documented schema
                case.validate_response(response, checks=CHECKS)

            check()
    # And the generated requests did reach them (some answers other than 404 and 422)
    reached = {route for route, seen in statuses.items() if seen - {404, 422}}
    assert reached == {f"{m} {p}" for m, p in LIFECYCLE_ROUTES}, statuses
    with capsys.disabled():
        print(f"\nschemathesis on real ids: {statuses}")


# ---------------------------------------------------------------- the promised refusals


def body_routes(spec: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """(method, path with dummy ids, media type, JSON schema) of every route with a body."""
    routes = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            for media_type, body in content.items():
                concrete = path
                for parameter in operation.get("parameters", []):
                    if parameter["in"] == "path":
                        concrete = concrete.replace(
                            "{" + parameter["name"] + "}", "00000000-0000-4000-8000-000000000001"
                        )
                ref = body.get("schema", {}).get("$ref", "")
                resolved = spec["components"]["schemas"].get(ref.rsplit("/", 1)[-1])
                routes.append((method.upper(), concrete, media_type, resolved))
    return routes


def test_every_body_route_refuses_oversized_bodies_wrong_media_types_and_unknown_fields(
    asgi_app: Any, app: App
) -> None:
    from starlette.testclient import TestClient

    client = TestClient(asgi_app, raise_server_exceptions=False)
    token = {"Authorization": f"Bearer {admin_token(app.clinic_id)}", "X-Form-Key": FORM_KEY}
    routes = body_routes(asgi_app.openapi())
    assert len(routes) >= 10
    problems = []
    for method, path, media_type, body_schema in routes:
        # Given a body far over the limit (64 KiB; the CSV upload has its own, larger one)
        if media_type == "application/json":
            big = json.dumps({"name": "x" * (70 * 1024)})
            answer = client.request(
                method, path, content=big, headers={**token, "Content-Type": media_type}
            )
            if answer.status_code != 413:
                problems.append(f"{method} {path} oversized: {answer.status_code}")
        # Given a media type the route does not take
        wrong = "text/plain" if media_type != "text/plain" else "application/xml"
        answer = client.request(
            method, path, content=b"name=x", headers={**token, "Content-Type": wrong}
        )
        if answer.status_code != 415:
            problems.append(f"{method} {path} {wrong}: {answer.status_code}")
        # Given a field the schema forbids (additionalProperties: false)
        if body_schema and body_schema.get("additionalProperties") is False:
            answer = client.request(method, path, json={"zzUnknownField": 1}, headers=token)
            named = "zzUnknownField" in answer.text
            if answer.status_code != 422 or not named:
                problems.append(f"{method} {path} unknown field: {answer.status_code}")
    # Then each refusal is the promised one
    assert problems == []


# ---------------------------------------------------------------- the lead inbox


@pytest.mark.slow
def test_inbox_cursors_filters_and_patches_never_5xx(asgi_app: Any, app: App) -> None:
    from hypothesis import strategies as st
    from starlette.testclient import TestClient

    client = TestClient(asgi_app, raise_server_exceptions=False)
    token = {"Authorization": f"Bearer {admin_token(app.clinic_id)}"}
    made = client.post(
        "/leads", json={"name": "Fuzzed", "email": "f@example.org", "consent": True}, headers=token
    )
    assert made.status_code == 201
    lead_id = made.json()["data"]["id"]
    # A real cursor, to mutate
    for _ in range(2):
        client.post(
            "/leads", json={"name": "More", "phone": "+1 555 0100", "consent": True}, headers=token
        )
    cursor = client.get("/leads?limit=1", headers=token).json()["data"]["nextCursor"]
    statuses: list[int] = []
    text = st.text(max_size=80)

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(
        cursor=st.one_of(text, st.just(cursor), text.map(lambda t: cursor[:-3] + t)),
        status=st.sampled_from(["new", "contacted", "booked", "lost", "", "NEW", "x" * 50]),
        created=st.one_of(st.none(), text, st.datetimes().map(lambda d: d.isoformat())),
        body=st.dictionaries(
            st.sampled_from(["status", "assignedTo", "staffNotes", "other"]),
            st.one_of(st.none(), text, st.integers(), st.booleans()),
            max_size=3,
        ),
    )
    def check(cursor: str, status: str, created: str | None, body: dict[str, Any]) -> None:
        # Given arbitrary cursors, filter values and PATCH bodies
        params = {"cursor": cursor, "status": status}
        if created is not None:
            params["createdFrom"] = created
        listed = client.get("/leads", params=params, headers=token)
        patched = client.patch(f"/leads/{lead_id}", json=body, headers=token)
        statuses.extend([listed.status_code, patched.status_code])
        # Then each is answered, or refused with a clear 4xx: never a 5xx
        assert listed.status_code in (200, 422), listed.text
        assert patched.status_code in (200, 409, 422), patched.text

    check()
    assert 422 in statuses and 200 in statuses
