"""Control-tower metrics against real PostgreSQL and moto: exact numbers on a hand-built
fixture, re-runs that change nothing, runs at once, late changes, clinic isolation, the
dashboard routes' freshness and cache headers, and queue health for operators."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from tests.integration.conftest import App
from tests.support import REPO, LambdaContext, http_event, http_response, load_handler

TZ = "America/New_York"
SUMMARY_COLUMNS = (
    "leads_new, leads_by_source, leads_converted, appointments_booked, appointments_cancelled,"
    " appointments_completed, appointments_no_show, booked_minutes, working_minutes,"
    " doctor_utilisation, assistant_questions, assistant_median_reply_ms, notifications_sent,"
    " notifications_failed, computed_at"
)


def today_in(tz: str) -> date:
    return datetime.now(ZoneInfo(tz)).date()


def local(day: date, hour: int, minute: int = 0, tz: str = TZ) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=ZoneInfo(tz))


def execute(app: App, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with psycopg.connect(app.database_url, autocommit=True) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        for statement in sql.split(";\n"):  # one statement per execute with parameters
            cur.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def add_lead(app: App, clinic: uuid.UUID, source: str, at: datetime) -> uuid.UUID:
    lead = uuid.uuid4()
    execute(
        app,
        """INSERT INTO leads (id, clinic_id, source, consent, name_enc, email_enc, dek,
                              kms_key_id, created_at)
           VALUES (%(id)s, %(clinic)s, %(source)s, true, '\\x00', '\\x00', '\\x00', 'k', %(at)s)""",
        {"id": lead, "clinic": clinic, "source": source, "at": at},
    )
    return lead


def add_patient(app: App, clinic: uuid.UUID, lead: uuid.UUID | None = None) -> uuid.UUID:
    patient = uuid.uuid4()
    execute(
        app,
        """INSERT INTO patients (id, clinic_id, name_enc, email_enc, dek, kms_key_id, lead_id)
           VALUES (%(id)s, %(clinic)s, '\\x01', '\\x01', '\\x01', 'k', %(lead)s)""",
        {"id": patient, "clinic": clinic, "lead": lead},
    )
    return patient


def add_doctor(app: App, clinic: uuid.UUID, start: str, end: str) -> uuid.UUID:
    doctor = uuid.uuid4()
    execute(
        app,
        """INSERT INTO doctors (id, clinic_id, name, slot_minutes) VALUES (%(id)s, %(c)s, 'Dr', 30);
           INSERT INTO doctor_working_hours (clinic_id, doctor_id, weekday, starts_at, ends_at)
           SELECT %(c)s, %(id)s, d, %(start)s, %(end)s FROM generate_series(1, 7) d""",
        {"id": doctor, "c": clinic, "start": start, "end": end},
    )
    return doctor


def add_appointment(
    app: App,
    clinic: uuid.UUID,
    doctor: uuid.UUID,
    patient: uuid.UUID,
    starts: datetime,
    minutes: int,
    status: str = "booked",
) -> uuid.UUID:
    appointment = uuid.uuid4()
    execute(
        app,
        """INSERT INTO appointments (id, clinic_id, doctor_id, patient_id, starts_at, ends_at,
                                     status, source, doctor_name, patient_name_enc, patient_dek)
           VALUES (%(id)s, %(c)s, %(d)s, %(p)s, %(s)s, %(e)s, %(status)s, 'staff', '', '', '')""",
        {
            "id": appointment,
            "c": clinic,
            "d": doctor,
            "p": patient,
            "s": starts,
            "e": starts + timedelta(minutes=minutes),
            "status": status,
        },
    )
    return appointment


def add_conversation(app: App, clinic: uuid.UUID, asked: datetime, replies: list[Any]) -> None:
    """One question per reply: ("done", ms) answered after ms, ("failed", None) failed."""
    conversation = uuid.uuid4()
    execute(
        app,
        "INSERT INTO conversations (id, clinic_id) VALUES (%(id)s, %(c)s)",
        {"id": conversation, "c": clinic},
    )
    for status, ms in replies:
        question, reply, job = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        execute(
            app,
            """INSERT INTO jobs (id, clinic_id, kind) VALUES (%(job)s, %(c)s, 'assistant.reply');
               INSERT INTO messages (id, clinic_id, conversation_id, role, content, status,
                                     created_at)
               VALUES (%(q)s, %(c)s, %(conv)s, 'user', 'hi', 'done', %(at)s);
               INSERT INTO messages (id, clinic_id, conversation_id, role, status, reply_to,
                                     job_id, created_at, completed_at)
               VALUES (%(r)s, %(c)s, %(conv)s, 'assistant', %(status)s, %(q)s, %(job)s, %(at)s,
                       %(done)s)""",
            {
                "job": job,
                "c": clinic,
                "q": question,
                "r": reply,
                "conv": conversation,
                "at": asked,
                "status": status,
                "done": asked + timedelta(milliseconds=ms) if ms is not None else None,
            },
        )


def add_notification(app: App, clinic: uuid.UUID, status: str, at: datetime) -> None:
    execute(
        app,
        """INSERT INTO notification_deliveries (notification_id, clinic_id, channel, status,
                                                created_at)
           VALUES (%(id)s, %(c)s, 'email', %(status)s, %(at)s)""",
        {"id": str(uuid.uuid4()), "c": clinic, "status": status, "at": at},
    )


class Fixture:
    """The hand-built day: three days ago in the clinic's time zone (America/New_York)."""

    def __init__(self, app: App) -> None:
        self.app = app
        execute(
            app,
            "UPDATE clinics SET timezone = %(tz)s WHERE id = %(id)s",
            {"tz": TZ, "id": app.clinic_id},
        )
        self.day = today_in(TZ) - timedelta(days=3)
        day, clinic = self.day, app.clinic_id
        # Leads: 3 web + 1 google that day (one at 00:30 local, 04:30/05:30 UTC); one the
        # evening before (23:30 local, already the next day in UTC); one web lead converted.
        converted = add_lead(app, clinic, "web", local(day, 0, 30))
        add_lead(app, clinic, "web", local(day, 12))
        add_lead(app, clinic, "web", local(day, 23, 59))
        add_lead(app, clinic, "google", local(day, 15))
        add_lead(app, clinic, "google", local(day - timedelta(days=1), 23, 30))
        add_patient(app, clinic, converted)
        patient = add_patient(app, clinic)
        # Doctors: A works 09-17 (480 min), B 09-13 (240 min), every day.
        self.doctor_a = add_doctor(app, clinic, "09:00", "17:00")
        self.doctor_b = add_doctor(app, clinic, "09:00", "13:00")
        a, b = self.doctor_a, self.doctor_b
        add_appointment(app, clinic, a, patient, local(day, 9), 30, "booked")
        add_appointment(app, clinic, a, patient, local(day, 10), 30, "completed")
        add_appointment(app, clinic, a, patient, local(day, 11), 30, "no_show")
        add_appointment(app, clinic, a, patient, local(day, 12), 30, "cancelled")
        add_appointment(app, clinic, b, patient, local(day, 9), 60, "completed")
        # Assistant: 3 questions; replies after 1 s and 3 s, one failed -> median 2000 ms.
        add_conversation(app, clinic, local(day, 14), [("done", 1000), ("done", 3000)])
        add_conversation(app, clinic, local(day, 16), [("failed", None)])
        # Notifications: 2 sent, 1 failed, 1 still sending (neither).
        for status in ("sent", "sent", "failed", "sending"):
            add_notification(app, clinic, status, local(day, 13))
        # The other clinic (UTC) the same day: one lead, one 45-minute booked appointment.
        other = app.other_clinic_id
        other_doctor = add_doctor(app, other, "08:00", "12:00")
        other_patient = add_patient(app, other)
        add_lead(app, other, "referral", local(day, 12, tz="UTC"))
        add_appointment(app, other, other_doctor, other_patient, local(day, 9, tz="UTC"), 45)

    def row(self, clinic: uuid.UUID | None = None, day: date | None = None) -> dict[str, Any]:
        rows = execute(
            self.app,
            f"SELECT {SUMMARY_COLUMNS} FROM daily_metrics WHERE clinic_id = %(c)s AND day = %(d)s",
            {"c": clinic or self.app.clinic_id, "d": day or self.day},
        )
        assert len(rows) == 1, rows
        return rows[0]


