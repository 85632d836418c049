"""Job metrics for operators (GET /ops/jobs): every clinic's jobs created in a window, per
kind: how many are in each status, how long the finished ones ran (p50, p95 of
`finished_at - started_at`), and how many of those that ended did so in error.

One statement, set-based: `count(*) FILTER (...)` per status, `percentile_cont` over the
durations, `GROUPING SETS` for the per-kind rows and the all-kinds row together; the index
`jobs_created` (created_at, with kind, status and the times included) serves the window.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from frontdesk.platform.db import Database, transaction
from frontdesk.values import ApiModel, Timestamp

DEFAULT_WINDOW_HOURS = 24
MAX_WINDOW_HOURS = 24 * 30
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "dead")
# Ended in error: failed (a permanent error) or dead (retries or rescues used up).
ERROR_STATUSES = ("failed", "dead")


class StatusCounts(ApiModel):
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    dead: int


class KindMetrics(ApiModel):
    kind: str | None  # None in the all-kinds row
    total: int
    by_status: StatusCounts
    finished: int  # succeeded, failed or dead, with a start and an end
    p50_ms: float | None
    p95_ms: float | None
    error_rate: float | None  # (failed + dead) / (succeeded + failed + dead); None if none


class JobMetrics(ApiModel):
    window_hours: int
    since: Timestamp
    until: Timestamp
    kinds: list[KindMetrics]
    all: KindMetrics


_STATUS_COUNTS = ",\n".join(f"count(*) FILTER (WHERE status = '{s}') AS {s}" for s in STATUSES)
_ENDED = "status IN ('succeeded', 'failed', 'dead') AND started_at IS NOT NULL"
_ERRORS = ", ".join(f"'{s}'" for s in ERROR_STATUSES)

_METRICS = f"""
    WITH window_ AS (
        SELECT now() - make_interval(hours => %(hours)s) AS since, now() AS until)
    SELECT grouping(kind) = 1 AS everything, kind,
           {_STATUS_COUNTS},
           count(*) FILTER (WHERE {_ENDED}) AS finished,
           percentile_cont(0.5) WITHIN GROUP (
               ORDER BY extract(epoch FROM finished_at - started_at) * 1000)
               FILTER (WHERE {_ENDED}) AS p50_ms,
           percentile_cont(0.95) WITHIN GROUP (
               ORDER BY extract(epoch FROM finished_at - started_at) * 1000)
               FILTER (WHERE {_ENDED}) AS p95_ms,
           count(*) FILTER (WHERE status IN ({_ERRORS}))::float8
               / nullif(count(*) FILTER (WHERE status IN ('succeeded', {_ERRORS})), 0)
               AS error_rate,
           min(w.since) AS since, min(w.until) AS until
    FROM window_ w
    LEFT JOIN jobs ON jobs.created_at >= w.since
    GROUP BY GROUPING SETS ((kind), ())
    ORDER BY everything, kind"""


def job_metrics(db: Database, *, hours: int = DEFAULT_WINDOW_HOURS) -> JobMetrics:
    """The metrics of the jobs created in the last `hours` (1 to 720), one statement."""
    with transaction(db) as cur:
        cur.execute(_METRICS, {"hours": hours})
        rows = cur.fetchall()
    kinds = [_kind(row) for row in rows if not row["everything"] and row["kind"] is not None]
    (everything,) = [row for row in rows if row["everything"]]
    since: datetime = everything["since"]
    until: datetime = everything["until"]
    return JobMetrics(
        window_hours=hours, since=since, until=until, kinds=kinds, all=_kind(everything)
    )


def _kind(row: dict[str, Any]) -> KindMetrics:
    # An empty window joins no job: the LEFT JOIN's one row counts nothing (count(*) is 1
    # there, so the total is the sum of the statuses).
    counts = StatusCounts(**{s: int(row[s]) for s in STATUSES})
    return KindMetrics(
        kind=None if row["everything"] else row["kind"],
        total=sum(int(row[s]) for s in STATUSES),
        by_status=counts,
        finished=int(row["finished"]),
        p50_ms=_rounded(row["p50_ms"]),
        p95_ms=_rounded(row["p95_ms"]),
        error_rate=_rounded(row["error_rate"], 4),
    )


def _rounded(value: Any, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)
