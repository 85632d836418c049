"""Job metrics for operators (GET /ops/jobs): every clinic's jobs created in a window, per
kind: how many are in each status, how long the finished ones ran (p50, p95 of
`finished_at - started_at`), and how many of those that ended did so in error.

One statement, set-based: `count(*) FILTER (...)` per status and `percentile_cont` over the
durations per kind, and the all-kinds counts as window sums of those rows (`sum(...) OVER
()`); the index `jobs_created` (created_at, with kind, status and the times included) serves
the window. The all-kinds row has no percentiles: they would need a second pass over the
jobs (GROUPING SETS doubled the statement's time), and a p95 mixing a model's replies with
emails says little.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from frontdesk.platform.db import Database, transaction
from frontdesk.values import ApiModel, Timestamp

DEFAULT_WINDOW_HOURS = 24
# A week: the statement reads every job of the window (about 0.5 s per 230,000 jobs in
# bench.jobs), so a month of a busy platform could meet the statement timeout.
MAX_WINDOW_HOURS = 24 * 7
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
    kind: str
    total: int
    by_status: StatusCounts
    finished: int  # succeeded, failed or dead, with a start and an end
    p50_ms: float | None
    p95_ms: float | None
    error_rate: float | None  # (failed + dead) / (succeeded + failed + dead); None if none


class AllKinds(ApiModel):
    total: int
    by_status: StatusCounts
    finished: int
    error_rate: float | None


class JobMetrics(ApiModel):
    window_hours: int
    since: Timestamp
    until: Timestamp
    kinds: list[KindMetrics]
    all: AllKinds


_ERRORS = ", ".join(f"'{s}'" for s in ERROR_STATUSES)
_COUNTED = (*STATUSES, "finished", "errors", "ended")
_STATUS_COUNTS = ",\n".join(f"count(*) FILTER (WHERE status = '{s}') AS {s}" for s in STATUSES)
_ALL_COUNTS = ",\n".join(f"sum({c}) OVER () AS all_{c}" for c in _COUNTED)

# date_part, not extract: extract's numeric makes the sorts behind the percentiles slower.
_METRICS = f"""
    WITH window_ AS (
        SELECT now() - make_interval(hours => %(hours)s) AS since, now() AS until),
    per_kind AS (
        SELECT kind, {_STATUS_COUNTS},
               count(*) FILTER (WHERE ended) AS finished,
               count(*) FILTER (WHERE status IN ({_ERRORS})) AS errors,
               count(*) FILTER (WHERE status IN ('succeeded', {_ERRORS})) AS ended,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY ran_ms) FILTER (WHERE ended)
                   AS p50_ms,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY ran_ms) FILTER (WHERE ended)
                   AS p95_ms
        FROM (SELECT kind, status,
                     status IN ('succeeded', {_ERRORS}) AND started_at IS NOT NULL AS ended,
                     date_part('epoch', finished_at - started_at) * 1000 AS ran_ms
              FROM jobs, window_ w WHERE created_at >= w.since) j
        GROUP BY kind)
    SELECT w.since, w.until, k.*, {_ALL_COUNTS}
    FROM window_ w LEFT JOIN per_kind k ON true
    ORDER BY k.kind"""


def job_metrics(db: Database, *, hours: int = DEFAULT_WINDOW_HOURS) -> JobMetrics:
    """The metrics of the jobs created in the last `hours` (1 to 168), one statement."""
    with transaction(db) as cur:
        cur.execute(_METRICS, {"hours": hours})
        rows = cur.fetchall()
    first = rows[0]  # an empty window: one row of the window, its kind NULL
    kinds = [
        KindMetrics(
            kind=row["kind"],
            total=sum(int(row[s]) for s in STATUSES),
            by_status=StatusCounts(**{s: int(row[s]) for s in STATUSES}),
            finished=int(row["finished"]),
            p50_ms=_rounded(row["p50_ms"]),
            p95_ms=_rounded(row["p95_ms"]),
            error_rate=_rate(row["errors"], row["ended"]),
        )
        for row in rows
        if row["kind"] is not None
    ]
    totals = {c: int(first[f"all_{c}"] or 0) for c in _COUNTED}
    everything = AllKinds(
        total=sum(totals[s] for s in STATUSES),
        by_status=StatusCounts(**{s: totals[s] for s in STATUSES}),
        finished=totals["finished"],
        error_rate=_rate(totals["errors"], totals["ended"]),
    )
    since: datetime = first["since"]
    until: datetime = first["until"]
    return JobMetrics(window_hours=hours, since=since, until=until, kinds=kinds, all=everything)


def _rate(part: Any, whole: Any) -> float | None:
    return None if not whole else round(int(part) / int(whole), 4)


def _rounded(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)
