"""After the main flows (leads from the form, staff and a CSV import; patients, booking with
email and SMS; an assistant question; the workers draining every queue; the dead-letter
view), no plaintext email address or phone number of a test person is in any table of the
database or in any log line."""

from __future__ import annotations

import io
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
    call("POST", "/assistant/conversations", {"content": "How many leads today?"}, clinic_id=clinic)
    # When every worker drains its queue and an operator lists the dead letters
    assert drain(app, "NotifyWorker", load_handler("notify_worker")) >= 3
    assert drain(app, "SyncWorker", load_handler("sync_worker")) >= 1
    assert drain(app, "LlmWorker", load_handler("llm_worker")) == 1
    call("GET", "/ops/dead-letters", clinic_id=clinic)
    # Then the imported leads are there (the flows really ran)
    with psycopg.connect(app.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM leads").fetchone() == (5,)
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        dump = "\n".join(
            str(row[0])
            for table in tables
            for row in conn.execute(f'SELECT t::text FROM "{table}" t')
        ).lower()
    text = logs.getvalue().lower()
    assert "notification handled" in text  # the logs were captured
    # And no one's email address or phone number is in either, in any form
    leaks = [
        (where, form)
        for person in PEOPLE
        for form in forms_of(person)
        for where, haystack in (("database", dump), ("logs", text))
        if form.lower() in haystack
    ]
    assert leaks == []
