"""Benchmarks of the foundation slice: `python -m bench.run` (`make bench`).

Every number is measured next to its baseline in the same run, on the same machine, and
reported as a ratio; nothing here asserts a timing. Results: bench/results/foundation.json
and bench/results/foundation.md.

1. POST /public/leads through ApiFunction's real handler, next to a bare psycopg INSERT.
2. Init time (imports + module setup) of each function in a fresh process, next to
   `import boto3` and the naive stack (FastAPI + Mangum + boto3 + psycopg); and the cold
   first request of ApiFunction.
3. NotifyWorker throughput over SQS batches of 10, first deliveries and duplicates.
4. End to end through the local runtime (`python -m local.dev`): 201 -> email sent.
"""

from __future__ import annotations

import cProfile
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    FORM_KEY,
    NOTIFY_EMAIL,
    PRISTINE_ENV,
    REPO,
    RESULTS,
    Moto,
    Postgres,
    Report,
    Row,
    count_emails,
    export_stack,
    latency_summary,
    log,
    markdown_sections,
    markdown_table,
    run_meta,
    seed_clinic,
    start_moto,
    start_postgres,
    stdout_to_devnull,
    stop_runtime,
    wait_for_runtime,
    write_results,
)

POST_REQUESTS = 1_000
POST_WARMUP = 20
INIT_RUNS = 7
COLD_REQUEST_RUNS = 5
NOTIFY_JOBS = 2_000
NOTIFY_BATCH = 10
SES_REFERENCE_CALLS = 200
MOTO_REFERENCE_CALLS = 200
E2E_LEADS = 50
E2E_WARMUP = 3
E2E_POLL_SECONDS = 0.005
E2E_TIMEOUT_SECONDS = 15.0
NOTIFY_KIND = "notify.lead_created"
LOAD_AT_START = round(os.getloadavg()[0], 2)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}x"


# ---------------------------------------------------------------- 1. POST /public/leads


def lead_body(i: int) -> dict[str, Any]:
    return {
        "name": f"Bench Person {i}",
        "email": f"person{i}@bench.example",
        "phone": f"+1 555 {i:07d}",
        "notes": "wants an appointment next week",
        "consent": True,
    }


def empty_notifications_queue() -> None:
    """moto's SendMessageBatch gets slower with every message in the queue (about 7 ms
    empty, 37 ms at 1,000 messages); SQS's does not. Purged, untimed, before each call."""
    from frontdesk.services import get_services

    services = get_services()
    services.aws.client("sqs").purge_queue(QueueUrl=services.settings.notifications_queue_url)


def time_handler_posts(count: int) -> list[float]:
    """Seconds per POST /public/leads through ApiFunction's handler, after a warm-up."""
    from tests.support import LambdaContext, http_event, load_handler

    api = load_handler("api")
    context = LambdaContext()
    events = [
        http_event("POST", "/public/leads", body=lead_body(i), headers={"x-form-key": FORM_KEY})
        for i in range(POST_WARMUP + count)
    ]
    statuses: Counter[int] = Counter()
    seconds: list[float] = []
    with stdout_to_devnull():
        for event in events:
            empty_notifications_queue()
            started = time.perf_counter()
            response = api.handler(event, context)
            seconds.append(time.perf_counter() - started)
            statuses[response["statusCode"]] += 1
    if set(statuses) != {201}:
        raise RuntimeError(f"POST /public/leads answered {dict(statuses)}")
    return seconds[POST_WARMUP:]


