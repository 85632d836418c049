"""Job metrics benchmark: `python -m bench.jobs`.

Generates 2,000,000 jobs over 60 days for 20 clinics (five kinds, every status, run times
of 0.05-30 s) directly in PostgreSQL, then side by side in one run, for the default window
(24 hours, about 33,000 jobs) and a week:
1. GET /ops/jobs through OpsFunction's real handler, and its statement run bare;
2. the same statement with the planner kept off the index `jobs_created` (a scan of the
   whole table: what the window would cost without it);
3. fetch-and-loop: the window's rows fetched to Python, counted and their percentiles
   computed there (`statistics.quantiles`), as a route without set-based SQL would.
Results: bench/results/jobs.json and .md. Nothing here asserts a timing.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import psycopg

from bench.common import (
    Report,
    Row,
    export_stack,
    latency_summary,
    log,
    start_moto,
    start_postgres,
    stdout_to_devnull,
    write_results,
)

JOBS = 2_000_000
DAYS = 60
READS = 30

GENERATE = [
    """INSERT INTO clinics (id, name, timezone)
       SELECT md5('c' || c)::uuid, 'Clinic ' || c, 'UTC' FROM generate_series(1, 20) c""",
    f"""INSERT INTO jobs (id, clinic_id, kind, status, created_at, started_at, finished_at)
        SELECT gen_random_uuid(), md5('c' || (1 + i % 20))::uuid,
               (ARRAY['notify.lead_created', 'assistant.reply', 'sync.fetch', 'sync.validate',
                      'leads.import'])[1 + i % 5],
               s.status, t.created,
               CASE WHEN s.status <> 'queued' THEN t.created + interval '50 milliseconds' END,
               CASE WHEN s.status IN ('succeeded', 'failed', 'dead', 'cancelled')
                    THEN t.created + interval '50 milliseconds'
                         + make_interval(secs => 0.05 + 30 * random() ^ 3) END
        FROM generate_series(1, {JOBS}) i,
             -- `0 * i`: correlated, so drawn per row (else evaluated once)
             LATERAL (SELECT now() - interval '{DAYS} days' * random() + 0 * i * interval '1s'
                             AS created, random() + 0 * i AS r) t,
             LATERAL (SELECT CASE WHEN t.r < 0.90 THEN 'succeeded' WHEN t.r < 0.94 THEN 'failed'
                                  WHEN t.r < 0.95 THEN 'dead' WHEN t.r < 0.97 THEN 'cancelled'
                                  WHEN t.r < 0.985 THEN 'running' ELSE 'queued' END
                                  AS status) s""",
    "VACUUM ANALYZE jobs",
]


def timed(fn: Callable[[], Any], times: int) -> list[float]:
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return seconds


def fetch_and_loop(conn: psycopg.Connection[Any], hours: int) -> int:
    """The window's rows to Python: counts per kind and status, percentiles per kind."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    durations: dict[str, list[float]] = defaultdict(list)
    for kind, status, started_at, finished_at in conn.execute(
        """SELECT kind, status, started_at, finished_at FROM jobs
           WHERE created_at >= now() - make_interval(hours => %s)""",
        (hours,),
    ):
        counts[kind][status] += 1
        if status in ("succeeded", "failed", "dead") and started_at is not None:
            durations[kind].append((finished_at - started_at).total_seconds() * 1000)
    for values in durations.values():
        if len(values) > 1:
            statistics.quantiles(values, n=100, method="inclusive")
    return len(counts)


def main() -> None:
    from frontdesk.ops import job_metrics
    from frontdesk.services import get_services
    from tests.support import LambdaContext, http_event, http_response, load_handler

    pg = start_postgres()
    moto = start_moto()
    report = Report()
    details: dict[str, Any] = {}
    try:
        url = pg.fresh_database("bench_jobs")
        export_stack(moto, url)
        log(f"generating {JOBS:,} jobs over {DAYS} days in PostgreSQL")
        started = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in GENERATE:
                conn.execute(statement)  # type: ignore[arg-type]
        details["generate_s"] = round(time.perf_counter() - started, 1)
        ops = load_handler("ops")
        clinic = psycopg.connect(url).execute("SELECT md5('c1')::uuid").fetchone()[0]  # type: ignore[index]
        for hours in (24, 168):
            event = http_event("GET", "/ops/jobs", clinic_id=clinic, query=f"hours={hours}")
            event["queryStringParameters"] = {"hours": str(hours)}
            event["requestContext"]["authorizer"]["jwt"]["claims"]["roles"] = "[staff operator]"
            with stdout_to_devnull():
                status, _, answer = http_response(ops.handler(event, LambdaContext()))
                assert status == 200, answer
                handler = latency_summary(
                    timed(lambda e=event: ops.handler(e, LambdaContext()), READS)
                )
            in_window = answer["data"]["all"]["total"]
            with psycopg.connect(url, autocommit=True) as conn:
                bare = latency_summary(
                    timed(
                        lambda c=conn, h=hours: c.execute(
                            job_metrics._METRICS, {"hours": h}
                        ).fetchall(),
                        READS,
                    )
                )
                with conn.transaction():
                    conn.execute(
                        "SET LOCAL enable_indexscan = off; SET LOCAL enable_indexonlyscan = off;"
                        " SET LOCAL enable_bitmapscan = off"
                    )
                    no_index = latency_summary(
                        timed(
                            lambda c=conn, h=hours: c.execute(
                                job_metrics._METRICS, {"hours": h}
                            ).fetchall(),
                            5,
                        )
                    )
                loop = latency_summary(timed(lambda c=conn, h=hours: fetch_and_loop(c, h), 5))
            window = f"{hours} h window ({in_window:,} of {JOBS:,} jobs)"
            report.add(
                Row(
                    f"GET /ops/jobs through OpsFunction's handler, {window}",
                    f"p50 {handler['p50_ms']} ms, p99 {handler['p99_ms']} ms",
                    f"the statement bare: p50 {bare['p50_ms']} ms",
                    f"{handler['p50_ms'] - bare['p50_ms']:+.1f} ms",
                )
            )
            report.add(
                Row(
                    f"job metrics statement with jobs_created, {window}",
                    f"p50 {bare['p50_ms']} ms",
                    f"without the index (whole table): p50 {no_index['p50_ms']} ms",
                    f"without / with: {no_index['p50_ms'] / bare['p50_ms']:,.2f}x",
                )
            )
            report.add(
                Row(
                    f"job metrics statement vs fetch-and-loop in Python, {window}",
                    f"p50 {bare['p50_ms']} ms",
                    f"rows to Python, counted and percentiles there: p50 {loop['p50_ms']} ms",
                    f"loop / statement: {loop['p50_ms'] / bare['p50_ms']:,.1f}x",
                )
            )
            details[f"{hours}h"] = {
                "jobs_in_window": in_window,
                "handler": handler,
                "bare": bare,
                "without_index": no_index,
                "fetch_and_loop": loop,
            }
        details.update(
            {
                "postgres": f"{pg.version} ({pg.source})",
                "python": platform.python_version(),
                "machine": platform.platform(),
            }
        )
    finally:
        get_services().database.close()
        pg.drop_created()
        moto.server.stop()
    note = (
        f"{JOBS:,} jobs over {DAYS} days, generated in {details['generate_s']} s. "
        f"PostgreSQL {details['postgres']}, Python {details['python']}."
    )
    print(write_results("jobs", "Job metrics benchmark", report, notes=[note], details=details))


if __name__ == "__main__":
    main()
