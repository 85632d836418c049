"""Control-tower metrics: `daily_metrics`, one pre-calculated row per clinic and local day.

MetricsFunction writes the rows on two schedules, the API only reads them:

- `recent` (every 5 minutes): the clinics' today and yesterday where something of the
  clinic changed since the last run, the days of rows changed since then (a late change to
  last week's appointment), and today/yesterday rows that do not exist yet. "Changed" is
  read from timestamps that move on every write (created_at, and updated_at kept by
  triggers), scanned from the last watermark minus an overlap so a transaction that
  committed late is still seen.
- `full` (nightly): every clinic's last 35 days, which also catches what timestamps cannot
  tell (an appointment moved away from an older day, changed working hours).

A run is one transaction holding a transaction-scoped advisory lock: a second run while
one is busy returns at once with `skipped`, and a crashed run releases the lock with its
connection. The aggregate is one `INSERT ... SELECT ... GROUP BY ... ON CONFLICT DO UPDATE`
whose update is skipped when the numbers are the same, so a re-run writes nothing.

Days are the clinic's calendar days (clinics.timezone). Appointments count on the day they
take place, by their current status; leads, questions and notifications on the day they
were created; a lead counts as converted on its own day once a patient points at it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from pydantic import Field
from pydantic.alias_generators import to_camel

from frontdesk.errors import InvalidInput, NotFound
from frontdesk.platform.db import Cursor, Database, transaction
from frontdesk.values import ApiModel, Timestamp

Mode = Literal["recent", "full"]

_LOCK_ID = 0x4D4554524943  # "METRIC": shared by every MetricsFunction run
FULL_DAYS = 35
MAX_RANGE_DAYS = 366
# Rows changed this long before the previous run's start are looked at again: a
# transaction that started before that run but committed after its snapshot is not lost.
OVERLAP = timedelta(minutes=5)

_COUNTS = (
    "leads_new",
    "leads_converted",
    "appointments_booked",
    "appointments_cancelled",
    "appointments_completed",
    "appointments_no_show",
    "booked_minutes",
    "working_minutes",
    "assistant_questions",
    "notifications_sent",
    "notifications_failed",
)


@dataclass(frozen=True)
class RunResult:
    mode: Mode
    skipped: bool
    days_computed: int = 0
    rows_written: int = 0
    started_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "skipped": self.skipped,
            "daysComputed": self.days_computed,
            "rowsWritten": self.rows_written,
        }


# ---------------------------------------------------------------- which days to compute

# Recent: today and yesterday of each clinic where anything of the clinic changed, the
# days of the changed rows themselves (within the full window, never the future), and
# today/yesterday rows not written yet. %(since)s NULL (the first run) means every clinic.
_RECENT_TARGETS = """
WITH clinic_today AS (
    SELECT c.id AS clinic_id, c.timezone, (now() AT TIME ZONE c.timezone)::date AS today
    FROM clinics c
),
changed AS (
    SELECT a.clinic_id, a.starts_at AS at FROM appointments a WHERE a.updated_at >= %(since)s
    UNION ALL
    SELECT l.clinic_id, l.created_at FROM leads l WHERE l.updated_at >= %(since)s
    UNION ALL
    SELECT l.clinic_id, l.created_at FROM patients p JOIN leads l ON l.id = p.lead_id
    WHERE p.created_at >= %(since)s AND p.lead_id IS NOT NULL
    UNION ALL
    SELECT m.clinic_id, m.created_at FROM messages m WHERE m.updated_at >= %(since)s
    UNION ALL
    SELECT n.clinic_id, n.created_at FROM notification_deliveries n
    WHERE n.updated_at >= %(since)s
),
changed_days AS (
    SELECT DISTINCT ch.clinic_id, (ch.at AT TIME ZONE ct.timezone)::date AS day
    FROM changed ch JOIN clinic_today ct ON ct.clinic_id = ch.clinic_id
),
recent_days AS (
    SELECT ct.clinic_id, d.day
    FROM clinic_today ct
    CROSS JOIN LATERAL (VALUES (ct.today), (ct.today - 1)) AS d(day)
    WHERE %(since)s::timestamptz IS NULL
       OR ct.clinic_id IN (SELECT clinic_id FROM changed_days)
       OR NOT EXISTS (SELECT 1 FROM daily_metrics m
                      WHERE m.clinic_id = ct.clinic_id AND m.day = d.day)
)
SELECT t.clinic_id, t.day
FROM (SELECT clinic_id, day FROM changed_days UNION SELECT clinic_id, day FROM recent_days) t
JOIN clinic_today ct ON ct.clinic_id = t.clinic_id
WHERE t.day BETWEEN ct.today - %(window)s + 1 AND ct.today
ORDER BY t.clinic_id, t.day"""

_FULL_TARGETS = """
SELECT c.id AS clinic_id, d.day::date AS day
FROM clinics c
CROSS JOIN LATERAL generate_series(
    (now() AT TIME ZONE c.timezone)::date - %(window)s + 1,
    (now() AT TIME ZONE c.timezone)::date,
    interval '1 day') AS d(day)
