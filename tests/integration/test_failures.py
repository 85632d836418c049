"""Dependencies that fail: clear answers, nothing half-written, migrations safe to race."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from frontdesk.platform.migrations import migrate
from tests.conftest import MIGRATIONS, with_dbname
from tests.integration.conftest import FORM_KEY, App
from tests.support import (
    LambdaContext,
    http_event,
    http_response,
    reset_process_state,
)

LEAD = {"name": "Ada", "email": "ada@example.org", "consent": True}


def post_lead(api: Any) -> tuple[int, dict[str, str], Any]:
    event = http_event("POST", "/public/leads", body=LEAD, headers={"x-form-key": FORM_KEY})
    return http_response(api.handler(event, LambdaContext()))


def test_database_down_is_503_with_retry_after(
    app: App, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a database nobody listens for (connection refused at once)
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:9/nothing")
    reset_process_state()
    # When a lead is posted / Then it is a 503 problem that says when to retry
    status, headers, body = post_lead(api)
    assert status == 503
    assert headers["retry-after"] == "5" and headers["content-type"] == "application/problem+json"
    assert "127.0.0.1" not in body["detail"]  # no connection details leak


def test_key_service_down_is_503_and_writes_nothing(
    app: App, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given KMS unreachable (the moto endpoint replaced by a closed port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("BLIND_INDEX_KEY", "k" * 32)
    reset_process_state()
    status, _, body = post_lead(api)
    assert status == 503 and "key service" in body["detail"]
    with psycopg.connect(app.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM leads").fetchone() == (0,)


def test_an_unexpected_error_is_a_500_problem_without_details(
    app: App, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frontdesk.leads import intake as leads

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(leads, "create_lead", explode)
    status, headers, body = post_lead(api)
    assert status == 500 and headers["content-type"] == "application/problem+json"
    assert "secret internals" not in body["detail"] and body["requestId"]


def test_migrations_racing_apply_each_file_once(pg_admin_url: str) -> None:
    # Given an empty database and two deploys migrating it at the same moment
    name = "frontdesk_migration_race"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_dbname(pg_admin_url, name)
    results: list[list[str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(migrate(url, MIGRATIONS))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then each migration was applied by exactly one of them
    files = sorted(p.name for p in Path(MIGRATIONS).glob("*.sql"))
    assert sorted(results, key=len) == [[], files]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (len(files),)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_a_transaction_the_server_ends_for_idling_is_503_and_the_next_one_works(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from frontdesk.errors import ServiceUnavailable
    from frontdesk.platform.db import transaction
    from frontdesk.services import get_services

    # Given a container whose sessions end a transaction idle for 2 x 200 ms
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT_MS", "200")
    reset_process_state()
    db = get_services().database
    # When its caller pauses inside a transaction for longer (a slow or descheduled process)
    # Then the server's ending of it is a 503 (try again), not a 500
    with pytest.raises(ServiceUnavailable), transaction(db) as cur:
        cur.execute("SELECT 1")
        time.sleep(1)
        cur.execute("SELECT 1")
    # And the next transaction of the same container works on a new connection
    with transaction(db) as cur:
        cur.execute("SELECT 2")
        assert cur.fetchone() == {"?column?": 2}


def test_a_statement_timeout_is_503_and_the_connection_survives(
    app: App, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a short statement timeout and a long lock on the clinics table (a slow migration)
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT_MS", "200")
    reset_process_state()
    with psycopg.connect(app.database_url) as blocker:
        blocker.execute("LOCK TABLE clinics IN ACCESS EXCLUSIVE MODE")
        # When a lead is posted / Then it is refused in time with a 503, not a hang or a 500
        status, headers, _ = post_lead(api)
        assert status == 503 and headers["retry-after"]
    # And once the lock is gone the same container serves again
    status, _, _ = post_lead(api)
    assert status == 201
