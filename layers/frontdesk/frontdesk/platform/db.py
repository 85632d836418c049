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

In AWS the connection goes to RDS Proxy, which multiplexes client connections onto a few
database connections as long as nothing pins a session to one. So: no server-side
prepared statements (`prepare_threshold=None`: psycopg never PREPAREs), and no startup
`options` (the proxy refuses them outright); there the timeouts are the database's own
defaults, which the migration custom resource sets (`ALTER DATABASE ... SET`). TLS is
`verify-full` against the CA bundle shipped in this package (`rds-ca-bundle.pem`: the RDS
certificate authorities for direct connections, the Amazon Trust Services roots that
sign RDS Proxy's certificates).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg.conninfo import make_conninfo
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


# The RDS certificate authorities (every region) and the Amazon Trust Services roots (RDS
# Proxy's certificates come from ACM): what `verify-full` checks the server against.
RDS_CA_BUNDLE = Path(__file__).with_name("rds-ca-bundle.pem")
_VERIFYING = frozenset({"verify-ca", "verify-full"})


@dataclass(frozen=True)
class ConnectOptions:
    """How every connection of a container is opened."""

    connect_timeout_s: int = 5
    statement_timeout_ms: int = 5000
    # False behind RDS Proxy: it refuses startup options ("-c statement_timeout=...").
    startup_options: bool = True
    sslmode: str = "prefer"
    sslrootcert: str = ""  # empty: RDS_CA_BUNDLE when the mode verifies the server


def connect_kwargs(
    connect_timeout_s: int = 5,
    statement_timeout_ms: int = 5000,
    options: ConnectOptions | None = None,
) -> dict[str, Any]:
    if options is None:
        options = ConnectOptions(connect_timeout_s, statement_timeout_ms)
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "row_factory": dict_row,
        "connect_timeout": options.connect_timeout_s,
        # Never a server-side prepared statement: one would pin the session to one database
        # connection behind RDS Proxy (and break on another).
        "prepare_threshold": None,
        "application_name": "frontdesk",
        "sslmode": options.sslmode,
    }
    if options.sslmode in _VERIFYING:
        kwargs["sslrootcert"] = options.sslrootcert or str(RDS_CA_BUNDLE)
    if options.startup_options:
        timeout = options.statement_timeout_ms
        kwargs["options"] = (
            f"-c statement_timeout={timeout} -c idle_in_transaction_session_timeout={timeout * 2}"
        )
    return kwargs


class SecretError(ValueError):
    """The database secret cannot be turned into a connection (no host, no user)."""


def conninfo_from_secret(secret: str, *, host: str = "", port: int = 0, dbname: str = "") -> str:
    """The conninfo of a database secret, with the endpoint settings applied over it.

    A secret holds a URL, or JSON: RDS-style (host, port, username, password, dbname) or
    the `{username, password}` RDS writes when it manages the master password. The
    endpoint (RDS Proxy's or the cluster's, from the template) comes as `host`, `port` and
    `dbname` and wins over the secret's: the proxy, not the instance the secret was made
    for, is what the functions reach.
    """
    secret = secret.strip()
    endpoint = {
        k: v for k, v in {"host": host, "port": port or None, "dbname": dbname}.items() if v
    }
    if not secret.startswith("{"):
        return make_conninfo(secret, **endpoint) if endpoint else secret
    fields = json.loads(secret)
    if not fields.get("username"):
        raise SecretError("the database secret has no username")
    merged = {
        "user": str(fields["username"]),
        "password": str(fields.get("password", "")),
        "host": str(fields.get("host", "")),
        "port": fields.get("port") or 5432,
        "dbname": str(fields.get("dbname") or "postgres"),
        **endpoint,
    }
    if not merged["host"]:
        raise SecretError(
            "the database secret names no host: set DATABASE_HOST (the RDS Proxy or cluster"
            " endpoint; template.yaml passes it)"
        )
    return make_conninfo("", **merged)


def _refused(exc: psycopg.DataError) -> InvalidInput:
    """A value the database cannot store (a NUL character, a number or date out of range):
    the caller's input, so a 422. The driver's message may quote the value; keep it out."""
    return InvalidInput(f"a value cannot be stored ({type(exc).__name__})")


# Errors that mean "try again later": the driver's operational errors (lost connection,
# statement or lock timeout, too many connections) and the server ending a transaction
# left idle past idle_in_transaction_session_timeout (a slow or paused caller), which
# psycopg raises as an InternalError.
_TRANSIENT = (psycopg.OperationalError, psycopg.errors.IdleInTransactionSessionTimeout)


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
        options: ConnectOptions | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._kwargs = connect_kwargs(connect_timeout_s, statement_timeout_ms, options)
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
        except _TRANSIENT as exc:
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
        options: ConnectOptions | None = None,
    ) -> None:
        from psycopg_pool import ConnectionPool

        self._timeout = float(connect_timeout_s)
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_size,
            kwargs=connect_kwargs(connect_timeout_s, statement_timeout_ms, options),
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
        except (PoolTimeout, *_TRANSIENT) as exc:
            raise _unavailable(exc) from exc

    def close(self) -> None:
        self._pool.close()


@contextmanager
def transaction(db: Database) -> Iterator[Cursor]:
    """One transaction on one connection: commit on success, roll back on any error."""
    with db.connection() as conn, conn.transaction(), conn.cursor() as cur:
        yield cur