ORDER BY 1, 2"""

# ---------------------------------------------------------------- the aggregate

# The numbers of the given (clinic, day) pairs from raw rows. Each source is read per
# clinic through its (clinic_id, time) index within the day's UTC bounds.
AGGREGATE = """
WITH t AS MATERIALIZED (
    SELECT t.clinic_id, t.day,
           (t.day::timestamp AT TIME ZONE c.timezone) AS day_start,
           ((t.day + 1)::timestamp AT TIME ZONE c.timezone) AS day_end
    FROM unnest(%(clinic_ids)s::uuid[], %(days)s::date[]) AS t(clinic_id, day)
    JOIN clinics c ON c.id = t.clinic_id
),
-- Each source table is read once per clinic over the span of its target days (an index
-- range scan), grouped by local day, then joined to the targets on (clinic, day): one scan
-- instead of one range probe per target day.
span AS MATERIALIZED (
    SELECT t.clinic_id, c.timezone, min(t.day_start) AS lo, max(t.day_end) AS hi
    FROM t JOIN clinics c ON c.id = t.clinic_id
    GROUP BY t.clinic_id, c.timezone
),
lead_sources AS (
    SELECT s.clinic_id, (l.created_at AT TIME ZONE s.timezone)::date AS day, l.source,
           count(*) AS n, count(p.id) AS converted
    FROM span s
    JOIN leads l ON l.clinic_id = s.clinic_id AND l.created_at >= s.lo AND l.created_at < s.hi
    LEFT JOIN patients p ON p.lead_id = l.id
    GROUP BY 1, 2, 3
),
lead_days AS (
    SELECT clinic_id, day, sum(n)::int AS leads_new, sum(converted)::int AS leads_converted,
           jsonb_object_agg(source, n) AS leads_by_source
    FROM lead_sources GROUP BY clinic_id, day
),
appointment_doctors AS (
    SELECT s.clinic_id, (a.starts_at AT TIME ZONE s.timezone)::date AS day, a.doctor_id,
           count(*) FILTER (WHERE a.status = 'booked') AS booked,
           count(*) FILTER (WHERE a.status = 'cancelled') AS cancelled,
           count(*) FILTER (WHERE a.status = 'completed') AS completed,
           count(*) FILTER (WHERE a.status = 'no_show') AS no_show,
           coalesce(sum(extract(epoch FROM a.ends_at - a.starts_at) / 60)
                    FILTER (WHERE a.status <> 'cancelled'), 0)::int AS booked_minutes
    FROM span s
    JOIN appointments a ON a.clinic_id = s.clinic_id
                       AND a.starts_at >= s.lo AND a.starts_at < s.hi
    GROUP BY 1, 2, 3
),
working AS (
    SELECT t.clinic_id, t.day, h.doctor_id,
           (sum(extract(epoch FROM h.ends_at - h.starts_at)) / 60)::int AS working_minutes
    FROM t
    JOIN doctor_working_hours h ON h.clinic_id = t.clinic_id
                               AND h.weekday = extract(isodow FROM t.day)
    GROUP BY t.clinic_id, t.day, h.doctor_id
),
doctor_days AS (
    SELECT coalesce(a.clinic_id, w.clinic_id) AS clinic_id, coalesce(a.day, w.day) AS day,
           coalesce(a.doctor_id, w.doctor_id) AS doctor_id,
           coalesce(a.booked, 0) AS booked, coalesce(a.cancelled, 0) AS cancelled,
           coalesce(a.completed, 0) AS completed, coalesce(a.no_show, 0) AS no_show,
           coalesce(a.booked_minutes, 0) AS booked_minutes,
           coalesce(w.working_minutes, 0) AS working_minutes
    FROM appointment_doctors a
    FULL JOIN working w
      ON w.clinic_id = a.clinic_id AND w.day = a.day AND w.doctor_id = a.doctor_id
),
appointment_days AS (
    SELECT clinic_id, day,
           sum(booked)::int AS booked, sum(cancelled)::int AS cancelled,
           sum(completed)::int AS completed, sum(no_show)::int AS no_show,
           sum(booked_minutes)::int AS booked_minutes,
           sum(working_minutes)::int AS working_minutes,
           jsonb_agg(jsonb_build_object(
               'doctorId', doctor_id,
               'bookedMinutes', booked_minutes,
               'workingMinutes', working_minutes,
               'utilisation', CASE WHEN working_minutes > 0
                                   THEN round(booked_minutes::numeric / working_minutes, 4) END)
               ORDER BY doctor_id) AS doctors
    FROM doctor_days GROUP BY clinic_id, day
),
assistant_days AS (
    SELECT s.clinic_id, (m.created_at AT TIME ZONE s.timezone)::date AS day,
           count(*) FILTER (WHERE m.role = 'user')::int AS questions,
           round(percentile_cont(0.5) WITHIN GROUP (
               ORDER BY extract(epoch FROM m.completed_at - m.created_at) * 1000)
               FILTER (WHERE m.role = 'assistant' AND m.status = 'done'))::int AS median_reply_ms
    FROM span s
    JOIN messages m ON m.clinic_id = s.clinic_id
                   AND m.created_at >= s.lo AND m.created_at < s.hi
    GROUP BY 1, 2
),
notification_days AS (
    SELECT s.clinic_id, (n.created_at AT TIME ZONE s.timezone)::date AS day,
           count(*) FILTER (WHERE n.status = 'sent')::int AS sent,
           count(*) FILTER (WHERE n.status = 'failed')::int AS failed
    FROM span s
    JOIN notification_deliveries n ON n.clinic_id = s.clinic_id
                                  AND n.created_at >= s.lo AND n.created_at < s.hi
    GROUP BY 1, 2
)
SELECT t.clinic_id, t.day,
       coalesce(l.leads_new, 0) AS leads_new,
       coalesce(l.leads_by_source, '{}'::jsonb) AS leads_by_source,
       coalesce(l.leads_converted, 0) AS leads_converted,
       coalesce(a.booked, 0) AS appointments_booked,
       coalesce(a.cancelled, 0) AS appointments_cancelled,
       coalesce(a.completed, 0) AS appointments_completed,
       coalesce(a.no_show, 0) AS appointments_no_show,
       coalesce(a.booked_minutes, 0) AS booked_minutes,
       coalesce(a.working_minutes, 0) AS working_minutes,
       coalesce(a.doctors, '[]'::jsonb) AS doctor_utilisation,
       coalesce(q.questions, 0) AS assistant_questions,
       q.median_reply_ms AS assistant_median_reply_ms,
       coalesce(n.sent, 0) AS notifications_sent,
       coalesce(n.failed, 0) AS notifications_failed,
       now() AS computed_at