def time_bare_inserts(database_url: str, clinic_id: uuid.UUID, count: int) -> list[float]:
    """Seconds per INSERT of a row shaped like an encrypted lead, autocommit, one connection."""
    seconds: list[float] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        for i in range(POST_WARMUP + count):
            row = {
                "id": uuid.uuid4(),
                "clinic_id": clinic_id,
                "name": os.urandom(12 + 16 + 16),
                "email": os.urandom(12 + 16 + 24),
                "phone": os.urandom(12 + 16 + 15),
                "notes": os.urandom(12 + 16 + 30),
                "dek": os.urandom(184),
                "email_bidx": os.urandom(32),
                "phone_bidx": os.urandom(32),
                "request_id": f"bench-insert-{i}",
            }
            started = time.perf_counter()
            conn.execute(
                """INSERT INTO leads (id, clinic_id, source, consent, name_enc, email_enc,
                                      phone_enc, notes_enc, dek, kms_key_id, email_bidx,
                                      phone_bidx, request_id)
                   VALUES (%(id)s, %(clinic_id)s, 'web_form', true, %(name)s, %(email)s,
                           %(phone)s, %(notes)s, %(dek)s, 'bench-key', %(email_bidx)s,
                           %(phone_bidx)s, %(request_id)s)""",
                row,
            )
            seconds.append(time.perf_counter() - started)
    return seconds[POST_WARMUP:]


def time_moto_round_trips(count: int) -> list[float]:
    """Seconds per pair of the calls one POST's outbox relay makes (SQS send_message_batch
    of one entry + EventBridge put_events of one entry), with the functions' own clients."""
    from frontdesk.services import get_services

    services = get_services()
    settings = services.settings
    sqs, events = services.aws.client("sqs"), services.aws.client("events")
    seconds: list[float] = []
    for i in range(count):
        empty_notifications_queue()
        started = time.perf_counter()
        sqs.send_message_batch(
            QueueUrl=settings.notifications_queue_url,
            Entries=[{"Id": str(i), "MessageBody": json.dumps({"reference": i})}],
        )
        events.put_events(
            Entries=[
                {
                    "Source": "bench",
                    "DetailType": "bench.reference",
                    "Detail": json.dumps({"reference": i}),
                    "EventBusName": settings.event_bus_name,
                }
            ]
        )
        seconds.append(time.perf_counter() - started)
    return seconds


def bench_post_leads(report: Report, database_url: str, clinic_id: uuid.UUID) -> None:
    log(f"1. POST /public/leads x {POST_REQUESTS} through the handler")
    handler_s = time_handler_posts(POST_REQUESTS)
    handler = latency_summary(handler_s)
    # Steady, or drifting as tables and moto's state grow?
    handler["mean_first_100_ms"] = round(statistics.fmean(handler_s[:100]) * 1000, 3)
    handler["mean_last_100_ms"] = round(statistics.fmean(handler_s[-100:]) * 1000, 3)
    log(f"1. reference: bare INSERT INTO leads x {POST_REQUESTS} on one psycopg connection")
    insert = latency_summary(time_bare_inserts(database_url, clinic_id, POST_REQUESTS))
    log(f"1. reference: the relay's SQS + EventBridge calls to moto x {MOTO_REFERENCE_CALLS}")
    moto = latency_summary(time_moto_round_trips(MOTO_REFERENCE_CALLS))
    report.details["post_leads"] = {
        "handler": handler,
        "bare_insert": insert,
        "moto_sqs_plus_eventbridge": moto,
    }
    baseline = "bare psycopg INSERT INTO leads"
    for stat in ("p50", "p99", "mean"):
        key = f"{stat}_ms"
        report.add(
            Row(
                f"POST /public/leads via handler, {stat}",
                f"{handler[key]:.2f} ms",
                f"{baseline}: {insert[key]:.2f} ms",
                ratio(handler[key], insert[key]),
            )
        )
    report.add(
        Row(
            "POST /public/leads via handler, one caller back to back",
            f"{handler['per_s']:.0f} req/s",
            f"{baseline}: {insert['per_s']:.0f} rows/s",
            ratio(handler["per_s"], insert["per_s"]),
        )
    )
    external = insert["mean_ms"] + moto["mean_ms"]
    report.add(
        Row(
            "POST /public/leads via handler, mean, vs its external calls",
            f"{handler['mean_ms']:.2f} ms",
            f"bare INSERT {insert['mean_ms']:.2f} ms + SQS & EventBridge to moto "
            f"{moto['mean_ms']:.2f} ms = {external:.2f} ms",
            ratio(handler["mean_ms"], external),
        )
    )


