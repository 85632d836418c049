"""Fixtures shared by every suite: a real PostgreSQL and a real moto server.

PostgreSQL: the embedded server (started once per session, data in .frontdesk/) unless
DATABASE_URL names another one; a template database is migrated once per session and
each test gets its own copy (CREATE DATABASE ... TEMPLATE), so tests never see each
other's rows. AWS: one moto server per session, template.yaml provisioned into it once,
and what a test can observe of it (queues, sent emails and SMS) reset before each test that
uses it (tests/integration/conftest.py).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

REPO = Path(__file__).resolve().parent.parent
MIGRATIONS = REPO / "db" / "migrations"

# Settings the package reads must never leak in from the developer's shell.
for _name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
    os.environ.pop(_name, None)
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_REGION="us-east-1",
    POWERTOOLS_METRICS_NAMESPACE="Frontdesk",
    POWERTOOLS_SERVICE_NAME="frontdesk",
    FRONTDESK_ENV="test",
)


# The fixtures below that give a test PostgreSQL; a test using any of them, directly or
# through another fixture, is marked `db`.
DB_FIXTURES = frozenset({"pg_admin_url", "template_db", "database_url"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if DB_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)


def with_dbname(url: str, dbname: str) -> str:
    return conninfo.make_conninfo(url, dbname=dbname)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A URL of a server where the tests may create databases."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from local.postgres import start_embedded

    yield start_embedded(REPO / ".frontdesk" / "test-pgdata")


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    from frontdesk.platform.migrations import migrate

    name = f"frontdesk_tpl_{os.getpid()}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate(with_dbname(pg_admin_url, name), MIGRATIONS)
    yield name
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = f"frontdesk_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield with_dbname(pg_admin_url, name)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
