"""MigrateFunction as CloudFormation runs it: Create, Update and Delete events against a
real PostgreSQL, the answer PUT to a loopback server standing in for the pre-signed
response URL. One answer every time: success with what was applied, the failing file and
statement, or a timeout answered before Lambda's deadline while a lock is held."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import with_dbname
from tests.support import REPO, LambdaContext, load_handler, reset_process_state

MIGRATIONS = REPO / "db" / "migrations"
ADVISORY_LOCK = 0x46524F4E54  # frontdesk.platform.migrations._LOCK_ID


class ResponseUrl:
    """A loopback stand-in for CloudFormation's pre-signed S3 URL: keeps every PUT."""

    def __init__(self) -> None:
        self.answers: list[dict[str, Any]] = []
        self.content_types: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                outer.answers.append(json.loads(self.rfile.read(length)))
                outer.content_types.append(self.headers.get("Content-Type"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/stack/SchemaMigrations?sig=x"

    def __enter__(self) -> ResponseUrl:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def response_url() -> Iterator[ResponseUrl]:
    with ResponseUrl() as server:
        yield server


@pytest.fixture
def empty_database(pg_admin_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database with no schema at all, as a new Aurora cluster has, and the function's
    environment pointing at it."""
    name = f"frontdesk_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_dbname(pg_admin_url, name)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DATABASE_SECRET_ARN", "")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    reset_process_state()
    yield url
    reset_process_state()
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def event(request_type: str, response_url: ResponseUrl, **properties: str) -> dict[str, Any]:
    sample: dict[str, Any] = json.loads((REPO / "events" / "migrate.json").read_text())
    sample["RequestType"] = request_type
    sample["ResponseURL"] = response_url.url
    sample["ResourceProperties"].update(properties)
    if request_type != "Create":
        sample["PhysicalResourceId"] = "SchemaMigrations-schema"
    return sample


def applied_versions(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY version")]


def test_create_update_and_delete_each_answer_once(
    empty_database: str, response_url: ResponseUrl
) -> None:
    # Given a database without a schema and the function as Lambda loads it
    migrate = load_handler("migrate")
    files = sorted(p.name for p in MIGRATIONS.glob("*.sql"))
    # When CloudFormation creates the resource
    migrate.handler(event("Create", response_url), LambdaContext())
    # Then every migration is applied and SUCCESS says which, on the URL, with no content type
    created = response_url.answers[-1]
    assert created["Status"] == "SUCCESS", created
    assert created["Data"]["Applied"] == ",".join(files)
    assert created["Data"]["Latest"] == files[-1]
    assert created["PhysicalResourceId"] == "SchemaMigrations-schema"
    assert created["RequestId"] and created["StackId"] and created["LogicalResourceId"]
    assert response_url.content_types[-1] in ("", None)
    assert applied_versions(empty_database) == files
    # And the database's own defaults carry the timeouts and the budget's connection limit
    with psycopg.connect(empty_database) as conn:
        limit = conn.execute(
            "SELECT datconnlimit FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        settings = conn.execute(
            """SELECT unnest(setconfig) FROM pg_db_role_setting s
               JOIN pg_database d ON d.oid = s.setdatabase AND s.setrole = 0
               WHERE d.datname = current_database()"""
        ).fetchall()
    assert limit == (40,)
    assert {row[0] for row in settings} == {
        "statement_timeout=5000",
        "idle_in_transaction_session_timeout=10000",
    }

    # When the next deploy updates it (a new layer version) with nothing new to apply
    migrate.handler(event("Update", response_url, Layer="layer:8"), LambdaContext())
    # Then it succeeds applying nothing
    assert response_url.answers[-1]["Status"] == "SUCCESS"
    assert response_url.answers[-1]["Data"]["Applied"] == "none"

    # When the stack is deleted
    migrate.handler(event("Delete", response_url), LambdaContext())
    # Then it answers SUCCESS and the tables stay
    assert response_url.answers[-1]["Status"] == "SUCCESS"
    assert applied_versions(empty_database) == files
    assert len(response_url.answers) == 3


def test_a_failing_migration_is_reported_with_its_statement_and_leaves_nothing_behind(
    empty_database: str, response_url: ResponseUrl, tmp_path: Path
) -> None:
    from frontdesk.platform import schema_resource

    # Given the real migrations and a broken one after them
    for path in MIGRATIONS.glob("*.sql"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "9999_broken.sql").write_text(
        "-- adds a table, then alters one that does not exist\n"
        "CREATE TABLE half_done (id integer);\n"
        "ALTER TABLE no_such_table\n    ADD COLUMN note text;\n"
    )
    load_handler("migrate")  # the function's settings, as at cold start
    # When CloudFormation creates the resource
    answer = schema_resource.respond_to(event("Create", response_url), LambdaContext(), tmp_path)
    # Then it fails naming the file and the statement PostgreSQL refused
    assert response_url.answers == [answer]
    assert answer["Status"] == "FAILED"
    assert "9999_broken.sql failed (42P01" in answer["Reason"]
    assert "ALTER TABLE no_such_table ADD COLUMN note text" in answer["Reason"]
    # And the files before it are applied, the broken one not at all
    assert applied_versions(empty_database)[-1] != "9999_broken.sql"
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)


class ShortContext(LambdaContext):
    """A function with about one second left."""

    def get_remaining_time_in_millis(self) -> int:
        return 1_500


def test_a_migration_waiting_on_a_lock_answers_before_the_deadline(
    empty_database: str, response_url: ResponseUrl, monkeypatch: pytest.MonkeyPatch
) -> None:
    from frontdesk.platform import schema_resource

    # Given another session holding the migrations' advisory lock, and a function with
    # 1.5 s left (answers are due 1 s before the deadline; locks give up after 3 s)
    monkeypatch.setattr(schema_resource, "DEADLINE_MARGIN_SECONDS", 1.0)
    monkeypatch.setattr(schema_resource, "LOCK_TIMEOUT_MS", 3_000)
    load_handler("migrate")
    with psycopg.connect(empty_database, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK,))
        # When CloudFormation creates the resource
        answer = schema_resource.respond_to(event("Create", response_url), ShortContext())
    # Then exactly one answer went out, FAILED by the watchdog, saying why
    assert response_url.answers == [answer]
    assert answer["Status"] == "FAILED"
    assert "still running after 0 s" in answer["Reason"]
    # And nothing was applied
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)