# ---------------------------------------------------------------- 2. init and cold request

# Each snippet starts its clock before its first import and prints one "BENCH {json}" line
# (the functions' own logs also go to stdout).
_LOAD_HANDLER = """
import time
_started = time.perf_counter()
import importlib.util, sys
_spec = importlib.util.spec_from_file_location("handler", sys.argv[1])
module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(module)
_init = time.perf_counter() - _started
"""

INIT_SNIPPET = (
    _LOAD_HANDLER
    + """
import json
print("BENCH " + json.dumps({"init_s": _init}))
"""
)

COLD_REQUEST_SNIPPET = (
    _LOAD_HANDLER
    + """
import json

class Context:
    function_name = "ApiFunction"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ApiFunction"
    memory_limit_in_mb = 512
    aws_request_id = "00000000-0000-0000-0000-00000000cold"
    log_group_name = "/aws/lambda/ApiFunction"
    log_stream_name = "bench"

    def get_remaining_time_in_millis(self):
        return 30_000

print("BENCH init done", file=sys.stderr)  # splits -X importtime output into init and request
with open(sys.argv[2]) as _file:
    _event = json.load(_file)
_started = time.perf_counter()
_response = module.handler(_event, Context())
_request = time.perf_counter() - _started
print("BENCH " + json.dumps(
    {"init_s": _init, "request_s": _request, "status": _response["statusCode"]}))
"""
)

BOTO3_SNIPPET = """
import time
_started = time.perf_counter()
import boto3
_init = time.perf_counter() - _started
import json
print("BENCH " + json.dumps({"init_s": _init}))
"""

NAIVE_SNIPPET = """
import time
_started = time.perf_counter()
import boto3, fastapi, mangum, psycopg

app = fastapi.FastAPI()

@app.post("/public/leads")
def create_lead(payload: dict) -> dict:
    return payload

handler = mangum.Mangum(app, lifespan="off")
sqs = boto3.client("sqs")
_init = time.perf_counter() - _started
import json
print("BENCH " + json.dumps({"init_s": _init}))
"""

FUNCTIONS = {
    "ApiFunction": "api",
    "NotifyWorker": "notify_worker",
    "OutboxSweeper": "outbox_sweeper",
}