FROM t
LEFT JOIN lead_days l ON l.clinic_id = t.clinic_id AND l.day = t.day
LEFT JOIN appointment_days a ON a.clinic_id = t.clinic_id AND a.day = t.day
LEFT JOIN assistant_days q ON q.clinic_id = t.clinic_id AND q.day = t.day
LEFT JOIN notification_days n ON n.clinic_id = t.clinic_id AND n.day = t.day"""

_COLUMNS = (
    "leads_new",
    "leads_by_source",
    "leads_converted",
    "appointments_booked",
    "appointments_cancelled",
    "appointments_completed",
    "appointments_no_show",
    "booked_minutes",
    "working_minutes",
    "doctor_utilisation",
    "assistant_questions",
    "assistant_median_reply_ms",
    "notifications_sent",
    "notifications_failed",
)

_UPSERT = f"""
INSERT INTO daily_metrics (clinic_id, day, {", ".join(_COLUMNS)}, computed_at)
{AGGREGATE}
ON CONFLICT (clinic_id, day) DO UPDATE
SET {", ".join(f"{c} = excluded.{c}" for c in _COLUMNS)}, computed_at = excluded.computed_at
WHERE ({", ".join(f"daily_metrics.{c}" for c in _COLUMNS)})
      IS DISTINCT FROM ({", ".join(f"excluded.{c}" for c in _COLUMNS)})"""


def _targets(cur: Cursor, mode: Mode) -> tuple[list[UUID], list[date]]:
    if mode == "full":
        cur.execute(_FULL_TARGETS, {"window": FULL_DAYS})
    else:
        cur.execute("SELECT watermark FROM metrics_runs WHERE mode = 'recent'")
        row = cur.fetchone()
        since = row["watermark"] - OVERLAP if row is not None else None
        cur.execute(_RECENT_TARGETS, {"since": since, "window": FULL_DAYS})
    rows = cur.fetchall()
    return [r["clinic_id"] for r in rows], [r["day"] for r in rows]


def compute(cur: Cursor, clinic_ids: list[UUID], days: list[date]) -> int:
    """Write the numbers of these (clinic, day) pairs; the number of rows that changed."""
    if not clinic_ids:
        return 0
    cur.execute(_UPSERT, {"clinic_ids": clinic_ids, "days": days})
    return cur.rowcount


def run(db: Database, mode: Mode, *, statement_timeout_ms: int = 60_000) -> RunResult:
    """One metrics run; `skipped` when another run holds the lock right now."""
    with transaction(db) as cur:
        cur.execute(f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}")
        cur.execute(
            "SELECT pg_try_advisory_xact_lock(%(id)s) AS locked, now() AS started", {"id": _LOCK_ID}
        )
        row = cur.fetchone()
        assert row is not None
        if not row["locked"]:
            return RunResult(mode=mode, skipped=True)
        started: datetime = row["started"]
        clinic_ids, days = _targets(cur, mode)
        written = compute(cur, clinic_ids, days)
        cur.execute(
            """INSERT INTO metrics_runs AS r
                   (mode, watermark, started_at, finished_at, days_computed, rows_written)
               VALUES (%(mode)s, %(started)s, %(started)s, clock_timestamp(), %(days)s,
                       %(written)s)
               ON CONFLICT (mode) DO UPDATE
               SET watermark = excluded.watermark, started_at = excluded.started_at,
                   finished_at = excluded.finished_at, days_computed = excluded.days_computed,
                   rows_written = excluded.rows_written""",
            {"mode": mode, "started": started, "days": len(days), "written": written},
        )
    return RunResult(
        mode=mode, skipped=False, days_computed=len(days), rows_written=written, started_at=started
    )


def lag_seconds(db: Database) -> float | None:
    """Seconds since the start of the last successful run (any mode); None before the first."""
    with transaction(db) as cur:
        cur.execute(
            "SELECT extract(epoch FROM now() - max(started_at))::float8 AS lag FROM metrics_runs"
        )
        row = cur.fetchone()
    return None if row is None or row["lag"] is None else float(row["lag"])


# ---------------------------------------------------------------- reads (the API)


class DayMetrics(ApiModel):
    """One clinic's day, as pre-calculated (numbers only, never PII)."""

    day: date
    leads_new: int
    leads_by_source: dict[str, int]
    leads_converted: int
    conversion_rate: float | None
    appointments_booked: int
    appointments_cancelled: int
    appointments_completed: int
    appointments_no_show: int
    booked_minutes: int
    working_minutes: int
    utilisation: float | None
    doctors: list[dict[str, Any]]
    assistant_questions: int
    assistant_median_reply_ms: int | None
    notifications_sent: int
    notifications_failed: int
    computed_at: Timestamp


