"""Benchmark of the lead inbox: `python -m bench.inbox` (`make bench`).

Loads 100,000 leads of one clinic (and 20,000 of another, so the indexes hold other
tenants too) straight into PostgreSQL with COPY, encrypted as the product stores them
(AES-256-GCM per field under a KMS data key, HMAC blind indexes of email and phone), with
statuses, sources, assignees and creation times spread over a year. Then, through
ApiFunction's real handler (Mangum + FastAPI + the query + decrypting the page), p50/p99 of:
1. GET /leads, the first page (25), and a page 90,000 rows deep (its cursor);
2. a page filtered by status, by assignee, by source;
3. search by email and by phone (the blind index), each a different address;
next to the page's bare SQL (psycopg, no HTTP, no decryption) and to a search that decrypts
the clinic's table instead of using the blind index (what the index saves), in the same run.
Results: bench/results/inbox.json and bench/results/inbox.md. Nothing asserts a timing.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench.common import (
    Report,
    Row,
    export_stack,
    latency_summary,
    log,
    postgres_and_moto,
    run_meta,
    seed_clinic,
    stdout_to_devnull,
    write_results,
)

LEADS = 100_000
OTHER_CLINIC_LEADS = 20_000
READS = 300
WARMUP = 20
DECRYPT_SCANS = 3
STATUSES = ["new"] * 6 + ["contacted"] * 2 + ["booked", "lost"]
SOURCES = ["web_form"] * 5 + ["csv_import"] * 3 + ["ads", "referral"]
STAFF = [f"staff-{n}" for n in range(5)]


def load_leads(database_url: str, clinic_id: uuid.UUID, count: int, seed: int) -> None:
    """`count` encrypted leads of the clinic by COPY (one data key for the load, as an
    import chunk has): name, email and phone encrypted, both blind indexes."""
    from frontdesk.platform.crypto import field_aad
    from frontdesk.services import get_services

    services = get_services()
    key = services.cipher.data_key()
    encrypt = services.cipher.encryptor(key)
    blind = services.blind_index
    rnd = random.Random(seed)
    now = datetime.now(UTC)
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        with cur.copy(
            """COPY leads (id, clinic_id, source, consent, name_enc, email_enc, phone_enc, dek,
                           kms_key_id, email_bidx, phone_bidx, status, assigned_to,
                           created_at, updated_at) FROM STDIN"""
        ) as copy:
            for i in range(count):
                lead_id = uuid.UUID(int=rnd.getrandbits(128), version=4)
                email = f"person{seed}-{i}@example.org"
                phone = f"+1 555 {seed}{i:07d}"
                created = now - timedelta(seconds=rnd.uniform(0, 365 * 86400))
                copy.write_row(
                    (
                        lead_id,
                        clinic_id,
                        rnd.choice(SOURCES),
                        True,
                        encrypt(f"Person {i}", field_aad("leads", lead_id, "name")),
                        encrypt(email, field_aad("leads", lead_id, "email")),
                        encrypt(phone, field_aad("leads", lead_id, "phone")),
                        key.encrypted,
                        key.kms_key_id,
                        blind.email(email),
                        blind.phone(phone),
                        rnd.choice(STATUSES),
                        rnd.choice(STAFF) if rnd.random() < 0.3 else None,
                        created,
                        created,
                    )
                )
        conn.commit()
        conn.execute("ANALYZE leads")
        conn.commit()


def timed(call: Callable[[int], Any], n: int) -> list[float]:
    for i in range(WARMUP):
        call(i)
    seconds = []
    for i in range(n):
        started = time.perf_counter()
        call(i)
        seconds.append(time.perf_counter() - started)
    return seconds


def interleaved(calls: dict[str, Callable[[int], Any]], n: int) -> dict[str, list[float]]:
    for i in range(WARMUP):
        for call in calls.values():
            call(i)
    seconds: dict[str, list[float]] = {label: [] for label in calls}
    for i in range(n):
        for label, call in calls.items():
            started = time.perf_counter()
            call(i)
            seconds[label].append(time.perf_counter() - started)
    return seconds


def get(api: Any, clinic_id: uuid.UUID, query: str) -> dict[str, Any]:
    from tests.support import LambdaContext, http_event, http_response

    event = http_event("GET", "/leads", clinic_id=clinic_id, query=query)
    event["queryStringParameters"] = dict(p.split("=", 1) for p in query.split("&"))
    status, _, body = http_response(api.handler(event, LambdaContext()))
    if status != 200:
        raise RuntimeError(f"GET /leads?{query}: {status} {body}")
    data: dict[str, Any] = body["data"]
    return data


def bench_pages(
    report: Report, api: Any, clinic_id: uuid.UUID, database_url: str
) -> dict[str, Any]:
    from frontdesk.leads.inbox import InboxFilters, encode_cursor

    with psycopg.connect(database_url) as conn:
        deep = conn.execute(
            """SELECT created_at, id FROM leads WHERE clinic_id = %s
               ORDER BY created_at DESC, id DESC OFFSET 90000 LIMIT 1""",
            (clinic_id,),
        ).fetchone()
    assert deep is not None
    deep_cursor = encode_cursor(deep[0], deep[1], InboxFilters())
    cases = {
        "first page (25)": "limit=25",
        "page 90,000 rows deep (cursor)": f"limit=25&cursor={deep_cursor}",
        "status=contacted (20%)": "limit=25&status=contacted",
        "assignedTo=staff-3 (6%)": "limit=25&assignedTo=staff-3",
        "source=referral (10%)": "limit=25&source=referral",
    }
    for label, query in cases.items():
        assert len(get(api, clinic_id, query)["items"]) == 25, label
    # Interleaved: one call of each case per round, so drift hits every case alike.
    samples = interleaved(
        {label: (lambda _i, q=query: get(api, clinic_id, q)) for label, query in cases.items()},
        READS,
    )
    found: dict[str, Any] = {}
    for label, seconds in samples.items():
        summary = latency_summary(seconds)
        found[label] = summary
        report.add(Row(f"GET /leads: {label}, p50 / p99", _ms(summary)))
    # The bare SQL of the first page (no HTTP, no decryption): the handler's overhead
    sql = """SELECT id, source, status, assigned_to, duplicate_of, created_at, updated_at,
                    name_enc, email_enc, phone_enc, dek
             FROM leads WHERE clinic_id = %s {more}
             ORDER BY created_at DESC, id DESC LIMIT 26"""
    with psycopg.connect(database_url) as conn:
        first_page = sql.format(more="")
        bare = latency_summary(
            timed(lambda _i: conn.execute(first_page, (clinic_id,)).fetchall(), READS)
        )
        plans = {}
        for label, more, params in (
            ("deep page", "AND (created_at, id) < (%s, %s)", (deep[0], deep[1])),
            (
                "status=contacted, deep",
                "AND status = 'contacted' AND (created_at, id) < (%s, %s)",
                (deep[0], deep[1]),
            ),
        ):
            plan = conn.execute(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql.format(more=more),
                (clinic_id, *params),
            ).fetchone()
            assert plan is not None
            scan = plan[0][0]["Plan"]
            while "Plans" in scan:
                scan = scan["Plans"][0]
            plans[label] = {
                "node": scan["Node Type"],
                "index": scan.get("Index Name"),
                "index_cond": scan.get("Index Cond"),
                "filter": scan.get("Filter"),
                "rows_read": scan.get("Actual Rows"),
                "shared_buffers": scan.get("Shared Hit Blocks", 0)
                + scan.get("Shared Read Blocks", 0),
            }
    found["bare first page SQL"] = bare
    report.add(
        Row(
            "first page: handler p50 vs its bare SQL p50",
            f"{found['first page (25)']['p50_ms']:.2f} ms",
            f"{bare['p50_ms']:.2f} ms",
            f"{found['first page (25)']['p50_ms'] / bare['p50_ms']:.1f}x",
        )
    )
    found["plans"] = plans
    return found


def bench_search(
    report: Report, api: Any, clinic_id: uuid.UUID, database_url: str
) -> dict[str, Any]:
    from frontdesk.platform.crypto import field_aad
    from frontdesk.services import get_services

    rnd = random.Random(7)
    picks = [rnd.randrange(LEADS) for _ in range(READS + WARMUP)]
    found: dict[str, Any] = {}

    def by_email(i: int) -> None:
        items = get(api, clinic_id, f"email=person1-{picks[i]}@example.org")["items"]
        assert len(items) == 1

    def by_phone(i: int) -> None:
        items = get(api, clinic_id, f"phone=%2B15551{picks[i]:07d}")["items"]
        assert len(items) == 1

    for label, seconds in interleaved({"email": by_email, "phone": by_phone}, READS).items():
        summary = latency_summary(seconds)
        found[label] = summary
        report.add(Row(f"GET /leads?{label}= (blind index), p50 / p99", _ms(summary)))
    # What the blind index saves: find one address by decrypting every email of the clinic
    cipher = get_services().cipher
    wanted = f"person1-{picks[0]}@example.org"
    scans = []
    with psycopg.connect(database_url) as conn:
        for _ in range(DECRYPT_SCANS):
            started = time.perf_counter()
            hits = [
                lead_id
                for lead_id, dek, blob in conn.execute(
                    "SELECT id, dek, email_enc FROM leads WHERE clinic_id = %s", (clinic_id,)
                )
                if cipher.decrypt(bytes(dek), bytes(blob), field_aad("leads", lead_id, "email"))
                == wanted
            ]
            scans.append(time.perf_counter() - started)
            assert len(hits) == 1
    scan = latency_summary(scans)
    found["decrypt-the-table search"] = scan
    report.add(
        Row(
            "search by email: blind index p50 vs decrypting the clinic's 100,000 emails",
            f"{found['email']['p50_ms']:.2f} ms",
            f"{scan['p50_ms']:.0f} ms",
            f"{scan['p50_ms'] / found['email']['p50_ms']:.0f}x faster",
        )
    )
    return found


def _ms(summary: dict[str, float]) -> str:
    return f"{summary['p50_ms']:.2f} / {summary['p99_ms']:.2f} ms"


def main() -> None:
    started = time.perf_counter()
    report = Report()
    with postgres_and_moto() as (postgres, moto):
        database_url = postgres.fresh_database("bench_inbox")
        export_stack(moto, database_url)
        from frontdesk.clinics import create_clinic
        from frontdesk.services import get_services
        from tests.support import load_handler, reset_process_state

        reset_process_state()
        clinic_id = seed_clinic()
        other = create_clinic(get_services().database, name="Other", notify_email=None)
        log(f"loading {LEADS:,} + {OTHER_CLINIC_LEADS:,} encrypted leads by COPY")
        loading = time.perf_counter()
        load_leads(database_url, clinic_id, LEADS, seed=1)
        load_leads(database_url, other, OTHER_CLINIC_LEADS, seed=2)
        load_s = time.perf_counter() - loading
        api = load_handler("api")
        with stdout_to_devnull():
            log("inbox pages")
            pages = bench_pages(report, api, clinic_id, database_url)
            log("search")
            search = bench_search(report, api, clinic_id, database_url)
        report.details.update(pages=pages, search=search, load_seconds=round(load_s, 1))
    meta = {
        **run_meta(postgres),
        "leads": LEADS,
        "reads_per_measurement": READS,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    notes = [
        "Through ApiFunction's handler in process (Mangum + FastAPI + one query + decrypting",
        "the page's name, email and phone: 75 AES-GCM decryptions under cached data keys).",
        "A page is a keyset page: the deep page's cursor is an index condition, so it reads",
        "what the first page reads (details.pages.plans: the index, its condition, rows read).",
        "Search computes the address's HMAC and probes leads_by_email / leads_by_phone; the",
        "baseline fetches and decrypts every email of the clinic to find the same address.",
    ]
    print(write_results("inbox", "Lead inbox benchmark", report, meta=meta, notes=notes))


if __name__ == "__main__":
    main()