def run_snippet(snippet: str, *args: str, flags: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run `python -c snippet` with the layer on sys.path and the functions' environment;
    the snippet's BENCH result, its wall time (interpreter start included) and its stderr."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "layers" / "frontdesk"))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *flags, "-c", snippet, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"snippet failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("BENCH "))
    result["process_wall_s"] = wall
    result["stderr"] = done.stderr
    return result


def top_imports(importtime: str, count: int = 8) -> dict[str, list[str]]:
    """The slowest top-level imports of `-X importtime` output, before and after the
    snippet's "BENCH init done" line."""
    phases: dict[str, list[tuple[int, str]]] = {"init": [], "first_request": []}
    phase = "init"
    for line in importtime.splitlines():
        if line == "BENCH init done":
            phase = "first_request"
        elif line.startswith("import time:") and "[us]" not in line:
            _, cumulative, name = line.split("|")
            if not name[1:].startswith(" "):  # nested imports are indented
                phases[phase].append((int(cumulative), name.strip()))
    return {
        phase: [f"{name} {us / 1000:.0f} ms" for us, name in sorted(found, reverse=True)[:count]]
        for phase, found in phases.items()
    }


def bench_init(report: Report) -> float:
    """Median init time of each function and of the baselines; returns the naive stack's."""
    variants: dict[str, tuple[str, ...]] = {
        "import boto3": (BOTO3_SNIPPET,),
        "naive stack": (NAIVE_SNIPPET,),
        **{
            name: (INIT_SNIPPET, str(REPO / "functions" / folder / "handler.py"))
            for name, folder in FUNCTIONS.items()
        },
    }
    log(f"2. init time: {len(variants)} variants x {INIT_RUNS} fresh processes (+1 warm-up)")
    samples: dict[str, list[float]] = {name: [] for name in variants}
    walls: dict[str, list[float]] = {name: [] for name in variants}
    for run in range(INIT_RUNS + 1):  # run 0 writes the .pyc files
        names = list(variants)
        names = names[run % len(names) :] + names[: run % len(names)]  # rotate the order
        for name in names:
            result = run_snippet(*variants[name])
            if run > 0:
                samples[name].append(result["init_s"])
                walls[name].append(result["process_wall_s"])
    median = {name: statistics.median(values) for name, values in samples.items()}
    report.details["init"] = {
        name: {
            "median_ms": round(median[name] * 1000, 1),
            "runs_ms": [round(v * 1000, 1) for v in samples[name]],
            "process_wall_median_ms": round(statistics.median(walls[name]) * 1000, 1),
        }
        for name in variants
    }
    naive, boto = median["naive stack"], median["import boto3"]
    report.add(
        Row(
            "init: naive stack (FastAPI+Mangum+boto3+psycopg, app, sqs client)",
            ms(naive),
            f"import boto3: {ms(boto)}",
            ratio(naive, boto),
        )
    )
    targets = {"ApiFunction": 0.7, "NotifyWorker": 0.5, "OutboxSweeper": 0.5}
    for name, target in targets.items():
        report.add(
            Row(
                f"init: {name} (imports + module setup)",
                ms(median[name]),
                f"naive stack: {ms(naive)}; import boto3: {ms(boto)}",
                f"{ratio(median[name], naive)} naive; {ratio(median[name], boto)} boto3",
                f"<= {target}x naive",
            )
        )
    return naive


def cold_event_file(directory: Path, run: int) -> str:
    from tests.support import http_event

    event = http_event(
        "POST",
        "/public/leads",
        body=lead_body(900_000 + run),
        headers={"x-form-key": FORM_KEY},
    )
    path = directory / f"event-{run}.json"
    path.write_text(json.dumps(event))
    return str(path)


def bench_cold_request(report: Report, naive: float) -> None:
    log(f"2. cold first request of ApiFunction x {COLD_REQUEST_RUNS} fresh processes")

    api_path = str(REPO / "functions" / "api" / "handler.py")
    cold: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(COLD_REQUEST_RUNS + 1):  # the last one, untimed, under -X importtime
            event_path = cold_event_file(Path(tmp), run)
            importtime = ("-X", "importtime") if run == COLD_REQUEST_RUNS else ()
            result = run_snippet(COLD_REQUEST_SNIPPET, api_path, event_path, flags=importtime)
            if result["status"] != 201:
                raise RuntimeError(f"cold POST /public/leads answered {result['status']}")
            cold.append(result)
    imports = top_imports(cold.pop()["stderr"])
    init_s = statistics.median(r["init_s"] for r in cold)
    request_s = statistics.median(r["request_s"] for r in cold)
    total_s = statistics.median(r["init_s"] + r["request_s"] for r in cold)
    report.details["cold_first_request"] = {
        "median_init_ms": round(init_s * 1000, 1),
        "median_first_request_ms": round(request_s * 1000, 1),
        "median_total_ms": round(total_s * 1000, 1),
        "runs": [
            {"init_ms": round(r["init_s"] * 1000, 1), "request_ms": round(r["request_s"] * 1000, 1)}
            for r in cold
        ],
        "slowest_top_level_imports": imports,
    }
    report.sections["ApiFunction cold start: slowest top-level imports (-X importtime)"] = [
        f"{phase}: {', '.join(names)}" for phase, names in imports.items()
    ]
    report.add(
        Row(
            "cold path: ApiFunction init + first POST /public/leads",
            f"{ms(total_s)} ({ms(init_s)} init + {ms(request_s)} request)",
            f"naive stack init only: {ms(naive)}",
            ratio(total_s, naive) + " naive",
            "<= 0.7x naive",
        )
    )


# ---------------------------------------------------------------- 3. NotifyWorker


def enqueue_notify_jobs(database_url: str, clinic_id: uuid.UUID, count: int) -> list[str]:
    """`count` leads and their queued notify jobs, set-based; the bodies of their messages."""
    lead_ids = [uuid.uuid4() for _ in range(count)]
    job_ids = [uuid.uuid4() for _ in range(count)]
    with psycopg.connect(database_url) as conn:
        conn.execute(
            """INSERT INTO leads (id, clinic_id, source, consent, name_enc, email_enc, dek,
                                  kms_key_id, request_id)
               SELECT id, %(clinic_id)s, 'web_form', true, '\\x00', '\\x00', '\\x00',
                      'bench-key', 'bench-notify'
               FROM unnest(%(ids)s::uuid[]) AS t(id)""",
            {"clinic_id": clinic_id, "ids": lead_ids},
        )
        conn.execute(
            """INSERT INTO jobs (id, clinic_id, kind, payload, request_id)
               SELECT job_id, %(clinic_id)s, %(kind)s, jsonb_build_object('leadId', lead_id),
                      'bench-notify'
               FROM unnest(%(job_ids)s::uuid[], %(lead_ids)s::uuid[]) AS t(job_id, lead_id)""",
            {"clinic_id": clinic_id, "kind": NOTIFY_KIND, "job_ids": job_ids, "lead_ids": lead_ids},
        )
    return [
        json.dumps({"jobId": str(job_id), "kind": NOTIFY_KIND, "clinicId": str(clinic_id)})
        for job_id in job_ids
    ]


def run_batches(worker: Any, events: list[dict[str, Any]]) -> tuple[float, int]:
    """Call the handler once per event; (seconds spent in the handler, failed records)."""
    from tests.support import LambdaContext

    context = LambdaContext()
    spent = 0.0
    failed = 0
    with stdout_to_devnull():
        for event in events:
            started = time.perf_counter()
            answer = worker.handler(event, context)
            spent += time.perf_counter() - started
            failed += len(answer["batchItemFailures"])
    return spent, failed


def job_statuses(database_url: str, bodies: list[str]) -> dict[str, int]:
    ids = [json.loads(body)["jobId"] for body in bodies]
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM jobs WHERE id = ANY(%s::uuid[]) GROUP BY status", (ids,)
        ).fetchall()
    return {status: count for status, count in rows}