@pytest.fixture
def fixture(app: App) -> Fixture:
    return Fixture(app)


def run(mode: str) -> Any:
    from frontdesk.dashboard import daily_metrics as metrics
    from frontdesk.services import get_services

    return metrics.run(get_services().database, mode)  # type: ignore[arg-type]


def all_rows(app: App) -> list[dict[str, Any]]:
    return execute(
        app, f"SELECT clinic_id, day, {SUMMARY_COLUMNS} FROM daily_metrics ORDER BY 1, 2"
    )


EXPECTED_NUMBERS = {
    "leads_new": 4,
    "leads_by_source": {"web": 3, "google": 1},
    "leads_converted": 1,
    "appointments_booked": 1,
    "appointments_cancelled": 1,
    "appointments_completed": 2,
    "appointments_no_show": 1,
    "booked_minutes": 150,
    "working_minutes": 720,
    "assistant_questions": 3,
    "assistant_median_reply_ms": 2000,
    "notifications_sent": 2,
    "notifications_failed": 1,
}


def test_every_metric_exact_on_a_hand_built_day_and_clinics_do_not_mix(
    app: App, fixture: Fixture
) -> None:
    # Given the hand-built day of two clinics / When the nightly full run computes
    result = run("full")
    # Then every clinic gets its last 35 days
    assert not result.skipped and result.days_computed == 2 * 35
    row = fixture.row()
    # And every number of the day is exact
    assert {k: row[k] for k in EXPECTED_NUMBERS} == EXPECTED_NUMBERS
    expected_doctors = sorted(
        [
            {
                "doctorId": str(fixture.doctor_a),
                "bookedMinutes": 90,
                "workingMinutes": 480,
                "utilisation": 0.1875,
            },
            {
                "doctorId": str(fixture.doctor_b),
                "bookedMinutes": 60,
                "workingMinutes": 240,
                "utilisation": 0.25,
            },
        ],
        key=lambda d: str(d["doctorId"]),
    )
    assert row["doctor_utilisation"] == expected_doctors
    # And the evening lead before counts on its own local day, not on the UTC one
    before = fixture.row(day=fixture.day - timedelta(days=1))
    assert (before["leads_new"], before["leads_by_source"]) == (1, {"google": 1})
    # And the other clinic's day holds only its own rows
    other = fixture.row(app.other_clinic_id)
    assert (other["leads_new"], other["leads_by_source"]) == (1, {"referral": 1})
    assert (other["appointments_booked"], other["booked_minutes"]) == (1, 45)
    assert other["working_minutes"] == 240
    assert (other["assistant_questions"], other["notifications_sent"]) == (0, 0)


