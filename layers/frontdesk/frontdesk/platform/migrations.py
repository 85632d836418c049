"""Numbered SQL migrations (db/migrations/NNNN_name.sql), applied under an advisory lock.

Each file runs in its own transaction together with its row in schema_migrations, so a
failed migration leaves nothing half-applied, and two processes migrating at once apply
each file once. The files ship in the layer too (`frontdesk/migrations`), where
MigrateFunction applies them during a deploy (frontdesk.platform.schema_resource).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from frontdesk.platform.db import ConnectOptions

# db/migrations in the repository (a link), a copy of it in the built layer.
PACKAGED = Path(__file__).resolve().parent.parent / "migrations"

_LOCK_ID = 0x46524F4E54  # "FRONT": any constant shared by every migrator
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def pending(directory: Path) -> list[tuple[int, Path]]:
    files = []
    for path in sorted(directory.iterdir()):
        match = _NAME.match(path.name)
        if match:
            files.append((int(match.group(1)), path))
    return files


class MigrationFailed(RuntimeError):
    """A migration's error, naming its file and the statement PostgreSQL refused; nothing
    of that file was applied."""

    def __init__(self, name: str, error: psycopg.Error, statement: str) -> None:
        self.name = name
        diag = error.diag
        message = diag.message_primary or str(error).strip()
        self.sqlstate = diag.sqlstate or ""
        self.statement = " ".join(statement.split())[:300]
        where = f" in: {self.statement}" if self.statement else ""
        super().__init__(f"{name} failed ({self.sqlstate} {message}){where}")


def statements(sql: str) -> list[str]:
    """The file's statements: split at semicolons outside quotes, dollar-quoted bodies and
    comments; comments dropped."""
    found: list[str] = []
    current: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if sql.startswith("--", i):
            i = sql.find("\n", i) if "\n" in sql[i:] else n
            continue
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        if char in "'\"":
            end = i + 1
            while end < n and not (sql[end] == char and sql[end + 1 : end + 2] != char):
                end += 2 if sql[end] == char else 1
            current.append(sql[i : end + 1])
            i = end + 1
            continue
        tag = re.match(r"\$[A-Za-z_]*\$", sql[i:]) if char == "$" else None
        if tag:
            end = sql.find(tag.group(0), i + len(tag.group(0)))
            end = n if end < 0 else end + len(tag.group(0))
            current.append(sql[i:end])
            i = end
            continue
        if char == ";":
            statement = "".join(current).strip()
            if statement:
                found.append(statement)
            current = []
        else:
            current.append(char)
        i += 1
    statement = "".join(current).strip()
    if statement:
        found.append(statement)
    return found


def _failing_statement(conn: psycopg.Connection[Any], sql: str) -> tuple[str, psycopg.Error]:
    """Run the file again one statement at a time, in a transaction that is rolled back,
    to find the statement that fails (PostgreSQL does not say which of a file's did)."""
    error: psycopg.Error | None = None
    failed = ""
    try:
        with conn.transaction():
            for statement in statements(sql):
                try:
                    conn.execute(statement)  # type: ignore[arg-type,unused-ignore]
                except psycopg.Error as exc:
                    error, failed = exc, statement
                    break
            raise _Rollback
    except _Rollback:
        pass
    if error is None:
        raise RuntimeError("the migration failed as a whole but not statement by statement")
    return failed, error


class _Rollback(Exception):
    """Leaves a transaction by rolling it back."""


def migrate(
    conninfo: str,
    directory: Path,
    options: ConnectOptions | None = None,
    *,
    lock_timeout_ms: int | None = None,
) -> list[str]:
    """Apply every migration not applied yet; return the names applied.

    `options`: TLS and the like, as the functions connect; `lock_timeout_ms`: give up
    (psycopg.errors.LockNotAvailable) rather than wait longer for the advisory lock or a
    table lock (a deploy must not queue behind a long transaction and block the app)."""
    from frontdesk.platform.db import connect_kwargs

    kwargs = connect_kwargs(options=options) if options is not None else {}
    kwargs.pop("row_factory", None)
    kwargs["autocommit"] = True
    applied: list[str] = []
    with psycopg.connect(conninfo, **kwargs) as conn:
        if lock_timeout_ms is not None:
            conn.execute(f"SET lock_timeout = {int(lock_timeout_ms)}")
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, path in pending(directory):
                if version in done:
                    continue
                sql = path.read_text()
                try:
                    with conn.transaction():
                        conn.execute(sql)  # type: ignore[arg-type,unused-ignore]
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                            (version, path.name),
                        )
                except psycopg.Error as exc:
                    if conn.broken or conn.closed:
                        raise MigrationFailed(path.name, exc, "") from exc
                    try:
                        statement, error = _failing_statement(conn, sql)
                    except RuntimeError:
                        statement, error = "", exc
                    raise MigrationFailed(path.name, error, statement) from exc
                applied.append(path.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied


def main() -> None:
    """`python -m frontdesk.migrations [directory]`: migrate the database at DATABASE_URL."""
    import os
    import sys

    url = os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("set DATABASE_URL to the database to migrate")
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("db/migrations")
    applied = migrate(url, directory)
    print("applied:", ", ".join(applied) or "nothing pending")


if __name__ == "__main__":
    main()