def profile_one_batch(worker: Any, bodies: list[str]) -> dict[str, list[str]]:
    """The top 10 entries of one handler call under cProfile, by cumulative and by own time."""
    from tests.support import LambdaContext, sqs_event

    event = sqs_event(bodies, request_id="bench-profile")
    profiler = cProfile.Profile()
    with stdout_to_devnull():
        profiler.runcall(worker.handler, event, LambdaContext())
    entries = pstats.Stats(profiler).stats.items()  # type: ignore[attr-defined]

    def top(column: int) -> list[str]:
        lines = [f"{'cumulative':>10} {'own':>9} {'calls':>6}  function"]
        for (path, line, name), stat in sorted(entries, key=lambda e: -e[1][column])[:10]:
            _, calls, own, cumulative, _ = stat
            for prefix in (str(REPO) + "/", "site-packages/"):
                path = path.split(prefix, 1)[-1]
            lines.append(
                f"{cumulative * 1000:8.1f}ms {own * 1000:7.1f}ms {calls:>6}  {path}:{line}({name})"
            )
        return lines

    return {"by_cumulative_time": top(3), "by_own_time": top(2)}


def bench_ses_reference(calls: int) -> tuple[str, float]:
    """(what was called, seconds per call): the SES call NotifyWorker makes for one batch,
    bare, with the functions' own client: SendBulkTemplatedEmail to a batch's worth of
    destinations when a template is configured, else one SendEmail."""
    from frontdesk.services import get_services

    services = get_services()
    settings = services.settings
    ses = services.aws.client("ses")
    template = getattr(settings, "new_lead_email_template", None)
    started = time.perf_counter()
    for i in range(calls):
        if template:
            destination = {"Destination": {"ToAddresses": [NOTIFY_EMAIL]}}
            ses.send_bulk_templated_email(
                Source=settings.sender_email,
                Template=template,
                DefaultTemplateData="{}",
                Destinations=[
                    {**destination, "ReplacementTemplateData": json.dumps({"reference": i})}
                ]
                * NOTIFY_BATCH,
            )
        else:
            ses.send_email(
                Source=settings.sender_email,
                Destination={"ToAddresses": [NOTIFY_EMAIL]},
                Message={"Subject": {"Data": f"reference {i}"}, "Body": {"Text": {"Data": "x"}}},
            )
    what = f"SendBulkTemplatedEmail x{NOTIFY_BATCH}" if template else "SendEmail"
    return what, (time.perf_counter() - started) / calls