def test_a_rerun_changes_nothing(app: App, fixture: Fixture) -> None:
    # Given a full run and a recent run
    run("full")
    run("recent")
    before = all_rows(app)
    # When both run again with nothing changed
    full, recent = run("full"), run("recent")
    # Then no row is written, not even its computed_at
    assert (full.rows_written, recent.rows_written) == (0, 0)
    assert all_rows(app) == before


def test_a_run_while_another_holds_the_lock_skips_and_two_at_once_agree(
    app: App, fixture: Fixture
) -> None:
    from frontdesk.dashboard import daily_metrics as metrics
    from frontdesk.platform.db import PooledDatabase

    # Given another run holding the lock
    with psycopg.connect(app.database_url) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (metrics._LOCK_ID,))
        # When a run starts / Then it skips at once and writes nothing
        assert run("full").skipped is True
        assert all_rows(app) == []
    # Given two runs started together on their own connections
    pool = PooledDatabase(app.database_url, max_size=2)
    barrier = threading.Barrier(2)
    results: list[Any] = []

    def one() -> None:
        barrier.wait()
        results.append(metrics.run(pool, "full"))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pool.close()
    # Then at least one ran, and the numbers are the same as one run's
    assert len(results) == 2 and any(not r.skipped for r in results)
    assert len(all_rows(app)) == 2 * 35
    assert {k: fixture.row()[k] for k in EXPECTED_NUMBERS} == EXPECTED_NUMBERS