class Freshness(ApiModel):
    """When the numbers were computed (the last metrics run) and how old they are."""

    computed_at: Timestamp | None
    staleness_seconds: int | None


class DailyMetrics(Freshness):
    day_from: date = Field(alias="from")
    day_to: date = Field(alias="to")
    timezone: str
    days: list[DayMetrics]


class Window(ApiModel):
    day_from: date = Field(alias="from")
    day_to: date = Field(alias="to")
    days: int
    days_with_data: int
    leads_new: int
    leads_converted: int
    appointments_booked: int
    appointments_cancelled: int
    appointments_completed: int
    appointments_no_show: int
    booked_minutes: int
    working_minutes: int
    assistant_questions: int
    notifications_sent: int
    notifications_failed: int
    leads_by_source: dict[str, int]
    conversion_rate: float | None
    utilisation: float | None
    # the median of the days' medians (medians of days cannot be merged exactly)
    assistant_median_reply_ms: int | None
    per_day: dict[str, float]


class MetricsSummary(Freshness):
    timezone: str
    today: Window
    last7_days: Window
    last30_days: Window


_DAY_JSON = """jsonb_build_object(
    'day', m.day,
    'leadsNew', m.leads_new,
    'leadsBySource', m.leads_by_source,
    'leadsConverted', m.leads_converted,
    'conversionRate', CASE WHEN m.leads_new > 0
                           THEN round(m.leads_converted::numeric / m.leads_new, 4) END,
    'appointmentsBooked', m.appointments_booked,
    'appointmentsCancelled', m.appointments_cancelled,
    'appointmentsCompleted', m.appointments_completed,
    'appointmentsNoShow', m.appointments_no_show,
    'bookedMinutes', m.booked_minutes,
    'workingMinutes', m.working_minutes,
    'utilisation', CASE WHEN m.working_minutes > 0
                        THEN round(m.booked_minutes::numeric / m.working_minutes, 4) END,
    'doctors', m.doctor_utilisation,
    'assistantQuestions', m.assistant_questions,
    'assistantMedianReplyMs', m.assistant_median_reply_ms,
    'notificationsSent', m.notifications_sent,
    'notificationsFailed', m.notifications_failed,
    'computedAt', m.computed_at)"""

