"""Overload through the local runtime: three times more concurrent callers than the
connection budget gives the API, against ApiFunction's pool of Lambda environments (its
reserved concurrency from template.yaml) behind the HTTP API gateway. The database's
connection limit turns the surplus away; each refused caller gets 503 + Retry-After, none
a 500, and every accepted write is stored.

The database is reached as a role without superuser rights, as the functions reach
Aurora: PostgreSQL does not hold superusers to a database's CONNECTION LIMIT.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from local.dev import function_environment
from local.functions import LocalFunction
from local.gateway import HttpApiGateway
from local.template import Provisioned, local_parameters
from tests.integration.conftest import FORM_KEY, App
from tests.support import reset_process_state

BUDGET = "20"  # the smallest budget
# Two cores start a dozen Lambda environments (FastAPI, boto3, psycopg each) slowly enough
# to meet Lambda's 10 s init limit: the test gives the API a share of 2 (ceiling 6) of the
# smallest budget and its environments 30 s, and keeps every rule the template states.
API_SHARE = 2


@pytest.fixture
def app_role(app: App, pg_admin_url: str) -> Iterator[str]:
    """The test database reached as a plain role (LOGIN, no superuser), its URL."""
    role = f"frontdesk_app_{uuid.uuid4().hex[:8]}"
    dbname = conninfo.conninfo_to_dict(app.database_url)["dbname"]
    with psycopg.connect(app.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER')
        for grant in (
            f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"',
            f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"',
            f'GRANT ALL ON ALL FUNCTIONS IN SCHEMA public TO "{role}"',
            f'GRANT USAGE ON SCHEMA public TO "{role}"',
        ):
            conn.execute(grant)
    yield conninfo.make_conninfo(app.database_url, user=role, password="")
    with psycopg.connect(app.database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        conn.execute(f'DROP OWNED BY "{role}"')
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" CONNECTION LIMIT -1')
        conn.execute(f'DROP ROLE "{role}"')


def serve(gateway: HttpApiGateway) -> tuple[Any, str]:
    import uvicorn

    config = uvicorn.Config(gateway, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def post_lead(url: str, n: int) -> tuple[int, dict[str, str], Any]:
    body = json.dumps({"name": f"Caller {n}", "email": f"caller{n}@example.com", "consent": True})
    request = urllib.request.Request(  # noqa: S310 (loopback)
        f"{url}/public/leads",
        data=body.encode(),
        method="POST",
        headers={"Content-Type": "application/json", "X-Form-Key": FORM_KEY},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
            return (
                answer.status,
                {k.lower(): v for k, v in answer.headers.items()},
                json.loads(answer.read()),
            )
    except urllib.error.HTTPError as error:
        return (
            error.code,
            {k.lower(): v for k, v in error.headers.items()},
            json.loads(error.read() or b"null"),
        )


@pytest.mark.slow
def test_three_times_the_budget_gets_503_with_retry_after_and_loses_no_write(
    app: App, app_role: str, pg_admin_url: str
) -> None:
    # Given the template under the smallest connection budget: the API's share of it, and
    # its reserved concurrency (three times the share) as the pool of environments
    template = copy.deepcopy(app.stack.template)
    row = template["Mappings"]["ConnectionBudget"][BUDGET]
    assert row["ApiCeiling"] == 3 * row["ApiFunction"]
    row.update(ApiFunction=API_SHARE, ApiCeiling=3 * API_SHARE)
    template["Resources"]["ApiFunction"]["Properties"]["Timeout"] = 30
    stack = Provisioned(
        template=template,
        parameters=local_parameters(template, {"DatabaseConnectionBudget": BUDGET}),
        physical=app.stack.physical,
    )
    share = int(row["ApiFunction"])
    spec = next(s for s in stack.functions() if s.logical_id == "ApiFunction")
    assert spec.reserved_concurrency == 3 * share
    # And the database's limit as the API meets it when every other function holds its
    # share (the migrations resource sets the whole budget as the database's limit)
    # (every session counts toward it: this process keeps none open)
    reset_process_state()
    dbname = conninfo.conninfo_to_dict(app.database_url)["dbname"]
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" CONNECTION LIMIT {share}')
    environment = function_environment(stack, "ApiFunction", app_role, app.moto_url)
    function = LocalFunction(
        spec, environment, concurrency=spec.reserved_concurrency, throttle=True
    )
    gateway = HttpApiGateway(
        stack.http_routes("ApiFunction"), stack.jwt_authorizers(), "unused", function.invoke
    )
    server, url = serve(gateway)
    callers = 3 * share
    results: list[tuple[int, dict[str, str], Any]] = [(0, {}, None)] * callers
    start = threading.Barrier(callers)

    def call(n: int) -> None:
        start.wait()
        results[n] = post_lead(url, n)

    try:
        # When three times as many callers as the budget allows post a lead at once
        threads = [threading.Thread(target=call, args=(n,)) for n in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        server.should_exit = True
        function.stop()
    statuses = sorted(status for status, _, _ in results)
    # Then the budget's worth are stored and the rest are turned away with 503 + Retry-After
    assert statuses == [201] * share + [503] * (callers - share), [(s, b) for s, _, b in results]
    for status, headers, body in results:
        if status == 503:
            assert int(headers["retry-after"]) >= 1
            assert headers["content-type"] == "application/problem+json"
            assert body["status"] == 503 and body["requestId"]
    # And Lambda never throttled: the database, not the pool, said no
    assert function.throttles == 0
    # And no accepted write is lost, nothing refused was written
    accepted = {body["data"]["id"] for status, _, body in results if status == 201}
    with psycopg.connect(app.database_url) as conn:
        stored = {str(row[0]) for row in conn.execute("SELECT id FROM leads")}
        jobs = conn.execute("SELECT count(*) FROM jobs").fetchone()
    assert stored == accepted
    assert jobs == (share,)


def test_a_throttled_function_is_answered_as_api_gateway_does(app: App) -> None:
    # Given a function at its reserved concurrency behind the gateway (one environment,
    # held by a caller whose request is still running)
    from local.functions import Throttled

    def throttled(event: dict[str, Any]) -> Any:
        raise Throttled("ApiFunction")

    stack = app.stack
    gateway = HttpApiGateway(stack.http_routes("ApiFunction"), {}, "unused", throttled)
    server, url = serve(gateway)
    try:
        # When a caller arrives
        status, _, body = post_lead(url, 0)
    finally:
        server.should_exit = True
    # Then it gets what HTTP API answers for a throttled Lambda: a 500, no Retry-After;
    # which is why the API's reserved concurrency sits above its share of the database
    assert (status, body) == (500, {"message": "Internal Server Error"})