def bench_notify(report: Report, moto: Moto, database_url: str, clinic_id: uuid.UUID) -> None:
    from tests.support import load_handler, sqs_event

    log(f"3. NotifyWorker: {NOTIFY_JOBS} jobs in batches of {NOTIFY_BATCH}")
    worker = load_handler("notify_worker")
    bodies = enqueue_notify_jobs(database_url, clinic_id, NOTIFY_JOBS)
    warmup = enqueue_notify_jobs(database_url, clinic_id, NOTIFY_BATCH)
    run_batches(worker, [sqs_event(warmup, request_id="bench-warmup")])  # connections, clients

    def events() -> list[dict[str, Any]]:
        return [
            sqs_event(bodies[start : start + NOTIFY_BATCH], request_id=f"bench-{start}")
            for start in range(0, len(bodies), NOTIFY_BATCH)
        ]

    emails_before = moto.emails_sent()
    first_s, first_failed = run_batches(worker, events())
    emails_after_first = moto.emails_sent()
    statuses = job_statuses(database_url, bodies)
    log("3. the same batches again (duplicate deliveries)")
    dup_s, dup_failed = run_batches(worker, events())
    emails_after_dup = moto.emails_sent()

    sent = emails_after_first - emails_before
    extra = emails_after_dup - emails_after_first
    all_succeeded = statuses == {"succeeded": NOTIFY_JOBS}
    if sent != NOTIFY_JOBS or extra != 0 or not all_succeeded or first_failed or dup_failed:
        raise RuntimeError(
            f"NotifyWorker bookkeeping is off: sent {sent}, extra {extra}, jobs {statuses}, "
            f"failed records {first_failed} + {dup_failed}"
        )

    log(f"3. reference: {SES_REFERENCE_CALLS} bare SES calls to moto")
    ses_call, ses_s = bench_ses_reference(SES_REFERENCE_CALLS)
    # What one process doing nothing but those SES calls would reach, in emails/s.
    ses_ceiling = (NOTIFY_BATCH if "Bulk" in ses_call else 1) / ses_s
    log("3. profile of one batch")
    profile = profile_one_batch(worker, enqueue_notify_jobs(database_url, clinic_id, NOTIFY_BATCH))

    first_rate = NOTIFY_JOBS / first_s
    dup_rate = NOTIFY_JOBS / dup_s
    report.details["notify"] = {
        "jobs": NOTIFY_JOBS,
        "batch_size": NOTIFY_BATCH,
        "first_delivery": {
            "seconds": round(first_s, 3),
            "jobs_per_s": round(first_rate, 1),
            "emails_sent": sent,
            "job_statuses": statuses,
        },
        "duplicate_delivery": {
            "seconds": round(dup_s, 3),
            "jobs_per_s": round(dup_rate, 1),
            "extra_emails": extra,
        },
        "bare_ses_call": {
            "call": ses_call,
            "ms": round(ses_s * 1000, 3),
            "emails_per_s": round(ses_ceiling, 1),
        },
        "profile_one_batch": profile,
    }
    title = f"NotifyWorker: one batch of {NOTIFY_BATCH} under cProfile, top 10"
    report.sections[f"{title} by cumulative time"] = profile["by_cumulative_time"]
    report.sections[f"{title} by own time"] = profile["by_own_time"]
    report.add(
        Row(
            f"NotifyWorker, {NOTIFY_JOBS} jobs, batches of {NOTIFY_BATCH}",
            f"{first_rate:.0f} jobs/s ({sent} emails, all {NOTIFY_JOBS} jobs succeeded)",
            f"bare SES {ses_call} to moto, back to back: {ses_s * 1000:.1f} ms/call = "
            f"{ses_ceiling:.0f} emails/s",
            ratio(first_rate, 2400) + " of target",
            "2,400 jobs/s (pg-boss, 4 CPUs)",
        )
    )
    report.add(
        Row(
            "NotifyWorker, the same batches again (duplicates)",
            f"{dup_rate:.0f} jobs/s ({extra} extra emails)",
            f"first delivery: {first_rate:.0f} jobs/s",
            ratio(dup_rate, first_rate),
            "0 extra emails",
        )
    )