# One round trip: the clinic's today, the freshness, and the rows as JSON built in SQL.
DAILY = f"""
WITH c AS (
    SELECT c.id, c.timezone, (now() AT TIME ZONE c.timezone)::date AS today
    FROM clinics c WHERE c.id = %(clinic_id)s
), r AS (
    SELECT coalesce(%(to)s::date, c.today) AS day_to, c.* FROM c
), w AS (
    SELECT coalesce(%(from)s::date, r.day_to - 29) AS day_from, r.* FROM r
)
SELECT w.day_from, w.day_to, w.today, w.timezone, now() AS now,
       (SELECT max(started_at) FROM metrics_runs) AS computed_at,
       (SELECT coalesce(jsonb_agg({_DAY_JSON} ORDER BY m.day), '[]'::jsonb)
        FROM daily_metrics m
        WHERE m.clinic_id = w.id AND m.day BETWEEN w.day_from AND w.day_to) AS days
FROM w"""


def _freshness(row: dict[str, Any]) -> dict[str, Any]:
    computed_at: datetime | None = row["computed_at"]
    staleness = None
    if computed_at is not None:
        staleness = max(0, int((row["now"] - computed_at).total_seconds()))
    return {"computed_at": computed_at, "staleness_seconds": staleness}


def daily(
    db: Database, *, clinic_id: UUID, day_from: date | None, day_to: date | None
) -> DailyMetrics:
    """The clinic's pre-calculated days in [from, to] (default: the last 30 days)."""
    if day_from is not None and day_to is not None:
        if day_from > day_to:
            raise InvalidInput("from is after to")
        if (day_to - day_from).days >= MAX_RANGE_DAYS:
            raise InvalidInput(f"at most {MAX_RANGE_DAYS} days at once")
    with transaction(db) as cur:
        cur.execute(DAILY, {"clinic_id": clinic_id, "from": day_from, "to": day_to})
        row = cur.fetchone()
    if row is None:
        raise NotFound("no such clinic")
    if row["day_from"] > row["day_to"]:
        raise InvalidInput("from is after to")
    if (row["day_to"] - row["day_from"]).days >= MAX_RANGE_DAYS:
        raise InvalidInput(f"at most {MAX_RANGE_DAYS} days at once")
    return DailyMetrics(
        day_from=row["day_from"],
        day_to=row["day_to"],
        timezone=row["timezone"],
        days=row["days"],
        **_freshness(row),
    )


