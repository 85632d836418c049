"""Tenant isolation: every route of the OpenAPI document, called with clinic A's admin token
against clinic B's objects, answers 404/403 (or shows none of B's rows) and changes nothing
of B's. A route added without a case here fails `test_every_route_has_a_case`."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import App
from tests.support import LambdaContext, http_event, http_response

HOURS = [{"weekday": day, "start": "08:00", "end": "18:00"} for day in range(1, 8)]
DAY = date.today() + timedelta(days=2)
STARTS = datetime(DAY.year, DAY.month, DAY.day, 9, tzinfo=UTC).isoformat()

# Routes outside tenant data, each with why.
PUBLIC = {
    ("POST", "/public/leads"): "the clinic comes from its form key, not from a token",
    ("POST", "/webhooks/{provider}/{account_id}"): "signed by the account's own secret",
}
# Operator routes: platform-wide by design (queues are shared by every clinic), operators only.
OPERATOR_ONLY = {
    ("GET", "/ops/dead-letters"),
    ("POST", "/ops/dead-letters/replay"),
    ("GET", "/ops/queues"),
    ("GET", "/ops/jobs/stuck"),
    ("GET", "/ops/jobs"),
}


@dataclass(frozen=True)
class Case:
    """How clinic A attacks one route with clinic B's objects.

    kind: "object" -> 404/403 expected; "list" -> 2xx without any of B's ids;
    "create" -> A creates in its own clinic (the route takes no ids of other objects).
    """

    kind: str
    path: Callable[[dict[str, str]], str]
    body: Callable[[dict[str, str]], Any] | None = None
    query: Callable[[dict[str, str]], str] | None = None
    content_type: str | None = None


CASES: dict[tuple[str, str], Case] = {
    ("POST", "/leads"): Case(
        "create",
        lambda b: "/leads",
        lambda b: {"name": "A person", "email": "a.person@example.org", "consent": True},
    ),
    ("GET", "/leads/{lead_id}"): Case("object", lambda b: f"/leads/{b['lead']}"),
    # The inbox searched for B's lead by its exact address: the blind index is per value,
    # not per clinic, so only the clinic scope keeps it out.
    ("GET", "/leads"): Case(
        "list", lambda b: "/leads", query=lambda b: "email=b.person@example.org&limit=100"
    ),
    ("PATCH", "/leads/{lead_id}"): Case(
        "object",
        lambda b: f"/leads/{b['lead']}",
        lambda b: {"status": "contacted", "assignedTo": "a-staff", "staffNotes": "mine now"},
    ),
    ("POST", "/leads/imports"): Case(
        "create",
        lambda b: "/leads/imports",
        lambda b: "name,email,phone,notes,consent\nA person,a@example.org,,,yes\n",
        content_type="text/csv",
    ),
    ("GET", "/jobs/{job_id}"): Case("object", lambda b: f"/jobs/{b['job']}"),
    ("POST", "/jobs/{job_id}/cancel"): Case("object", lambda b: f"/jobs/{b['job']}/cancel"),
    ("POST", "/assistant/conversations"): Case(
        "create", lambda b: "/assistant/conversations", lambda b: {"content": "How many leads?"}
    ),
    ("POST", "/assistant/conversations/{conversation_id}/messages"): Case(
        "object",
        lambda b: f"/assistant/conversations/{b['conversation']}/messages",
        lambda b: {"content": "And today?"},
    ),
    ("GET", "/assistant/conversations/{conversation_id}"): Case(
        "object", lambda b: f"/assistant/conversations/{b['conversation']}"
    ),
    ("GET", "/assistant/messages/{message_id}"): Case(
        "object", lambda b: f"/assistant/messages/{b['message']}"
    ),
    ("POST", "/doctors"): Case(
        "create",
        lambda b: "/doctors",
        lambda b: {"name": "Dr. A", "specialty": "GP", "slotMinutes": 30, "workingHours": HOURS},
    ),
    ("GET", "/doctors"): Case("list", lambda b: "/doctors"),
    ("GET", "/doctors/{doctor_id}"): Case("object", lambda b: f"/doctors/{b['doctor']}"),
    ("PATCH", "/doctors/{doctor_id}"): Case(
        "object",
        lambda b: f"/doctors/{b['doctor']}",
        lambda b: {"name": "Dr. Stolen", "providerIds": {"generic": "taken"}},
    ),
    ("POST", "/doctors/{doctor_id}/deactivate"): Case(
        "object", lambda b: f"/doctors/{b['doctor']}/deactivate"
    ),
    ("POST", "/doctors/{doctor_id}/activate"): Case(
        "object", lambda b: f"/doctors/{b['doctor']}/activate"
    ),
    ("GET", "/doctors/{doctor_id}/appointments"): Case(
        "object", lambda b: f"/doctors/{b['doctor']}/appointments", query=lambda b: "upcoming=true"
    ),
    ("GET", "/doctors/{doctor_id}/availability"): Case(
        "object", lambda b: f"/doctors/{b['doctor']}/availability", query=lambda b: f"date={DAY}"
    ),
    ("POST", "/patients"): Case(
        "create", lambda b: "/patients", lambda b: {"name": "A patient", "email": "a@example.org"}
    ),
    ("GET", "/patients/{patient_id}"): Case("object", lambda b: f"/patients/{b['patient']}"),
    ("POST", "/appointments"): Case(
        "object",
        lambda b: "/appointments",
        lambda b: {"doctorId": b["doctor"], "patientId": b["patient"], "startsAt": STARTS},
    ),
    ("GET", "/appointments"): Case(
        "list", lambda b: "/appointments", query=lambda b: f"doctor={b['doctor']}"
    ),
    ("GET", "/appointments/{appointment_id}"): Case(
        "object", lambda b: f"/appointments/{b['appointment']}"
    ),
    ("PATCH", "/appointments/{appointment_id}"): Case(
        "object",
        lambda b: f"/appointments/{b['appointment']}",
        lambda b: {"status": "cancelled"},
    ),
    ("GET", "/provider-accounts"): Case("list", lambda b: "/provider-accounts"),
    ("POST", "/provider-accounts"): Case(
        "create",
        lambda b: "/provider-accounts",
        lambda b: {
            "provider": "generic",
            "apiBaseUrl": "https://provider.example",
            "credentials": {"apiKey": "key-of-a"},
        },
    ),
    ("GET", "/provider-accounts/{account_id}"): Case(
        "object", lambda b: f"/provider-accounts/{b['account']}"
    ),
    ("PUT", "/provider-accounts/{account_id}/credentials"): Case(
        "object",
        lambda b: f"/provider-accounts/{b['account']}/credentials",
        lambda b: {"credentials": {"apiKey": "stolen"}},
    ),
    ("POST", "/webhooks/endpoints"): Case(
        "create",
        lambda b: "/webhooks/endpoints",
        lambda b: {"url": "https://hooks-a.example/in", "eventTypes": ["lead.created"]},
    ),
    ("GET", "/webhooks/endpoints"): Case("list", lambda b: "/webhooks/endpoints"),
    ("GET", "/webhooks/endpoints/{endpoint_id}"): Case(
        "object", lambda b: f"/webhooks/endpoints/{b['endpoint']}"
    ),
    ("PATCH", "/webhooks/endpoints/{endpoint_id}"): Case(
        "object",
        lambda b: f"/webhooks/endpoints/{b['endpoint']}",
        lambda b: {"url": "https://stolen.example/in", "enabled": False},
    ),
    ("DELETE", "/webhooks/endpoints/{endpoint_id}"): Case(
        "object", lambda b: f"/webhooks/endpoints/{b['endpoint']}"
    ),
    ("POST", "/webhooks/endpoints/{endpoint_id}/rotate-secret"): Case(
        "object",
        lambda b: f"/webhooks/endpoints/{b['endpoint']}/rotate-secret",
        lambda b: {"previousSecretValidHours": 0},
    ),
    ("GET", "/webhooks/endpoints/{endpoint_id}/deliveries"): Case(
        "object", lambda b: f"/webhooks/endpoints/{b['endpoint']}/deliveries"
    ),
    ("GET", "/webhooks/deliveries/{delivery_id}"): Case(
        "object", lambda b: f"/webhooks/deliveries/{b['delivery']}"
    ),
    ("POST", "/webhooks/deliveries/{delivery_id}/replay"): Case(
        "object", lambda b: f"/webhooks/deliveries/{b['delivery']}/replay"
    ),
    ("GET", "/metrics/daily"): Case("list", lambda b: "/metrics/daily"),
    ("GET", "/metrics/summary"): Case("list", lambda b: "/metrics/summary"),
}


def spec_routes() -> set[tuple[str, str]]:
    from frontdesk.config import Settings
    from frontdesk.web.app import create_app

    spec = create_app(Settings()).openapi()
    return {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method in operations
        if method in {"get", "post", "put", "patch", "delete"}
    }


def test_every_route_has_a_case() -> None:
    # Given the routes of the real app's OpenAPI document
    routes = spec_routes()
    # When they are matched with the cases, the public and the admin-only routes
    covered = set(CASES) | set(PUBLIC) | OPERATOR_ONLY
    # Then each is covered (a new route needs its case here) and no case is stale
    assert sorted(routes - covered) == [], "add a tenant-isolation case for these routes"
    assert sorted(covered - routes) == []


Caller = Callable[..., tuple[int, Any]]


@pytest.fixture
def call(api: Any, ops: Any, app: App) -> Caller:
    """Calls a route through the function template.yaml routes it to (ApiFunction, or
    OpsFunction for the operators' routes), as API Gateway would."""
    routes = {(r.method, r.path) for r in app.stack.http_routes("OpsFunction")}

    def call(
        method: str,
        path: str,
        body: Any = None,
        *,
        clinic: uuid.UUID,
        roles: str = "[staff admin operator]",
        query: str = "",
        content_type: str | None = None,
    ) -> tuple[int, Any]:
        headers = {"content-type": content_type} if content_type else {}
        event = http_event(method, path, body=body, clinic_id=clinic, query=query, headers=headers)
        event["requestContext"]["authorizer"]["jwt"]["claims"]["roles"] = roles
        if query:
            event["queryStringParameters"] = dict(p.split("=", 1) for p in query.split("&"))
        template_path = re.sub(r"[0-9a-f-]{36}", "{id}", path)
        function = ops if (method, template_path) in routes else api
        status, _, answer = http_response(function.handler(event, LambdaContext()))
        return status, answer

    return call


def clinic_dump(database_url: str, clinic_id: uuid.UUID) -> dict[str, list[str]]:
    """Every row of the clinic in every table that has a clinic_id, as text."""
    with psycopg.connect(database_url) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                """SELECT table_name FROM information_schema.columns
                   WHERE table_schema = 'public' AND column_name = 'clinic_id'
                   ORDER BY table_name"""
            )
        ]
        dump = {
            table: sorted(
                str(row[0])
                for row in conn.execute(
                    f'SELECT t::text FROM "{table}" t WHERE clinic_id = %s',
                    (clinic_id,),
                )
            )
            for table in tables
        }
        dump["clinics"] = [
            str(row[0])
            for row in conn.execute("SELECT c::text FROM clinics c WHERE id = %s", (clinic_id,))
        ]
    return dump