# ---------------------------------------------------------------- 4. end to end


def bench_end_to_end(report: Report, postgres: Postgres) -> None:
    import httpx

    log(f"4. end to end through python -m local.dev: {E2E_LEADS} leads, 201 -> email")
    state_dir = REPO / ".frontdesk" / "bench-dev"
    state_dir.mkdir(parents=True, exist_ok=True)
    dev_json = state_dir / "dev.json"
    dev_json.unlink(missing_ok=True)
    log_path = state_dir / "dev.log"
    env = {k: v for k, v in PRISTINE_ENV.items() if k != "AWS_ENDPOINT_URL"}
    env.update(
        DATABASE_URL=postgres.fresh_database("frontdesk_bench_dev", migrated=False),
        PYTHONPATH=f"{REPO / 'layers' / 'frontdesk'}{os.pathsep}{REPO}",
    )
    started = time.perf_counter()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "local.dev", "--api-port", "0", "--state-dir", str(state_dir)],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        info = wait_for_runtime(process, dev_json, log_path)
        startup_s = time.perf_counter() - started
        latencies, post_s, first_s = post_and_wait_for_emails(httpx, info)
    finally:
        stopped = stop_runtime(process)
    log(f"4. local.dev {stopped}")
    e2e = latency_summary(latencies)
    post = latency_summary(post_s)
    report.details["end_to_end"] = {
        "runtime_startup_ms": round(startup_s * 1000, 1),
        "first_lead_incl_worker_init_ms": round(first_s * 1000, 1),
        "created_to_email": e2e,
        "post_over_http": post,
        "runtime_stop": stopped,
    }
    report.add(
        Row(
            f"E2E 201 -> email sent (local.dev, {E2E_LEADS} leads), p50",
            f"{e2e['p50_ms']:.1f} ms",
            f"POST over HTTP p50: {post['p50_ms']:.1f} ms",
            "-",
            "- (SQS long poll WaitTimeSeconds=1)",
        )
    )
    report.add(
        Row(
            f"E2E 201 -> email sent (local.dev, {E2E_LEADS} leads), p99",
            f"{e2e['p99_ms']:.1f} ms",
            f"POST over HTTP p99: {post['p99_ms']:.1f} ms",
            "-",
            "-",
        )
    )


