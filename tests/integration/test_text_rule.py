"""One text rule for every text field a client sends: no control character (never a NUL)
anywhere, no line break or tab in a single-line field. A refusal is a 422 that names the
field and writes nothing."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import FORM_KEY, App
from tests.support import LambdaContext, http_event, http_response

HOURS = [{"weekday": day, "start": "08:00", "end": "18:00"} for day in range(1, 8)]
LEAD = {"name": "Ada Lovelace", "email": "ada@example.org", "consent": True}
DOCTOR = {"name": "Dr. Who", "specialty": "GP", "slotMinutes": 30, "workingHours": HOURS}
PATIENT = {"name": "Ada Lovelace", "email": "ada@example.org"}
ACCOUNT = {
    "provider": "generic",
    "name": "Ads",
    "apiBaseUrl": "https://provider.example",
    "credentials": {"apiKey": "key"},
    "webhookSecret": "whsec_0123456789abcdef",
}


def with_value(body: dict[str, Any], field: str, value: str) -> dict[str, Any]:
    return {**body, field: value}


# (method, path, a valid body, the field given a bad value)
FIELDS = [
    ("POST", "/leads", LEAD, "name"),
    ("POST", "/leads", LEAD, "email"),
    ("POST", "/leads", {**LEAD, "phone": "+44 20 7946 0958"}, "phone"),
    ("POST", "/leads", LEAD, "notes"),
    ("POST", "/public/leads", LEAD, "name"),
    ("POST", "/doctors", DOCTOR, "name"),
    ("POST", "/doctors", DOCTOR, "specialty"),
    ("POST", "/patients", PATIENT, "name"),
    ("POST", "/assistant/conversations", {"content": "How many leads?"}, "content"),
    ("POST", "/assistant/conversations", {"content": "How many leads?"}, "title"),
    ("POST", "/provider-accounts", ACCOUNT, "name"),
    ("POST", "/provider-accounts", ACCOUNT, "apiBaseUrl"),
    ("POST", "/provider-accounts", ACCOUNT, "webhookSecret"),
]
TABLES = ("leads", "doctors", "patients", "conversations", "messages", "provider_accounts")


def call(api: Any, method: str, path: str, body: Any, clinic: uuid.UUID) -> tuple[int, Any]:
    if path.startswith("/public/"):
        event = http_event(method, path, body=body, headers={"x-form-key": FORM_KEY})
    else:
        event = http_event(method, path, body=body, clinic_id=clinic)
        event["requestContext"]["authorizer"]["jwt"]["claims"]["roles"] = "[staff admin]"
    status, _, answer = http_response(api.handler(event, LambdaContext()))
    return status, answer


def counts(app: App) -> dict[str, int]:
    with psycopg.connect(app.database_url) as conn:
        return {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
            for table in TABLES
        }


BAD = ["Ada\x00Lovelace", "Ada\x07Lovelace", "Ada\x1b[31mLovelace", "Ada\x85Lovelace"]


def test_a_control_character_is_a_422_in_every_text_field(
    app: App, api: Any, subtests: pytest.Subtests
) -> None:
    for method, path, body, field in FIELDS:
        for bad in BAD:
            with subtests.test(route=f"{method} {path}", field=field, bad=repr(bad)):
                # Given a valid body whose one text field holds a control character
                value = bad.replace("Ada", body.get(field) or "Ada")
                if field == "email":
                    value = bad.replace("Ada", "a").replace("Lovelace", "@example.org")
                # When it is sent
                status, answer = call(
                    api, method, path, with_value(body, field, value), app.clinic_id
                )
                # Then it is a 422 naming that field (never the value)
                assert status == 422, answer
                assert [e["loc"][-1] for e in answer["errors"]] == [field], answer["errors"]
                assert "Lovelace" not in str(answer)
    # And nothing was written
    assert counts(app) == dict.fromkeys(TABLES, 0)


def test_line_breaks_are_text_only_in_multi_line_fields(app: App, api: Any) -> None:
    # Given a lead whose notes run over lines, and a question over two lines
    status, answer = call(
        api,
        "POST",
        "/leads",
        {**LEAD, "notes": "called twice\n\tprefers mornings\r\n"},
        app.clinic_id,
    )
    assert status == 201, answer
    status, answer = call(
        api,
        "POST",
        "/assistant/conversations",
        {"content": "Leads today?\nAnd this week?"},
        app.clinic_id,
    )
    assert status == 202, answer
    # When a single-line field holds a line break / Then it is a 422
    for field in ("name", "email"):
        status, answer = call(
            api, "POST", "/leads", {**LEAD, field: "Ada\nLovelace"}, app.clinic_id
        )
        assert status == 422 and answer["errors"][0]["loc"][-1] == field
