"""After the main flows (leads from the form, staff and a CSV import; patients, booking with
email and SMS; assistant questions naming people; the workers draining every queue; the
dead-letter view), no plaintext email address or phone number of a test person is in any
table of the database or in any log line: neither once the requests are answered (an
uploaded file waiting for its worker included) nor once the workers are done.

Every column is searched as what it holds, not as PostgreSQL prints it: bytea as its bytes
(printed, it is hex, where no address can be seen), JSON as the strings and keys inside it,
and text that is itself base64 or JSON decoded too."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import FORM_KEY, App
from tests.support import LambdaContext, http_event, http_response, load_handler

PEOPLE = [
    {"name": "Grace Hopper", "email": "grace.hopper@example.org", "phone": "+1 555 0100 777"},
    {"name": "Ada Lovelace", "email": "ada.lovelace@example.net", "phone": "+44 20 7946 0958"},
    {"name": "Alan Turing", "email": "alan.turing@example.com", "phone": "+44 161 496 0733"},
    {"name": "Katherine Johnson", "email": "kj.nasa@example.edu", "phone": "+1 555 0199 321"},
]
HOURS = [{"weekday": day, "start": "08:00", "end": "18:00"} for day in range(1, 8)]
DAY = date.today() + timedelta(days=2)


def forms_of(person: dict[str, str]) -> set[str]:
    """The ways the person's contact could appear in plain text."""
    digits = re.sub(r"\D", "", person["phone"])
    return {
        person["email"].lower(),
        person["email"].split("@")[0].lower(),
        person["phone"],
        digits,
        "+" + digits,
        digits[-7:],  # the local part of the number, however it is grouped
    }


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Everything the Powertools logger and every other logger write."""
    from frontdesk.observability import logger

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    handler.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    logger.removeHandler(handler)
    root.removeHandler(handler)


_BASE64 = re.compile(r"^[A-Za-z0-9+/_\-]{16,}={0,2}$")


def readable(value: Any) -> Iterator[str]:
    """The text a stored value holds, decoded: bytes, JSON (keys too), base64, arrays."""
    if value is None:
        return
    if isinstance(value, bytes | bytearray | memoryview):
        yield bytes(value).decode("utf-8", "replace")
    elif isinstance(value, str):
        yield value
        stripped = value.strip()
        if stripped[:1] in ("{", "["):
            with contextlib.suppress(ValueError):
                yield from readable(json.loads(stripped))
        if _BASE64.match(stripped):
            with contextlib.suppress(ValueError):
                yield base64.b64decode(stripped + "==", altchars=b"-_").decode("utf-8", "replace")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from readable(key)
            yield from readable(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from readable(item)
    else:
        yield str(value)


def database_text(database_url: str) -> str:
    """Every value of every table, decoded (see `readable`), lower-cased."""
    with psycopg.connect(database_url) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        return "\n".join(
            text
            for table in tables
            for row in conn.execute(f'SELECT * FROM "{table}"')
            for text in readable(list(row))
        ).lower()


def leaks_in(haystacks: dict[str, str]) -> list[tuple[str, str]]:
    return [
        (where, form)
        for person in PEOPLE
        for form in forms_of(person)
        for where, haystack in haystacks.items()
        if form.lower() in haystack
    ]


def test_the_scan_sees_what_bytea_and_json_hold() -> None:
    # Given values as psycopg returns them
    email = PEOPLE[0]["email"]
    stored = [
        email.encode(),  # bytea
        {"rows": [{"contact": email}]},  # jsonb
        base64.b64encode(email.encode()).decode(),  # base64 in text
        json.dumps({"email": email}),  # JSON in text
    ]
    # When each is read / Then the address is found in each
    for value in stored:
        assert email in "".join(readable(value)), value


def drain(app: App, function_id: str, handler: Any) -> int:
    return app.drain(function_id, handler, retry_after_seconds=0)


def test_no_plaintext_email_or_phone_in_the_database_or_the_logs(
    app: App, logs: io.StringIO
) -> None:
    api = load_handler("api")
    ops = load_handler("ops")

    def call(method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        headers = kwargs.pop("headers", {})
        event = http_event(method, path, body=body, headers=headers, **kwargs)
        if "clinic_id" in kwargs:
            claims = event["requestContext"]["authorizer"]["jwt"]["claims"]
            claims["roles"] = "[staff admin operator]"
        function = ops if path.startswith("/ops/") else api
        status, _, answer = http_response(function.handler(event, LambdaContext()))
        assert status < 300, (path, answer)
        return answer["data"]

    with psycopg.connect(app.database_url) as conn:
        conn.execute("UPDATE clinics SET notify_patients_by_sms = true")
    grace, ada, alan, katherine = PEOPLE
    clinic = app.clinic_id
    # Given leads from the web form and from staff, with a duplicate
    call("POST", "/public/leads", {**grace, "consent": True}, headers={"x-form-key": FORM_KEY})
    call("POST", "/leads", {**ada, "consent": True}, clinic_id=clinic)
    call("POST", "/leads", {**ada, "consent": True}, clinic_id=clinic)
    # And a patient booked (confirmation by email and SMS)
    doctor = call(
        "POST",
        "/doctors",
        {"name": "Dr. Who", "specialty": "GP", "slotMinutes": 30, "workingHours": HOURS},
        clinic_id=clinic,
    )["id"]
    patient = call("POST", "/patients", alan, clinic_id=clinic)["id"]
    starts = datetime(DAY.year, DAY.month, DAY.day, 9, tzinfo=UTC).isoformat()
    call(
        "POST",
        "/appointments",
        {"doctorId": doctor, "patientId": patient, "startsAt": starts},
        clinic_id=clinic,
    )
    call("GET", f"/patients/{patient}", clinic_id=clinic)
    # And a CSV import and an assistant question
    csv = "name,email,phone,notes,consent\n" + "".join(
        f"{p['name']},{p['email']},{p['phone']},,yes\n" for p in (katherine, grace)
    )
    call("POST", "/leads/imports", csv, clinic_id=clinic, headers={"content-type": "text/csv"})
    asked = call(
        "POST",
        "/assistant/conversations",
        {
            "content": f"Did {katherine['email']} call back from {katherine['phone']}?",
            "title": f"Follow-up {grace['email']}",
        },
        clinic_id=clinic,
    )
    call(
        "POST",
        f"/assistant/conversations/{asked['conversationId']}/messages",
        {"content": f"And {alan['phone']}?"},
        clinic_id=clinic,
    )
    # Then nothing is in plaintext while the work waits for the workers (the uploaded file)
    assert leaks_in({"database": database_text(app.database_url)}) == []
    # When every worker drains its queue and an operator lists the dead letters
    assert drain(app, "NotifyWorker", load_handler("notify_worker")) >= 3
    assert drain(app, "SyncWorker", load_handler("sync_worker")) >= 1
    assert drain(app, "LlmWorker", load_handler("llm_worker")) == 2
    call("GET", "/ops/dead-letters", clinic_id=clinic)
    # Then the imported leads are there and the replies written (the flows really ran)
    with psycopg.connect(app.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM leads").fetchone() == (5,)
        assert conn.execute(
            "SELECT count(*) FROM messages WHERE role = 'assistant' AND status = 'done'"
        ).fetchone() == (2,)
    status, _, conversation = http_response(
        api.handler(
            http_event(
                "GET", f"/assistant/conversations/{asked['conversationId']}", clinic_id=clinic
            ),
            LambdaContext(),
        )
    )
    assert status == 200 and katherine["email"] in conversation["data"]["messages"][0]["content"]
    assert conversation["data"]["title"] == f"Follow-up {grace['email']}"
    dump = database_text(app.database_url)
    text = logs.getvalue().lower()
    assert "notification handled" in text  # the logs were captured
    # And no one's email address or phone number is in either, in any form
    assert leaks_in({"database": dump, "logs": text}) == []