def post_and_wait_for_emails(
    httpx: Any, info: dict[str, Any]
) -> tuple[list[float], list[float], float]:
    """(201 -> email latencies, POST latencies, first lead's latency incl. worker init)."""
    data_url = f"{info['awsEndpointUrl']}/moto-api/data.json"
    latencies: list[float] = []
    post_s: list[float] = []
    first_s = 0.0
    with httpx.Client(base_url=info["apiUrl"], timeout=10) as api, httpx.Client(timeout=10) as aws:

        def emails() -> int:
            return count_emails(aws.get(data_url).json())

        for i in range(E2E_WARMUP + E2E_LEADS):
            before = emails()
            started = time.perf_counter()
            answer = api.post(
                "/public/leads", json=lead_body(i), headers={"X-Form-Key": info["formKey"]}
            )
            created = time.perf_counter()
            if answer.status_code != 201:
                raise RuntimeError(f"POST /public/leads answered {answer.status_code}")
            deadline = created + E2E_TIMEOUT_SECONDS
            while emails() <= before:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"no email {E2E_TIMEOUT_SECONDS} s after lead {i}")
                time.sleep(E2E_POLL_SECONDS)
            latency = time.perf_counter() - created
            if i == 0:
                first_s = latency
            if i >= E2E_WARMUP:
                latencies.append(latency)
                post_s.append(created - started)
    return latencies, post_s, first_s


# ---------------------------------------------------------------- main


def write_foundation_results(report: Report, postgres: Postgres, elapsed_s: float) -> str:
    import moto

    meta = {
        **run_meta(postgres),
        "implementation": platform.python_implementation(),
        "moto": moto.__version__,
        "elapsed_s": round(elapsed_s, 1),
        "load_average_1m_at_start_and_end": [LOAD_AT_START, round(os.getloadavg()[0], 2)],
    }
    notes = {
        "How to read it": [
            "AWS is moto in the bench's own process (the runtime of 4. has its own): every",
            "call is a real HTTP round trip to it, on a fresh TCP connection each time",
            "(moto's server closes it). The notifications queue is purged, untimed, before",
            "each POST of 1. because moto's SendMessageBatch slows down as its queue grows.",
            "NotifyWorker's row has, as baseline, the bare SES call(s) it makes, back to back:",
            "a single process cannot send faster than that.",
            "Init times are medians over fresh processes, interpreter start excluded;",
            "the cold path adds the first request, which creates the AWS clients, a KMS",
            "data key, reads the blind-index secret and opens the database connection.",
        ]
    }
    body = "\n".join(
        [
            f"`python -m bench.run` on {meta['date']}: Python {meta['python']}, "
            f"{meta['cpu_count']} CPUs, PostgreSQL {postgres.version} ({postgres.source}), "
            f"moto {meta['moto']} in process; {meta['elapsed_s']} s in all; 1-minute load "
            f"average {meta['load_average_1m_at_start_and_end'][0]} at the start, "
            f"{meta['load_average_1m_at_start_and_end'][1]} at the end.",
            "Baselines and ratios are measured in the same run. Details: foundation.json.",
            "",
            markdown_table(report.rows),
            *markdown_sections({**report.sections, **notes}),
            "",
        ]
    )
    return write_results("foundation", "Foundation slice benchmarks", report, meta=meta, body=body)


def main() -> None:
    from contextlib import ExitStack

    started = time.perf_counter()
    report = Report()
    with ExitStack() as cleanup:
        log("starting PostgreSQL and moto")
        postgres = start_postgres()
        cleanup.callback(postgres.drop_created)
        database_url = postgres.fresh_database("frontdesk_bench")
        moto = start_moto()
        cleanup.callback(moto.server.stop)
        export_stack(moto, database_url)
        clinic_id = seed_clinic()
        log(f"PostgreSQL {postgres.version} ({postgres.source}), moto at {moto.url}")

        bench_post_leads(report, database_url, clinic_id)
        naive = bench_init(report)
        bench_cold_request(report, naive)
        bench_notify(report, moto, database_url, clinic_id)
        bench_end_to_end(report, postgres)

        from tests.support import reset_process_state

        reset_process_state()  # closes the bench's own connection before the DROP
    elapsed = time.perf_counter() - started
    table = write_foundation_results(report, postgres, elapsed)
    print()
    print(table)
    print(f"\n{elapsed:.1f} s; results in {RESULTS.relative_to(REPO)}/foundation.{{json,md}}")


if __name__ == "__main__":
    main()