def test_a_late_change_to_yesterday_and_to_an_older_day_is_picked_up_by_the_next_run(
    app: App, fixture: Fixture
) -> None:
    # Given the nightly run and a recent run after it
    run("full")
    run("recent")
    yesterday = today_in(TZ) - timedelta(days=1)
    assert fixture.row(day=yesterday)["appointments_booked"] == 0
    # When yesterday gets a late booking and the fixture day's booked visit is completed
    patient = add_patient(app, app.clinic_id)
    add_appointment(app, app.clinic_id, fixture.doctor_b, patient, local(yesterday, 10), 30)
    execute(
        app,
        """UPDATE appointments SET status = 'completed'
           WHERE clinic_id = %(c)s AND status = 'booked'
             AND starts_at < %(before)s""",
        {"c": app.clinic_id, "before": local(yesterday, 0)},
    )
    result = run("recent")
    # Then the next recent run recomputes both days (and writes only what changed)
    assert result.rows_written == 2
    late = fixture.row(day=yesterday)
    assert (late["appointments_booked"], late["booked_minutes"]) == (1, 30)
    older = fixture.row()
    assert (older["appointments_booked"], older["appointments_completed"]) == (0, 3)
    # And the other clinic's rows were not rewritten
    other = fixture.row(app.other_clinic_id)
    assert other["computed_at"] < older["computed_at"]


def test_a_provider_update_to_an_old_lead_is_picked_up_by_the_next_run(
    app: App, fixture: Fixture
) -> None:
    # Given computed metrics, and an old lead whose source a provider sync then corrects
    run("full")
    run("recent")
    before = fixture.row()["leads_by_source"]
    execute(
        app,
        """UPDATE leads SET source = 'corrected', updated_at = now()
           WHERE clinic_id = %(c)s AND created_at = %(at)s""",
        {"c": app.clinic_id, "at": local(fixture.day, 15)},
    )
    # When the next recent run comes / Then the lead's own day shows the new source
    run("recent")
    after = fixture.row()["leads_by_source"]
    assert before == {"web": 3, "google": 1}
    assert after == {"web": 3, "corrected": 1}


# ---------------------------------------------------------------- the routes


def get(
    api: Any,
    path: str,
    clinic: uuid.UUID,
    *,
    query: str = "",
    roles: str = "[staff]",
    **headers: str,
) -> tuple[int, dict[str, str], Any]:
    event = http_event("GET", path, clinic_id=clinic, headers=headers, query=query)
    event["requestContext"]["authorizer"]["jwt"]["claims"]["roles"] = roles
    if query:
        event["queryStringParameters"] = dict(p.split("=", 1) for p in query.split("&"))
    return http_response(api.handler(event, LambdaContext()))


def test_dashboard_routes_read_rows_with_freshness_and_cache_headers(
    app: App, fixture: Fixture, api: Any
) -> None:
    # Given no run yet / When the dashboard is read / Then it says so and is not cached
    status, headers, body = get(api, "/metrics/summary", app.clinic_id)
    assert status == 200
    assert body["data"]["computedAt"] is None and body["data"]["stalenessSeconds"] is None
    assert headers["cache-control"] == "private, max-age=0"
    # Given a full run
    run("full")
    day = fixture.day.isoformat()
    # When the clinic reads its days around the fixture day
    query = f"from={(fixture.day - timedelta(days=1)).isoformat()}&to={day}"
    status, headers, body = get(api, "/metrics/daily", app.clinic_id, query=query)
    # Then it gets those two rows, the run's time and the staleness
    assert status == 200, body
    data = body["data"]
    assert [d["day"] for d in data["days"]] == [(fixture.day - timedelta(days=1)).isoformat(), day]
    fixed = data["days"][1]
    assert fixed["leadsNew"] == 4 and fixed["leadsBySource"] == {"web": 3, "google": 1}
    assert fixed["conversionRate"] == 0.25 and fixed["utilisation"] == 0.2083
    assert fixed["appointmentsNoShow"] == 1 and fixed["assistantMedianReplyMs"] == 2000
    assert data["timezone"] == TZ and data["computedAt"] is not None
    assert 0 <= data["stalenessSeconds"] <= 300
    # And it may be cached until the next run is due, and revalidated by its ETag
    assert headers["cache-control"] == f"private, max-age={300 - data['stalenessSeconds']}"
    status, again, _ = get(
        api, "/metrics/daily", app.clinic_id, query=query, **{"if-none-match": headers["etag"]}
    )
    assert status == 304 and again["etag"] == headers["etag"]
    # When the summary is read / Then the fixture day is in the last 7 and 30 days
    status, _, summary = get(api, "/metrics/summary", app.clinic_id)
    assert status == 200
    week = summary["data"]["last7Days"]
    # (with the evening lead of the day before)
    assert (week["days"], week["leadsNew"], week["leadsBySource"]) == (
        7,
        5,
        {"web": 3, "google": 2},
    )
    assert week["appointmentsCompleted"] == 2 and week["conversionRate"] == 0.2
    assert summary["data"]["last30Days"]["leadsNew"] == 5
    assert summary["data"]["today"]["leadsNew"] == 0
    # And the other clinic reads only its own numbers
    _, _, other = get(api, "/metrics/daily", app.other_clinic_id, query=f"from={day}&to={day}")
    assert [(d["leadsNew"], d["leadsBySource"]) for d in other["data"]["days"]] == [
        (1, {"referral": 1})
    ]