# Today, the 7 days before today and the 30 days before today, from the daily rows.
SUMMARY = f"""
WITH c AS (
    SELECT c.id, c.timezone, (now() AT TIME ZONE c.timezone)::date AS today
    FROM clinics c WHERE c.id = %(clinic_id)s
), windows AS (
    SELECT w.name, w.length, c.today - w.back AS day_from, c.today - w.skip AS day_to, c.id
    FROM c CROSS JOIN (VALUES ('today', 1, 0, 0), ('last7Days', 7, 7, 1),
                              ('last30Days', 30, 30, 1)) AS w(name, length, back, skip)
), totals AS (
    SELECT w.name, w.length, w.day_from, w.day_to,
           count(m.day)::int AS days_with_data,
           {", ".join(f"coalesce(sum(m.{c}), 0)::int AS {c}" for c in _COUNTS)},
           round(percentile_cont(0.5) WITHIN GROUP (ORDER BY m.assistant_median_reply_ms))::int
               AS assistant_median_reply_ms,
           (SELECT coalesce(jsonb_object_agg(s.key, s.n), '{{}}'::jsonb) FROM (
                SELECT e.key, sum(e.value::int)::int AS n
                FROM daily_metrics d, jsonb_each_text(d.leads_by_source) e
                WHERE d.clinic_id = w.id AND d.day BETWEEN w.day_from AND w.day_to
                GROUP BY e.key) s) AS leads_by_source
    FROM windows w
    LEFT JOIN daily_metrics m ON m.clinic_id = w.id AND m.day BETWEEN w.day_from AND w.day_to
    GROUP BY w.name, w.length, w.day_from, w.day_to, w.id
)
SELECT (SELECT today FROM c) AS today, (SELECT timezone FROM c) AS timezone, now() AS now,
       (SELECT max(started_at) FROM metrics_runs) AS computed_at,
       (SELECT jsonb_object_agg(t.name, to_jsonb(t) - 'name') FROM totals t) AS windows
WHERE EXISTS (SELECT 1 FROM c)"""


def _window(raw: dict[str, Any]) -> Window:
    length = int(raw["length"])
    totals = {c: int(raw[c]) for c in _COUNTS}
    leads, working = totals["leads_new"], totals["working_minutes"]
    return Window(
        day_from=raw["day_from"],
        day_to=raw["day_to"],
        days=length,
        days_with_data=raw["days_with_data"],
        **totals,
        leads_by_source=raw["leads_by_source"],
        conversion_rate=round(totals["leads_converted"] / leads, 4) if leads else None,
        utilisation=round(totals["booked_minutes"] / working, 4) if working else None,
        assistant_median_reply_ms=raw["assistant_median_reply_ms"],
        per_day={
            to_camel(name): round(totals[name] / length, 2)
            for name in ("leads_new", "appointments_booked", "assistant_questions")
        },
    )


def summary(db: Database, *, clinic_id: UUID) -> MetricsSummary:
    """Today against the 7 and the 30 days before it, from the pre-calculated rows."""
    with transaction(db) as cur:
        cur.execute(SUMMARY, {"clinic_id": clinic_id})
        row = cur.fetchone()
    if row is None:
        raise NotFound("no such clinic")
    windows = row["windows"]
    return MetricsSummary(
        timezone=row["timezone"],
        today=_window(windows["today"]),
        last7_days=_window(windows["last7Days"]),
        last30_days=_window(windows["last30Days"]),
        **_freshness(row),
    )
