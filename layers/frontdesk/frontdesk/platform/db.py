"""PostgreSQL access: psycopg 3, synchronous, one reused connection per Lambda container.

Why synchronous: a Lambda container serves one request at a time, so an async driver buys
no concurrency there, and an async connection is bound to the event loop that opened it
(Mangum runs each invocation's ASGI cycle on the loop it gets; a loop swapped between
invocations strands the connection). A sync connection opened lazily at the first request
and kept in the container is reused by every later invocation. The local server, which
does serve requests concurrently, uses a psycopg_pool.ConnectionPool behind the same
`Database` interface.

Every connection sets connect_timeout, statement_timeout and
idle_in_transaction_session_timeout, runs in autocommit mode and opens transactions
explicitly (`with transaction(db) as cur`; a transaction that hands work off is a
`frontdesk.platform.unit_of_work.UnitOfWork`), so a transaction is always visible in code.
Driver errors that mean "the database is unreachable" become `ServiceUnavailable` here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol
from urllib.parse import quote

import psycopg
from psycopg.rows import DictRow, dict_row

from frontdesk.errors import InvalidInput, ServiceUnavailable

Connection = psycopg.Connection[DictRow]
Cursor = psycopg.Cursor[DictRow]

# A reused connection idle for longer than this is pinged before use: the server or a
# NAT may have dropped it while the container was frozen.
_PING_AFTER_IDLE_SECONDS = 30.0


class Database(Protocol):
    def connection(self) -> Any:  # a context manager yielding a Connection
        ...

    def close(self) -> None: ...


def connect_kwargs(connect_timeout_s: int, statement_timeout_ms: int) -> dict[str, Any]:
    return {
        "autocommit": True,
        "row_factory": dict_row,
        "connect_timeout": connect_timeout_s,
        "options": (
            f"-c statement_timeout={statement_timeout_ms}"
            f" -c idle_in_transaction_session_timeout={statement_timeout_ms * 2}"
            " -c application_name=frontdesk"
        ),
    }


def conninfo_from_secret(secret: str) -> str:
    """A secret holds either a URL or RDS-style JSON (host, port, username, password, dbname)."""
    secret = secret.strip()
    if not secret.startswith("{"):
        return secret
    fields = json.loads(secret)
    user = quote(str(fields["username"]), safe="")
    password = quote(str(fields.get("password", "")), safe="")
    port = fields.get("port", 5432)
    dbname = fields.get("dbname", "postgres")
    return f"postgresql://{user}:{password}@{fields['host']}:{port}/{dbname}"


def _refused(exc: psycopg.DataError) -> InvalidInput:
    """A value the database cannot store (a NUL character, a number or date out of range):
    the caller's input, so a 422. The driver's message may quote the value; keep it out."""
    return InvalidInput(f"a value cannot be stored ({type(exc).__name__})")


def _unavailable(exc: Exception) -> ServiceUnavailable:
    """Operational errors (lost connection, timeouts, too many connections) are 503s.

    The driver's message can carry host names; keep it out of the client's answer.
    """
    return ServiceUnavailable(f"database unavailable ({type(exc).__name__})")


class SingleConnectionDatabase:
    """One connection, opened lazily, reused across invocations, reopened when broken."""

    def __init__(
        self,
        conninfo: Callable[[], str],
        connect_timeout_s: int = 5,
        statement_timeout_ms: int = 5000,
    ) -> None:
        self._conninfo = conninfo
        self._kwargs = connect_kwargs(connect_timeout_s, statement_timeout_ms)
        self._conn: Connection | None = None
        self._last_used = 0.0
        self.connects = 0  # observable for tests and metrics

    def _open(self) -> Connection:
        try:
            conn: Connection = psycopg.connect(self._conninfo(), **self._kwargs)
        except psycopg.OperationalError as exc:
            raise _unavailable(exc) from exc
        self.connects += 1
        return conn

    def _usable(self) -> Connection:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            if time.monotonic() - self._last_used < _PING_AFTER_IDLE_SECONDS:
                return conn
            try:
                conn.execute("SELECT 1")
                return conn
            except psycopg.Error:
                conn.close()
        self._conn = self._open()
        return self._conn

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        conn = self._usable()
        try:
            yield conn
        except psycopg.DataError as exc:
            raise _refused(exc) from exc
        except psycopg.OperationalError as exc:
            # Lost connection, statement or lock timeout, too many connections: all pass.
            if conn.broken or conn.closed:
                self._conn = None
            raise _unavailable(exc) from exc
        finally:
            self._last_used = time.monotonic()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PooledDatabase:
    """A psycopg_pool.ConnectionPool behind the same interface (the local server)."""

    def __init__(
        self,
        conninfo: str,
        connect_timeout_s: int = 5,
        statement_timeout_ms: int = 5000,
        max_size: int = 10,
    ) -> None:
        from psycopg_pool import ConnectionPool

        self._timeout = float(connect_timeout_s)
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_size,
            kwargs=connect_kwargs(connect_timeout_s, statement_timeout_ms),
            check=ConnectionPool.check_connection,
            timeout=self._timeout,
            reconnect_timeout=3600,
            name="frontdesk",
            open=True,
        )

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        from psycopg_pool import PoolTimeout

        try:
            with self._pool.connection(timeout=self._timeout) as conn:
                yield conn
        except psycopg.DataError as exc:
            raise _refused(exc) from exc
        except PoolTimeout as exc:
            raise _unavailable(exc) from exc
        except psycopg.OperationalError as exc:
            raise _unavailable(exc) from exc

    def close(self) -> None:
        self._pool.close()


@contextmanager
def transaction(db: Database) -> Iterator[Cursor]:
    """One transaction on one connection: commit on success, roll back on any error."""
    with db.connection() as conn, conn.transaction(), conn.cursor() as cur:
        yield cur