@pytest.fixture
def objects_of_b(app: App, call: Caller, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Clinic B's lead, job, doctor, patient, appointment, conversation, message, account."""
    b = app.other_clinic_id
    made: dict[str, str] = {}

    def create(path: str, body: Any) -> dict[str, Any]:
        status, answer = call("POST", path, body, clinic=b)
        assert status in (201, 202), (path, answer)
        data: dict[str, Any] = answer["data"]
        return data

    lead = create("/leads", {"name": "B person", "email": "b.person@example.org", "consent": True})
    made["lead"], made["job"] = lead["id"], lead["jobId"]
    made["doctor"] = create(
        "/doctors", {"name": "Dr. B", "specialty": "GP", "slotMinutes": 30, "workingHours": HOURS}
    )["id"]
    made["patient"] = create("/patients", {"name": "B patient", "phone": "+44 20 7946 0111"})["id"]
    made["appointment"] = create(
        "/appointments",
        {"doctorId": made["doctor"], "patientId": made["patient"], "startsAt": STARTS},
    )["id"]
    asked = create("/assistant/conversations", {"content": "How many leads this week?"})
    made["conversation"], made["message"] = asked["conversationId"], asked["id"]
    account = create(
        "/provider-accounts",
        {
            "provider": "generic",
            "apiBaseUrl": "https://provider-b.example",
            "credentials": {"apiKey": "key-of-b"},
        },
    )
    made["account"] = account["id"]
    made["endpoint"] = create(
        "/webhooks/endpoints", {"url": "https://hooks-b.example/in", "eventTypes": ["lead.created"]}
    )["id"]
    # A delivery of B's lead.created to that endpoint, as WebhookWorker's fan-out writes it.
    made["delivery"] = str(uuid.uuid4())
    with psycopg.connect(app.database_url) as conn:
        conn.execute(
            """INSERT INTO outbound_webhook_deliveries
                   (id, clinic_id, endpoint_id, event_id, event_type, payload)
               VALUES (%s, %s, %s, %s, 'lead.created', '{}')""",
            (made["delivery"], b, made["endpoint"], uuid.uuid4()),
        )
    return made


def test_clinic_a_cannot_reach_clinic_b(
    app: App, call: Caller, objects_of_b: dict[str, str], subtests: pytest.Subtests
) -> None:
    # Given clinic B's objects (made once: every route is one subtest against them)
    for route in sorted(CASES):
        with subtests.test(route=f"{route[0]} {route[1]}"):
            case = CASES[route]
            before = clinic_dump(app.database_url, app.other_clinic_id)
            # When clinic A's admin calls the route with B's ids
            status, answer = call(
                route[0],
                case.path(objects_of_b),
                case.body(objects_of_b) if case.body else None,
                clinic=app.clinic_id,
                query=case.query(objects_of_b) if case.query else "",
                content_type=case.content_type,
            )
            # Then B's objects are not found (or not listed), and none of B's rows changed
            if case.kind == "object":
                assert status in (403, 404), (route, status, answer)
            else:
                assert 200 <= status < 300, (route, status, answer)
                text = json.dumps(answer)
                assert not [name for name, value in objects_of_b.items() if value in text]
            assert clinic_dump(app.database_url, app.other_clinic_id) == before


ROLE_GUARDED = {
    **{
        route: ("[staff]", "admin role")
        for route in CASES
        if route[1].startswith(
            ("/provider-accounts", "/webhooks/endpoints", "/webhooks/deliveries")
        )
    },
    # A clinic's admin is not an operator: queues and dead letters are every clinic's.
    **{route: ("[staff admin]", "operator role") for route in OPERATOR_ONLY},
}


@pytest.mark.parametrize("route", sorted(ROLE_GUARDED), ids=lambda r: f"{r[0]} {r[1]}")
def test_role_guarded_routes_refuse_a_token_without_the_role(
    app: App, call: Caller, route: tuple[str, str]
) -> None:
    # Given a token of the clinic that lacks the route's role
    roles, needed = ROLE_GUARDED[route]
    ids = {name: str(uuid.uuid4()) for name in ("account", "endpoint", "delivery")}
    case = CASES.get(route)
    path = case.path(ids) if case else route[1]
    body = case.body(ids) if case and case.body else ({"all": True} if route[0] == "POST" else None)
    # When it calls the route
    status, answer = call(route[0], path, body, clinic=app.clinic_id, roles=roles)
    # Then it is refused for its role, before anything else is looked at
    assert status == 403, (route, answer)
    assert needed in answer["detail"]


# Bodies a caller without the route's role must not learn anything from: malformed JSON,
# JSON off the schema, and a body of the wrong media type.
BAD_BODIES = [
    ("{not json", "application/json"),
    ('{"unexpected": [1, 2, 3]}', "application/json"),
    ("provider=generic", "application/x-www-form-urlencoded"),
]


@pytest.mark.parametrize(
    "route",
    sorted(r for r in ROLE_GUARDED if r[0] != "GET"),
    ids=lambda r: f"{r[0]} {r[1]}",
)
@pytest.mark.parametrize(("body", "content_type"), BAD_BODIES, ids=["malformed", "off", "form"])
def test_role_guarded_routes_refuse_before_looking_at_the_body(
    app: App, call: Caller, route: tuple[str, str], body: str, content_type: str
) -> None:
    # Given a token of the clinic that lacks the route's role, and a bad body
    roles, needed = ROLE_GUARDED[route]
    case = CASES.get(route)
    ids = {name: str(uuid.uuid4()) for name in ("account", "endpoint", "delivery")}
    path = case.path(ids) if case else route[1]
    # When it calls the route with that body
    status, answer = call(
        route[0], path, body, clinic=app.clinic_id, roles=roles, content_type=content_type
    )
    # Then it is a 403 for its role: the body's schema (422) and media type (415) are not
    # the business of a caller who may not use the route
    assert status == 403, (route, answer)
    assert needed in answer["detail"]


def test_a_token_naming_no_clinic_is_refused_on_every_route(
    app: App, call: Caller, objects_of_b: dict[str, str], subtests: pytest.Subtests
) -> None:
    # Given a correctly signed token whose clinic does not exist, with every role
    nowhere = uuid.uuid4()
    before = clinic_dump(app.database_url, app.other_clinic_id)
    for route in sorted(set(CASES) | OPERATOR_ONLY):
        with subtests.test(route=f"{route[0]} {route[1]}"):
            case = CASES.get(route)
            body = (
                case.body(objects_of_b)
                if case and case.body
                else ({"all": True} if route[0] == "POST" else None)
            )
            # When it calls the route with a valid request
            status, answer = call(
                route[0],
                case.path(objects_of_b) if case else route[1],
                body,
                clinic=nowhere,
                query=case.query(objects_of_b) if case and case.query else "",
                content_type=case.content_type if case else None,
            )
            # Then it is refused as naming no clinic (not a 500, not someone's data)
            assert status == 403, (route, status, answer)
            assert "names no clinic" in answer["detail"]
    # And nothing was written anywhere
    assert clinic_dump(app.database_url, app.other_clinic_id) == before
    with psycopg.connect(app.database_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM clinics WHERE id = %s", (nowhere,)
        ).fetchone() == (0,)


def test_the_inbox_lists_only_the_clinics_own_leads(
    app: App, call: Caller, objects_of_b: dict[str, str]
) -> None:
    # Given B's lead contacted and assigned, and a lead of A
    b, a = app.other_clinic_id, app.clinic_id
    status, _ = call("PATCH", f"/leads/{objects_of_b['lead']}", {"status": "contacted"}, clinic=b)
    assert status == 200
    status, _ = call("PATCH", f"/leads/{objects_of_b['lead']}", {"assignedTo": "shared"}, clinic=b)
    assert status == 200
    status, mine = call(
        "POST", "/leads", {"name": "A", "phone": "+44 20 7946 0111", "consent": True}, clinic=a
    )
    assert status == 201
    # When A pages its inbox with each filter B's lead would match, and searches B's phone
    queries = [
        "limit=1",
        "status=contacted",
        "assignedTo=shared",
        "source=web_form",
        "phone=%2B442079460111",
    ]
    for query in queries:
        status, answer = call("GET", "/leads", clinic=a, query=query)
        # Then only A's own leads show
        assert status == 200, (query, answer)
        assert objects_of_b["lead"] not in json.dumps(answer), query
    status, answer = call("GET", "/leads", clinic=a, query="phone=%2B442079460111")
    assert [item["id"] for item in answer["data"]["items"]] == [mine["data"]["id"]]
