"""Numbered SQL migrations (db/migrations/NNNN_name.sql), applied under an advisory lock.

Each file runs in its own transaction together with its row in schema_migrations, so a
failed migration leaves nothing half-applied, and two processes migrating at once apply
each file once.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg

_LOCK_ID = 0x46524F4E54  # "FRONT": any constant shared by every migrator
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def pending(directory: Path) -> list[tuple[int, Path]]:
    files = []
    for path in sorted(directory.iterdir()):
        match = _NAME.match(path.name)
        if match:
            files.append((int(match.group(1)), path))
    return files


def migrate(conninfo: str, directory: Path) -> list[str]:
    """Apply every migration not applied yet; return the names applied."""
    applied: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
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
                with conn.transaction():
                    conn.execute(path.read_text())  # type: ignore[arg-type,unused-ignore]
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (version, path.name),
                    )
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