def test_daily_range_is_checked(app: App, api: Any) -> None:
    # Given a range backwards and one over a year / When read / Then 422 each
    for query in ("from=2026-02-01&to=2026-01-01", "from=2024-01-01&to=2026-01-01"):
        status, headers, body = get(api, "/metrics/daily", app.clinic_id, query=query)
        assert status == 422, body
        assert headers["content-type"] == "application/problem+json"


def test_metrics_function_runs_the_mode_of_its_schedule_and_emits_the_lag(
    app: App, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given MetricsFunction's handler and its two schedules' inputs
    handler = load_handler("metrics")
    nightly = json.loads(
        app.stack.template["Resources"]["MetricsFunction"]["Properties"]["Events"]["Nightly"][
            "Properties"
        ]["Input"]
    )
    # When the nightly input fires, then the sample event (the recent one)
    full = handler.handler(nightly, LambdaContext())
    recent = handler.handler(
        json.loads((REPO / "events" / "metrics.json").read_text()), LambdaContext()
    )
    # Then the nightly run computes 35 days per clinic; the first recent run checks today and
    # yesterday of both clinics and finds nothing to write
    assert (full["mode"], full["daysComputed"], full["rowsWritten"]) == ("full", 70, 70)
    assert (recent["mode"], recent["daysComputed"], recent["rowsWritten"]) == ("recent", 4, 0)
    # And each run emits the dashboard's lag as an EMF metric in the Frontdesk namespace
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "_aws" in line]
    lags = [e for e in emitted if "DashboardLagSeconds" in e]
    assert len(lags) == 2
    assert lags[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Frontdesk"
    assert 0 <= lags[0]["DashboardLagSeconds"][0] < 60


def test_queue_health_for_operators_only(app: App, ops: Any) -> None:
    # Given two messages on the notifications queue, one of them received (in flight), and
    # one message on its DLQ
    sqs = app.sqs()
    queue, dlq = app.queue_url("NotificationsQueue"), app.queue_url("NotificationsDLQ")
    sqs.send_message(QueueUrl=queue, MessageBody="{}")
    sqs.send_message(QueueUrl=queue, MessageBody="{}")
    sqs.send_message(QueueUrl=dlq, MessageBody="{}")
    sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=1, VisibilityTimeout=300)
    # When staff, or a clinic's admin, ask / Then 403: queues are every clinic's
    for roles in ("[staff]", "[staff admin]"):
        status, _, body = get(ops, "/ops/queues", app.clinic_id, roles=roles)
        assert status == 403, body
    # When an operator asks
    status, headers, body = get(ops, "/ops/queues", app.clinic_id, roles="[staff operator]")
    # Then every configured queue is listed with its depth, in-flight count and DLQ depth
    assert status == 200, body
    queues = {q["name"]: q for q in body["data"]["queues"]}
    assert set(queues) == {"notifications", "llm", "sync", "push", "webhooks"}
    notifications = queues["notifications"]
    assert (notifications["depth"], notifications["inFlight"], notifications["dlqDepth"]) == (
        1,
        1,
        1,
    )
    assert (queues["llm"]["depth"], queues["llm"]["dlqDepth"]) == (0, 0)
    # And the age of the oldest message is null with the reason (SQS does not report it)
    assert notifications["ageOfOldestMessageSeconds"] is None
    assert "ApproximateAgeOfOldestMessage" in notifications["ageNote"]
    assert headers["cache-control"] == "no-store"
