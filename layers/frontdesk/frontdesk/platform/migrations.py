"""Numbered SQL migrations (db/migrations/NNNN_name.sql), applied under an advisory lock.

Each file runs in its own transaction together with its row in schema_migrations, so a
failed migration leaves nothing half-applied, and two processes migrating at once apply
each file once. The files ship in the layer too (`frontdesk/migrations`), where
MigrateFunction applies them during a deploy (frontdesk.platform.schema_resource).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

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
    """A migration's error, naming its file and, where PostgreSQL points at one, the
    statement; nothing of that file was applied."""

    def __init__(self, name: str, error: psycopg.Error, sql: str) -> None:
        self.name = name
        diag = error.diag
        message = diag.message_primary or str(error).strip()
        self.sqlstate = diag.sqlstate or ""
        self.statement = failing_statement(sql, diag.statement_position)
        where = f" in: {self.statement}" if self.statement else ""
        super().__init__(f"{name} failed ({self.sqlstate} {message}){where}")


def failing_statement(sql: str, position: str | None) -> str:
    """The statement around PostgreSQL's error position (1-based, in the whole file)."""
    if not position or not position.isdigit():
        return ""
    at = min(int(position) - 1, len(sql))
    start = sql.rfind(";", 0, at) + 1
    end = sql.find(";", at)
    statement = sql[start : end if end >= 0 else len(sql)]
    lines = [line for line in statement.splitlines() if not line.strip().startswith("--")]
    return " ".join(" ".join(lines).split())[:300]


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
                    raise MigrationFailed(path.name, exc, sql) from exc
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
