"""Dashboard benchmark: `python -m bench.metrics`.

Generates two years for 20 clinics directly in PostgreSQL with set-based SQL (1,000,000
appointments, 200,000 leads, 40,000 patients, 20,000 assistant questions, 200,000
notifications), then side by side in one run:
1. the dashboard read (GET /metrics/summary) through ApiFunction's handler and as the bare
   query, p50/p99;
2. the same summary computed on demand from raw rows (the aggregate over the clinic's last
   31 days), and the whole history on demand (every clinic, every day: 1M appointments);
3. fetch-all-and-loop: one clinic's rows fetched to Python and counted per day in a loop,
   extrapolated to 20 clinics (labelled so);
4. MetricsFunction's runs: a 5-minute incremental run after a few changes, and the nightly
   35-day re-check.
Results: bench/results/metrics.json and .md. Nothing here asserts a timing.
"""

from __future__ import annotations

import platform
import statistics
import time
import uuid
from collections import defaultdict
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

CLINICS = 20
DOCTORS_PER_CLINIC = 5
DAYS = 730
READS = 300

GENERATE = [
    # 20 clinics in four time zones, 5 doctors each working 08:00-18:00 every day.
    """INSERT INTO clinics (id, name, timezone)
       SELECT md5('c' || c)::uuid, 'Clinic ' || c,
              (ARRAY['UTC', 'America/New_York', 'Europe/Berlin', 'Asia/Tokyo'])[1 + c % 4]
       FROM generate_series(1, 20) c""",
    """INSERT INTO doctors (id, clinic_id, name, slot_minutes)
       SELECT md5('d' || c || '-' || k)::uuid, md5('c' || c)::uuid, 'Dr ' || k, 30
       FROM generate_series(1, 20) c, generate_series(1, 5) k""",
    """INSERT INTO doctor_working_hours (clinic_id, doctor_id, weekday, starts_at, ends_at)
       SELECT md5('c' || c)::uuid, md5('d' || c || '-' || k)::uuid, w, '08:00', '18:00'
       FROM generate_series(1, 20) c, generate_series(1, 5) k, generate_series(1, 7) w""",
    # 200,000 leads over two years, four sources.
    """INSERT INTO leads (id, clinic_id, source, consent, name_enc, email_enc, dek, kms_key_id,
                          created_at)
       SELECT gen_random_uuid(), md5('c' || (1 + i % 20))::uuid,
              (ARRAY['web', 'google', 'facebook', 'referral'])[1 + (i / 20) % 4], true,
              '\\x00', '\\x00', '\\x00', 'k', now() - interval '730 days' * random()
       FROM generate_series(1, 200000) i""",
    # 2,000 patients per clinic, each converted from one of its leads a day later.
    """INSERT INTO patients (id, clinic_id, name_enc, email_enc, dek, kms_key_id, lead_id,
                             created_at)
       SELECT md5('p' || clinic_id || '-' || rn)::uuid, clinic_id, '\\x00', '\\x00', '\\x00',
              'k', id, created_at + interval '1 day'
       FROM (SELECT l.*, row_number() OVER (PARTITION BY clinic_id ORDER BY id) AS rn
             FROM leads l) l
       WHERE rn <= 2000""",
    # ~1,000,000 appointments: 100 doctors x 730 days x 20 half-hour slots, 68.5 % taken.
    "ALTER TABLE appointments DISABLE TRIGGER USER",
    "ALTER TABLE appointments DROP CONSTRAINT appointments_no_overlap",
    """INSERT INTO appointments (id, clinic_id, doctor_id, patient_id, starts_at, ends_at,
                                 status, source, doctor_name, patient_name_enc, patient_dek,
                                 created_at, updated_at)
       SELECT gen_random_uuid(), md5('c' || c)::uuid, md5('d' || c || '-' || k)::uuid,
              md5('p' || md5('c' || c)::uuid || '-' || (1 + (d * 20 + s + k) % 2000))::uuid,
              t, t + interval '30 minutes',
              CASE WHEN t > now() THEN 'booked'
                   WHEN r < 0.80 THEN 'completed' WHEN r < 0.88 THEN 'no_show'
                   WHEN r < 0.95 THEN 'cancelled' ELSE 'booked' END,
              'staff', 'Dr', '\\x00', '\\x00', t - interval '7 days', t - interval '7 days'
       FROM generate_series(1, 20) c, generate_series(1, 5) k, generate_series(0, 729) d,
            generate_series(0, 19) s,
            LATERAL (SELECT date_trunc('day', now()) - d * interval '1 day'
                            + interval '8 hours' + s * interval '30 minutes' AS t,
                            random() AS r, random() AS keep) x
       WHERE keep < 0.685""",
    """ALTER TABLE appointments ADD CONSTRAINT appointments_no_overlap EXCLUDE USING gist (
           doctor_id WITH =, tstzrange(starts_at, ends_at) WITH &&)
           WHERE (status <> 'cancelled')""",
    "ALTER TABLE appointments ENABLE TRIGGER USER",
    # 20,000 assistant questions (one conversation per clinic), replies after 0.5-5 s.
    """INSERT INTO conversations (id, clinic_id) SELECT md5('c' || c)::uuid, md5('c' || c)::uuid
       FROM generate_series(1, 20) c""",
    """INSERT INTO jobs (id, clinic_id, kind)
       SELECT md5('j' || i)::uuid, md5('c' || (1 + i % 20))::uuid, 'assistant.reply'
       FROM generate_series(1, 20000) i""",
    """INSERT INTO messages (id, clinic_id, conversation_id, role, status, job_id, created_at,
                             completed_at)
       SELECT md5('m' || i)::uuid, md5('c' || (1 + i % 20))::uuid, md5('c' || (1 + i % 20))::uuid,
              'assistant', 'done', md5('j' || i)::uuid, t,
              t + interval '1 millisecond' * (500 + 4500 * random())
       FROM generate_series(1, 20000) i,
            LATERAL (SELECT now() - interval '730 days' * random() AS t) x""",
    """INSERT INTO messages (id, clinic_id, conversation_id, role, status, content, created_at)
       SELECT gen_random_uuid(), clinic_id, conversation_id, 'user', 'done', 'q', created_at
       FROM messages WHERE role = 'assistant'""",
    # 200,000 notifications, 5 % failed.
    """INSERT INTO notification_deliveries (notification_id, clinic_id, channel, status,
                                            created_at)
       SELECT 'n' || i, md5('c' || (1 + i % 20))::uuid, 'email',
              CASE WHEN random() < 0.95 THEN 'sent' ELSE 'failed' END,
              now() - interval '730 days' * random()
       FROM generate_series(1, 200000) i""",
    # History is old: rows look written when they were created (no trigger moves these
    # timestamps to now), and no patient is converted in the future. Otherwise every day
    # would look changed to the incremental run.
    "SET session_replication_role = replica",
    "UPDATE leads SET updated_at = created_at",
    "UPDATE messages SET updated_at = created_at",
    "UPDATE notification_deliveries SET updated_at = created_at",
    "UPDATE patients SET created_at = least(created_at, now() - interval '1 hour')",
    "SET session_replication_role = origin",
    "ANALYZE",
]


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.2f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def main() -> None:
    from frontdesk.dashboard import daily_metrics as metrics
    from frontdesk.services import get_services
    from tests.support import LambdaContext, http_event, http_response, load_handler

    pg = start_postgres()
    moto = start_moto()
    report = Report()
    details: dict[str, Any] = {}
    try:
        url = pg.fresh_database("bench_metrics")
        export_stack(moto, url)
        log("generating two years for 20 clinics in PostgreSQL")
        started = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in GENERATE:
                conn.execute(statement)  # type: ignore[arg-type]
            counts = conn.execute(
                """SELECT (SELECT count(*) FROM appointments), (SELECT count(*) FROM leads),
                          (SELECT count(*) FROM messages), (SELECT count(*) FROM patients)"""
            ).fetchone()
        generate_s = time.perf_counter() - started
        assert counts is not None
        details["rows"] = dict(
            zip(("appointments", "leads", "messages", "patients"), counts, strict=True)
        )
        log(f"generated {details['rows']} in {generate_s:.1f} s")
        database = get_services().database
        clinic = uuid.UUID(
            psycopg.connect(url).execute("SELECT md5('c1')::uuid").fetchone()[0].hex  # type: ignore[index]
        )

        # The whole history on demand: every clinic-day from raw rows (also the backfill).
        with psycopg.connect(url, autocommit=True) as conn:
            targets = conn.execute(
                """SELECT c.id, d::date FROM clinics c, generate_series(
                       (now() AT TIME ZONE c.timezone)::date - 729,
                       (now() AT TIME ZONE c.timezone)::date, interval '1 day') d"""
            ).fetchall()
            conn.execute(f"SET statement_timeout = {600_000}")
            ids, days = [t[0] for t in targets], [t[1] for t in targets]
            all_history = timed(
                lambda: conn.execute(
                    metrics.AGGREGATE, {"clinic_ids": ids, "days": days}
                ).fetchall(),
                2,
            )
            with conn.transaction():
                started = time.perf_counter()
                metrics.compute(conn.cursor(row_factory=psycopg.rows.dict_row), ids, days)
                backfill_s = time.perf_counter() - started
        log(f"whole history on demand: {min(all_history):.2f} s; backfill {backfill_s:.2f} s")

        # MetricsFunction: the nightly re-check, then a recent run after a few changes.
        full = timed(lambda: metrics.run(database, "full"), 3)
        metrics.run(database, "recent")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                """UPDATE appointments SET status = 'completed'
                   WHERE id IN (SELECT id FROM appointments
                                WHERE starts_at < now() AND status = 'booked' LIMIT 50)"""
            )
            conn.execute(
                """INSERT INTO leads (id, clinic_id, source, consent, name_enc, email_enc, dek,
                                      kms_key_id)
                   SELECT gen_random_uuid(), id, 'web', true, '\\x00', '\\x00', '\\x00', 'k'
                   FROM clinics"""
            )
        started = time.perf_counter()
        recent_result = metrics.run(database, "recent")
        recent_s = time.perf_counter() - started
        quiet = timed(lambda: metrics.run(database, "recent"), 3)

        # The dashboard read: through the handler and as the bare query.
        api = load_handler("api")
        event = http_event("GET", "/metrics/summary", clinic_id=clinic)
        with stdout_to_devnull():
            status = http_response(api.handler(event, LambdaContext()))[0]
            assert status == 200, status
            handler_reads = timed(lambda: api.handler(event, LambdaContext()), READS)
        with psycopg.connect(url, autocommit=True) as conn:
            bare_reads = timed(
                lambda: conn.execute(metrics.SUMMARY, {"clinic_id": clinic}).fetchone(), READS
            )
            # The same summary on demand: the aggregate over the clinic's last 31 days.
            recent_days = conn.execute(
                """SELECT d::date FROM clinics c, generate_series(
                       (now() AT TIME ZONE c.timezone)::date - 30,
                       (now() AT TIME ZONE c.timezone)::date, interval '1 day') d
                   WHERE c.id = %s""",
                (clinic,),
            ).fetchall()
            clinic_days = [r[0] for r in recent_days]
            on_demand = timed(
                lambda: conn.execute(
                    metrics.AGGREGATE,
                    {"clinic_ids": [clinic] * len(clinic_days), "days": clinic_days},
                ).fetchall(),
                30,
            )

            # Fetch all and loop: one clinic's two years to Python, counted per day.
            def fetch_and_loop() -> int:
                per_day: dict[Any, dict[str, int]] = defaultdict(lambda: defaultdict(int))
                for starts_at, ends_at, status in conn.execute(
                    "SELECT starts_at, ends_at, status FROM appointments WHERE clinic_id = %s",
                    (clinic,),
                ):
                    bucket = per_day[starts_at.date()]
                    bucket[status] += 1
                    if status != "cancelled":
                        bucket["minutes"] += int((ends_at - starts_at).total_seconds() // 60)
                for created_at, source in conn.execute(
                    "SELECT created_at, source FROM leads WHERE clinic_id = %s", (clinic,)
                ):
                    per_day[created_at.date()][source] += 1
                for created_at, status in conn.execute(
                    "SELECT created_at, status FROM notification_deliveries WHERE clinic_id = %s",
                    (clinic,),
                ):
                    per_day[created_at.date()][status] += 1
                return len(per_day)

            loop_one = min(timed(fetch_and_loop, 2))
        loop_all = loop_one * CLINICS

        handler = latency_summary(handler_reads)
        bare = latency_summary(bare_reads)
        demand = latency_summary(on_demand)
        history_s = statistics.median(all_history)
        report.add(
            Row(
                "dashboard read: GET /metrics/summary through ApiFunction's handler",
                f"p50 {handler['p50_ms']} ms, p99 {handler['p99_ms']} ms",
            )
        )
        report.add(
            Row(
                "dashboard read: the bare summary query (pre-calculated rows)",
                f"p50 {bare['p50_ms']} ms, p99 {bare['p99_ms']} ms",
                f"same numbers on demand from raw rows (one clinic, 31 days): "
                f"p50 {demand['p50_ms']} ms, p99 {demand['p99_ms']} ms",
                f"{demand['p50_ms'] / bare['p50_ms']:,.0f}x",
            )
        )
        report.add(
            Row(
                "dashboard read (bare query) vs aggregating all 1M appointments on demand",
                f"p50 {bare['p50_ms']} ms",
                f"every clinic, every day, from raw rows: {ms(history_s)}",
                f"{history_s * 1000 / bare['p50_ms']:,.0f}x",
                ">= 1,000x",
            )
        )
        report.add(
            Row(
                "dashboard read through the handler vs aggregating 1M appointments on demand",
                f"p50 {handler['p50_ms']} ms",
                f"{ms(history_s)}",
                f"{history_s * 1000 / handler['p50_ms']:,.0f}x",
                ">= 1,000x",
            )
        )
        report.add(
            Row(
                "fetch-all-and-loop in Python (one clinic measured, x20 extrapolated)",
                f"one clinic: {ms(loop_one)}; 20 clinics (extrapolated): {ms(loop_all)}",
                f"set-based aggregate, all clinics: {ms(history_s)}",
                f"{loop_all / history_s:,.1f}x slower",
            )
        )
        report.add(
            Row(
                "MetricsFunction 5-minute incremental run after 50 status changes + 20 leads",
                f"{ms(recent_s)} ({recent_result.days_computed} days computed, "
                f"{recent_result.rows_written} rows written)",
                f"nothing changed: {ms(statistics.median(quiet))}",
            )
        )
        report.add(
            Row(
                "MetricsFunction nightly 35-day re-check (20 clinics, 700 days)",
                f"{ms(statistics.median(full))}",
                f"full two-year backfill (14,600 days): {ms(backfill_s)}",
            )
        )
        details.update(
            {
                "generate_s": round(generate_s, 1),
                "handler_read": handler,
                "bare_read": bare,
                "on_demand_one_clinic_31_days": demand,
                "on_demand_all_history_s": [round(s, 3) for s in all_history],
                "fetch_and_loop_one_clinic_s": round(loop_one, 3),
                "fetch_and_loop_20_clinics_extrapolated_s": round(loop_all, 3),
                "recent_run_s": round(recent_s, 4),
                "recent_run": recent_result.as_dict(),
                "recent_run_nothing_changed_s": [round(s, 4) for s in quiet],
                "full_run_s": [round(s, 3) for s in full],
                "backfill_s": round(backfill_s, 2),
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
        f"Rows: {details['rows']}, generated in {details['generate_s']} s. "
        f"PostgreSQL {details['postgres']}, Python {details['python']}."
    )
    print(write_results("metrics", "Metrics benchmark", report, notes=[note], details=details))


if __name__ == "__main__":
    main()
