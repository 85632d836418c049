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
from concurrent.futures import Future, ThreadPoolExecutor
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
    # The slow tests first: spread over the workers (-n) while the quick ones fill the gaps,
    # rather than one of them starting last and keeping a worker busy alone.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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

    url = start_embedded(REPO / ".frontdesk" / "test-pgdata")
    # The tests' own server: no fsync (a crash of the machine may lose its data, a crash of
    # PostgreSQL still loses nothing), so a commit and a database copy cost no disk flush.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET fsync = off")
        conn.execute("SELECT pg_reload_conf()")
    yield url


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


class Copies:
    """The tests' databases: copies of the template, each dropped after its test in a thread
    of its own (on a server that flushes to disk a DROP DATABASE waits for a checkpoint,
    which the next test need not wait for)."""

    def __init__(self, admin_url: str, template: str) -> None:
        self.admin_url, self.template = admin_url, template
        with psycopg.connect(admin_url) as conn:
            row = conn.execute("SHOW fsync").fetchone()
        # As files where nothing is flushed (faster for a small database), else through the
        # WAL (no checkpoint).
        self.strategy = "FILE_COPY" if row is not None and row[0] == "off" else "WAL_LOG"
        self.dropper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dropdb")
        self.drops: list[Future[None]] = []

    def create(self) -> str:
        name = f"frontdesk_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                f'CREATE DATABASE "{name}" TEMPLATE "{self.template}" STRATEGY {self.strategy}'
            )
        return name

    def drop(self, name: str) -> None:
        self.drops.append(self.dropper.submit(self._drop, name))

    def _drop(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        self.dropper.shutdown(wait=True)
        for drop in self.drops:
            drop.result()  # a failed drop fails the session


@pytest.fixture(scope="session")
def copies(pg_admin_url: str, template_db: str) -> Iterator[Copies]:
    made = Copies(pg_admin_url, template_db)
    yield made
    made.close()


@pytest.fixture
def database_url(pg_admin_url: str, copies: Copies) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = copies.create()
    yield with_dbname(pg_admin_url, name)
    copies.drop(name)
