"""GET /ops/jobs through OpsFunction's handler against real PostgreSQL: every clinic's jobs
in a window, per kind and in all, counted by status, with p50/p95 durations and the error
rate from one statement; operators only; the window bounded."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import App
from tests.support import LambdaContext, http_event, http_response


def metrics(ops: Any, app: App, query: str = "", roles: str = "[staff operator]") -> Any:
    event = http_event("GET", "/ops/jobs", clinic_id=app.clinic_id, query=query)
    if query:
        event["queryStringParameters"] = dict(p.split("=", 1) for p in query.split("&"))
    event["requestContext"]["authorizer"]["jwt"]["claims"]["roles"] = roles
    status, _, answer = http_response(ops.handler(event, LambdaContext()))
    return status, answer


def add_jobs(app: App, rows: list[tuple[uuid.UUID, str, str, float | None, float]]) -> None:
    """(clinic, kind, status, seconds it ran or None, hours ago it was created)."""
    with psycopg.connect(app.database_url) as conn:
        for clinic, kind, status, ran, hours_ago in rows:
            conn.execute(
                """INSERT INTO jobs (id, clinic_id, kind, status, created_at, started_at,
                                     finished_at)
                   SELECT %(id)s, %(clinic)s, %(kind)s, %(status)s, t.created,
                          CASE WHEN %(ran)s::float8 IS NOT NULL OR %(status)s = 'running'
                               THEN t.created END,
                          t.created + make_interval(secs => %(ran)s::float8)
                   FROM (SELECT now() - %(ago)s::float8 * interval '1 hour' AS created) t""",
                {
                    "id": uuid.uuid4(),
                    "clinic": clinic,
                    "kind": kind,
                    "status": status,
                    "ran": ran,
                    "ago": hours_ago,
                },
            )


def test_job_metrics_count_by_kind_and_status_with_percentiles_and_error_rate(
    app: App, ops: Any
) -> None:
    # Given jobs of two clinics in the last day, and older ones outside the window
    a, b = app.clinic_id, app.other_clinic_id
    runs = [1.0, 2.0, 3.0, 4.0, 10.0]  # seconds: p50 3 s, p95 8.8 s (interpolated)
    add_jobs(
        app,
        [(a, "sync.fetch", "succeeded", s, 1) for s in runs[:3]]
        + [(b, "sync.fetch", "failed", runs[3], 2), (b, "sync.fetch", "dead", runs[4], 3)]
        + [(a, "sync.fetch", "queued", None, 0.5), (a, "sync.fetch", "running", None, 0.5)]
        + [(a, "assistant.reply", "succeeded", 0.5, 5)]
        + [(a, "assistant.reply", "cancelled", None, 5)]
        + [(a, "sync.fetch", "failed", 99.0, 30), (a, "leads.import", "succeeded", 9.0, 48)],
    )
    # When an operator asks for the default window (24 hours)
    status, answer = metrics(ops, app)
    # Then each kind has its counts, percentiles and error rate over that window only
    assert status == 200, answer
    data = answer["data"]
    assert data["windowHours"] == 24
    kinds = {k["kind"]: k for k in data["kinds"]}
    assert sorted(kinds) == ["assistant.reply", "sync.fetch"]
    fetch = kinds["sync.fetch"]
    assert fetch["byStatus"] == {
        "queued": 1,
        "running": 1,
        "succeeded": 3,
        "failed": 1,
        "cancelled": 0,
        "dead": 1,
    }
    assert (fetch["total"], fetch["finished"]) == (7, 5)
    assert (fetch["p50Ms"], fetch["p95Ms"]) == (3000.0, 8800.0)
    assert fetch["errorRate"] == 0.4  # (failed + dead) / ended: 2 / 5
    reply = kinds["assistant.reply"]
    assert (reply["total"], reply["finished"], reply["p50Ms"], reply["errorRate"]) == (
        2,
        1,
        500.0,
        0.0,
    )
    # And the all-kinds row sums them
    everything = data["all"]
    assert everything["total"] == 9 and everything["errorRate"] == 0.3333  # 2 of 6 ended
    assert everything["byStatus"]["succeeded"] == 4 and everything["finished"] == 6
    # When the window is widened to 72 hours / Then the older jobs count too
    _, wider = metrics(ops, app, "hours=72")
    kinds = {k["kind"]: k for k in wider["data"]["kinds"]}
    assert sorted(kinds) == ["assistant.reply", "leads.import", "sync.fetch"]
    assert kinds["sync.fetch"]["byStatus"]["failed"] == 2


def test_an_empty_window_answers_zeros(app: App, ops: Any) -> None:
    status, answer = metrics(ops, app, "hours=1")
    assert status == 200, answer
    assert answer["data"]["kinds"] == []
    everything = answer["data"]["all"]
    assert (everything["total"], everything["errorRate"]) == (0, None)
    assert answer["data"]["since"] < answer["data"]["until"]


@pytest.mark.parametrize("query", ["hours=0", "hours=169", "hours=-3", "hours=day"])
def test_the_window_is_bounded(app: App, ops: Any, query: str) -> None:
    status, answer = metrics(ops, app, query)
    assert status == 422, answer


def test_a_clinic_admin_is_not_an_operator(app: App, ops: Any) -> None:
    status, answer = metrics(ops, app, roles="[staff admin]")
    assert status == 403 and "operator role" in answer["detail"]


def test_the_metrics_are_one_statement_served_by_the_window_index(app: App) -> None:
    # Given many old jobs and a few recent ones (so the planner prefers the index)
    from frontdesk.ops.job_metrics import _METRICS

    with psycopg.connect(app.database_url) as conn:
        conn.execute(
            """INSERT INTO jobs (id, clinic_id, kind, status, created_at)
               SELECT gen_random_uuid(), %s, 'sync.fetch', 'succeeded',
                      now() - interval '40 days' - make_interval(secs => i)
               FROM generate_series(1, 20000) i""",
            (app.clinic_id,),
        )
        conn.execute("ANALYZE jobs")
        # When the statement is planned
        plan = "\n".join(
            r[0] for r in conn.execute("EXPLAIN " + _METRICS, {"hours": 24}).fetchall()
        )
    # Then it reads the window from jobs_created, not the whole table
    assert "jobs_created" in plan, plan
