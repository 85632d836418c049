"""Reads on the replica: lists and the dashboard read `services.reader` when a replica is
configured; writes, and every read a caller makes of what it just wrote, read the writer.

The replica here lags as far as a replica can: a copy of the writer taken once the clinics
were seeded, which never receives anything after. A route on the replica shows none of
the new rows; a route on the writer shows them at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from tests.conftest import with_dbname
from tests.integration.conftest import App
from tests.support import (
    LambdaContext,
    http_event,
    http_response,
    load_handler,
    reset_process_state,
)

HOURS = [{"weekday": day, "start": "08:00", "end": "18:00"} for day in range(1, 8)]


@pytest.fixture
def lagging_replica(app: App, pg_admin_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"frontdesk_replica_{uuid.uuid4().hex[:12]}"
    writer = conninfo.conninfo_to_dict(app.database_url)["dbname"]
    reset_process_state()  # a database is copied only while nobody is connected to it
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{writer}"')
    url = with_dbname(pg_admin_url, name)
    monkeypatch.setenv("DATABASE_READER_URL", url)
    reset_process_state()
    yield url
    reset_process_state()
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def call(api: Any, app: App, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    event = http_event(method, path, body=body, clinic_id=app.clinic_id)
    status, _, answer = http_response(api.handler(event, LambdaContext()))
    return status, answer


def test_lists_read_the_replica_and_reads_of_ones_own_writes_the_writer(
    app: App, lagging_replica: str
) -> None:
    api = load_handler("api")
    # Given a doctor and a lead written just now (on the writer)
    status, doctor = call(
        api,
        app,
        "POST",
        "/doctors",
        {"name": "Dr. Replica", "specialty": "GP", "slotMinutes": 30, "workingHours": HOURS},
    )
    assert status == 201, doctor
    status, lead = call(
        api, app, "POST", "/leads", {"name": "Ada", "email": "ada@example.org", "consent": True}
    )
    assert status == 201, lead
    # When the list of doctors is read / Then it comes from the lagging replica: not there yet
    status, listed = call(api, app, "GET", "/doctors")
    assert (status, listed["data"]) == (200, [])
    # And the dashboard reads the replica too (its rows are minutes old by design)
    assert call(api, app, "GET", "/metrics/summary")[0] == 200
    # When the caller reads what it just wrote (the lead, its job) / Then the writer answers
    status, read = call(api, app, "GET", f"/leads/{lead['data']['id']}")
    assert (status, read["data"]["id"]) == (200, lead["data"]["id"])
    status, job = call(api, app, "GET", f"/jobs/{lead['data']['jobId']}")
    assert status == 200, job
    # And the replica really has none of it
    with psycopg.connect(lagging_replica) as conn:
        assert conn.execute("SELECT count(*) FROM leads").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM doctors").fetchone() == (0,)


def test_without_a_replica_lists_read_the_writer(app: App) -> None:
    # Given no replica configured / When a doctor is added and the list read
    api = load_handler("api")
    status, _ = call(
        api,
        app,
        "POST",
        "/doctors",
        {"name": "Dr. Writer", "specialty": "GP", "slotMinutes": 30, "workingHours": HOURS},
    )
    assert status == 201
    status, listed = call(api, app, "GET", "/doctors")
    # Then the new doctor is listed at once
    assert [d["name"] for d in listed["data"]] == ["Dr. Writer"]
