"""MigrateFunction: the migrations as a CloudFormation custom resource (`SchemaMigrations`).

`sam deploy` updates the layer, then this resource (its `Layer` property names the new
layer version, so every code change is an Update), then the functions that DependsOn it.
On Create and Update it applies the migrations shipped in the layer under their advisory
lock (frontdesk.platform.migrations: each file in its own transaction, so a failure
leaves the schema at the last whole file) and sets the database's defaults: the session
timeouts, which RDS Proxy will not take as startup options, and the connection limit of
the budget. On Delete it does nothing: removing the stack never drops a table.

It never leaves a stack waiting. Whatever happens, one answer goes to the pre-signed
response URL: SUCCESS with the migrations applied, FAILED naming the file and the
statement PostgreSQL refused, FAILED on any other error, and FAILED from a watchdog a few
seconds before Lambda's deadline if the work is still running (a migration waiting for a
lock, say); the work in flight is then rolled back when the function is stopped.
Applying is idempotent, so CloudFormation's rollback (an Update with the old properties)
or a retried deploy is safe. Migrations are expand-only while old code runs (see the
expand/contract rule in docs/architecture.md).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from frontdesk.entry import lambda_handler
from frontdesk.observability import logger
from frontdesk.platform.migrations import PACKAGED, MigrationFailed, migrate
from frontdesk.services import get_services

NEEDS = ("database",)
# The answer goes out this long before Lambda stops the function.
DEADLINE_MARGIN_SECONDS = 15.0
# A migration waits at most this long for a lock (the advisory lock, a busy table).
LOCK_TIMEOUT_MS = 60_000
_REASON_LIMIT = 1000  # CloudFormation keeps the whole answer under 4 KB


class Answer:
    """The one answer to CloudFormation: the first `send` goes out, later ones are ignored."""

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event
        self.sent: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def send(self, status: str, reason: str, data: dict[str, str] | None = None) -> bool:
        event = self.event
        with self._lock:
            if self.sent is not None:
                return False
            body = {
                "Status": status,
                "Reason": reason[:_REASON_LIMIT],
                "PhysicalResourceId": event.get("PhysicalResourceId")
                or f"{event.get('LogicalResourceId', 'SchemaMigrations')}-schema",
                "StackId": event.get("StackId", ""),
                "RequestId": event.get("RequestId", ""),
                "LogicalResourceId": event.get("LogicalResourceId", ""),
                "Data": data or {},
            }
            self.sent = body
        put(str(event["ResponseURL"]), body)
        logger.info("answered CloudFormation", extra={"status": status, "reason": reason})
        return True


def put(url: str, body: dict[str, Any], attempts: int = 4) -> None:
    """PUT the answer on the pre-signed URL (no content type: the URL was signed without)."""
    data = json.dumps(body).encode()
    for attempt in range(attempts):
        request = urllib.request.Request(  # noqa: S310 (CloudFormation's https URL)
            url, data=data, method="PUT", headers={"Content-Type": ""}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                response.read()
            return
        except OSError as exc:
            extra = {"attempt": attempt + 1, "error": str(exc)}
            logger.warning("answer not delivered", extra=extra)
            if attempt + 1 == attempts:
                raise
            time.sleep(0.5 * 2**attempt)


def apply(properties: dict[str, Any], directory: Path) -> dict[str, str]:
    """Migrate, then set the database's defaults the properties ask for."""
    services = get_services()
    settings = services.settings
    conninfo = services.conninfo()
    options = settings.connect_options()
    applied = migrate(conninfo, directory, options, lock_timeout_ms=LOCK_TIMEOUT_MS)
    defaults = database_defaults(properties)
    if defaults:
        import psycopg
        from psycopg import sql

        from frontdesk.platform.db import connect_kwargs

        with psycopg.connect(conninfo, **connect_kwargs(options=options)) as conn:
            row = conn.execute("SELECT current_database() AS name").fetchone()
            database = sql.Identifier(str(row["name"] if row else ""))
            for statement in defaults:
                conn.execute(sql.SQL(statement).format(database=database))
    versions = sorted(path.name for path in directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    return {
        "Applied": ",".join(applied) or "none",
        "Latest": versions[-1] if versions else "none",
    }


def database_defaults(properties: dict[str, Any]) -> list[str]:
    """ALTER DATABASE statements for StatementTimeoutMs and ConnectionLimit (templates for
    psycopg.sql with the database as {database}; the values are checked integers)."""
    statements = []
    timeout = properties.get("StatementTimeoutMs")
    if timeout not in (None, ""):
        ms = int(timeout)
        statements.append(f"ALTER DATABASE {{database}} SET statement_timeout = {ms}")
        statements.append(
            f"ALTER DATABASE {{database}} SET idle_in_transaction_session_timeout = {ms * 2}"
        )
    limit = properties.get("ConnectionLimit")
    if limit not in (None, ""):
        statements.append(f"ALTER DATABASE {{database}} CONNECTION LIMIT {int(limit)}")
    return statements


def respond_to(event: dict[str, Any], context: Any, directory: Path = PACKAGED) -> dict[str, Any]:
    """Handle one custom resource event; the answer sent is returned (for logs and tests)."""
    answer = Answer(event)
    remaining = context.get_remaining_time_in_millis() / 1000.0
    budget = max(0.0, remaining - DEADLINE_MARGIN_SECONDS)
    watchdog = threading.Timer(
        budget,
        answer.send,
        args=(
            "FAILED",
            f"migrations still running after {budget:.0f} s (waiting for a lock held by"
            " another session?); stopped before Lambda's deadline, the file in flight is"
            " rolled back",
        ),
    )
    watchdog.daemon = True
    watchdog.start()
    try:
        request = event.get("RequestType")
        if request == "Delete":
            answer.send("SUCCESS", "the schema stays: deleting the stack drops no data")
        elif request in ("Create", "Update"):
            data = apply(event.get("ResourceProperties") or {}, directory)
            answer.send("SUCCESS", f"applied: {data['Applied']}", data)
        else:
            answer.send("FAILED", f"unknown RequestType {request!r}")
    except MigrationFailed as exc:
        logger.error("migration failed", extra={"migration": exc.name, "sqlstate": exc.sqlstate})
        answer.send("FAILED", str(exc))
    except Exception as exc:  # every failure is an answer, never a silent timeout
        logger.exception("migrations failed")
        answer.send("FAILED", f"{type(exc).__name__}: {exc}")
    finally:
        watchdog.cancel()
    return answer.sent or {}


def make_handler() -> Any:
    return lambda_handler("MigrateFunction", NEEDS, respond_to, emits_metrics=False)
