"""Benchmarks of the response path, the cold start and NotifyWorker's batches:
`python -m bench.response` (`make bench`; needs `make build`, which `make bench` runs when
the build is missing or older than the code).

Every figure is a ratio to a baseline measured in the same run, interleaved with it; nothing
here asserts a timing. Results: bench/results/response.json and bench/results/response.md.

ApiFunction runs as the Lambda service runs it (local.lambda_runtime: a process under
awslambdaric, the Runtime and Extensions API on loopback, the relay after the response in
the internal extension), from the built artifacts (.aws-sam/build), against moto provisioned
from template.yaml, through AwsProxy (tests/aws_proxy.py). A request's time is the time
until `Environment.invoke()` returns the response, which is what API Gateway would forward;
the invoke phase (the relay) is reported apart.

1. Warm POST /public/leads, in rounds, each round in a rotated order: an environment whose
   AWS endpoint answers at once, one whose SendMessageBatch and PutEvents answer after
   200 ms, the same SQL statements run bare in one transaction, the handler called in
   process, and the floor: an unknown route (404) through the runtime and in process.
2. An endpoint that never answers: the answers, the invoke phases (the relay's budget), the
   next request on the same environment, then the OutboxSweeper: every row sent once.
3. Cold path: ApiFunction's init (Environment: process start to the runtime's first /next)
   and first request, with the built bytecode and without; a bare FastAPI + Mangum one-route
   app's init measured the same way; SnapStart: restore hooks + first request.
4. NotifyWorker in process, BatchSize 10 and 50 interleaved, the SES call timed apart.

The loopback servers of the local runtime and of AwsProxy are Python http.server handlers
that write a response's headers and body in two writes; with Nagle's algorithm on, the body
waits for the client's delayed ACK (40 ms on Linux). AWS's Runtime API has no such stall,
so both turn Nagle off (`disable_nagle_algorithm`, a class attribute of socketserver's
StreamRequestHandler); the bench measures http.server's stock setting once, apart.
"""

from __future__ import annotations

import contextlib
import cProfile
import dataclasses
import hashlib
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    FORM_KEY,
    REPO,
    RESULTS,
    Moto,
    Postgres,
    Report,
    Row,
    log,
    markdown_sections,
    markdown_table,
    percentile,
    run_meta,
    seed_clinic,
    start_moto,
    start_postgres,
    stdout_to_devnull,
    write_results,
)

NAME = "response"
WARM_ROUNDS = 200
WARM_WARMUP = 15
NAGLE_ROUNDS = 30
HANG_REQUESTS = 15
HANG_BACK_TO_BACK = 8
COLD_ROUNDS = 7
NOTIFY_ROUNDS = 40  # each: 5 batches of 10 and 1 batch of 50
PROFILED = 10  # batches of 50 under cProfile
RELAY_DELAY_SECONDS = 0.2
PURGE_EVERY = 25
BARE_REQUEST_ID = "bench-bare-sql"

BUILD = REPO / ".aws-sam" / "build"
BUILT_API = BUILD / "ApiFunction"
BUILT_LAYER = BUILD / "FrontdeskLayer" / "python"

BARE_APP = '''"""The baseline: a bare FastAPI + Mangum app with one route."""

from fastapi import FastAPI
from mangum import Mangum

app = FastAPI()


@app.get("/")
def root() -> dict[str, str]:
    return {"ok": "yes"}


handler = Mangum(app, lifespan="off")
'''

IMPORT_SNIPPET = """
import time
_started = time.perf_counter()
import handler
_init = time.perf_counter() - _started
import json
print("BENCH " + json.dumps({"init_s": _init}))
"""


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def fmt_ms(value_ms: float) -> str:
    return f"{value_ms:,.1f} ms" if value_ms >= 10 else f"{value_ms:,.2f} ms"


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}x"


def summary(samples_ms: list[float]) -> dict[str, Any]:
    return {
        "n": len(samples_ms),
        "p50_ms": round(percentile(samples_ms, 50), 3),
        "p99_ms": round(percentile(samples_ms, 99), 3),
        "mean_ms": round(statistics.fmean(samples_ms), 3),
        "min_ms": round(min(samples_ms), 3),
        "max_ms": round(max(samples_ms), 3),
    }


def lead_event(tag: str) -> dict[str, Any]:
    from tests.support import http_event

    body = {
        "name": "Bench Person",
        "email": f"{tag}@bench.example",
        "phone": f"+1 555 {abs(hash(tag)) % 10_000_000:07d}",
        "notes": "wants an appointment next week",
        "consent": True,
    }
    return http_event("POST", "/public/leads", body=body, headers={"x-form-key": FORM_KEY})


def not_found_event() -> dict[str, Any]:
    from tests.support import http_event

    return http_event("GET", "/bench/no-such-route")


# ---------------------------------------------------------------- the build


def check_build() -> None:
    """The cold-path figures are about the built artifacts: they must be this tree's code."""
    if not (BUILT_API / "handler.py").exists() or not BUILT_LAYER.is_dir():
        raise SystemExit("bench.response needs the built artifacts: run `make build` first")
    pairs = [(REPO / "functions" / "api" / "handler.py", BUILT_API / "handler.py")]
    source = REPO / "layers" / "frontdesk" / "frontdesk"
    pairs += [(p, BUILT_LAYER / "frontdesk" / p.relative_to(source)) for p in source.rglob("*.py")]
    stale = [
        str(src.relative_to(REPO))
        for src, built in pairs
        if not built.exists()
        or hashlib.sha256(src.read_bytes()).digest() != hashlib.sha256(built.read_bytes()).digest()
    ]
    if stale:
        raise SystemExit(f"the build is older than the code ({', '.join(stale[:5])}): make build")


# ---------------------------------------------------------------- environments


@contextlib.contextmanager
def aws_proxy(moto: Moto, *, nagle: bool = False) -> Iterator[Any]:
    from tests.aws_proxy import AwsProxy

    proxy = AwsProxy(moto.url)
    proxy._server.RequestHandlerClass.disable_nagle_algorithm = not nagle
    with proxy:
        yield proxy


@dataclass
class Stack:
    """What every environment of the bench starts from."""

    provisioned: Any
    database_url: str
    clinic_id: uuid.UUID

    def api_spec(self) -> Any:
        return next(s for s in self.provisioned.functions() if s.logical_id == "ApiFunction")

    def environment(self, aws_url: str, database_url: str | None = None) -> dict[str, str]:
        from local.dev import function_environment

        return function_environment(
            self.provisioned, "ApiFunction", database_url or self.database_url, aws_url
        )


def start_environment(
    code_dir: Path,
    python_path: list[Path],
    environment: dict[str, str],
    *,
    name: str = "ApiFunction",
    snap_start: bool = False,
    nagle: bool = False,
    on_output: Callable[[str], None] | None = None,
) -> Any:
    """An execution environment (not yet initialised). `nagle`: keep the stock loopback
    Runtime API (Nagle's algorithm on); the bench turns it off everywhere else."""
    from local import lambda_runtime

    env = lambda_runtime.Environment(
        name=name,
        handler="handler.handler",
        code_dir=code_dir,
        python_path=python_path,
        environment=environment,
        timeout_seconds=10,
        memory_mb=512,
        snap_start=snap_start,
        on_output=on_output,
    )
    # Each environment serves its APIs with a subclass of its own: set before the process
    # (still starting its interpreter) opens its first connection.
    env._server.RequestHandlerClass.disable_nagle_algorithm = not nagle
    return env


def timed_invoke(env: Any, event: dict[str, Any]) -> tuple[float, dict[str, Any], Any]:
    """(ms until the response, the response, the invoke phase's report)."""
    started = time.perf_counter()
    response, finish = env.invoke(event)
    answered = (time.perf_counter() - started) * 1000
    return answered, response, finish()


def expect(response: dict[str, Any], status: int, what: str) -> None:
    if response.get("statusCode") != status:
        raise RuntimeError(f"{what} answered {response.get('statusCode')}: {response}")


def unsent_rows(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()
    return int(row[0]) if row else 0


def purge_notifications() -> None:
    """moto's SendMessageBatch slows down as its queue grows (SQS's does not): emptied,
    untimed, every few rounds."""
    from frontdesk.services import get_services

    services = get_services()
    services.aws.client("sqs").purge_queue(QueueUrl=services.settings.notifications_queue_url)


# ---------------------------------------------------------------- bare SQL


@dataclass
class BareTransaction:
    """The SQL statements one POST /public/leads runs (recorded from the handler), run bare
    in one transaction on one connection, with fresh ids, ciphertexts and blind indexes."""

    database_url: str
    clinic_id: uuid.UUID
    statements: list[tuple[str, Any]] = field(default_factory=list)
    conn: Any = None

    def record(self, call: Callable[[], Any]) -> None:
        recorded: list[tuple[str, Any]] = []
        execute = psycopg.Cursor.execute

        def recording(cursor: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
            recorded.append((query, params))
            return execute(cursor, query, params, **kwargs)

        psycopg.Cursor.execute = recording  # type: ignore[method-assign]
        try:
            call()
        finally:
            psycopg.Cursor.execute = execute  # type: ignore[method-assign]
        self.statements = recorded

    def open(self) -> None:
        from frontdesk.platform.db import connect_kwargs

        self.conn = psycopg.connect(self.database_url, **connect_kwargs(5, 5000))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def _fresh(self, params: Any) -> Any:
        if not isinstance(params, dict):
            return params
        ids: dict[uuid.UUID, uuid.UUID] = {}

        def fresh(key: str, value: Any) -> Any:
            if key == "request_id":
                return BARE_REQUEST_ID
            if isinstance(value, uuid.UUID) and value != self.clinic_id:
                return ids.setdefault(value, uuid.uuid4())
            if isinstance(value, bytes):
                return os.urandom(len(value))
            return value

        return {key: fresh(key, value) for key, value in params.items()}

    def run(self) -> float:
        """ms for one transaction: BEGIN, the statements, COMMIT."""
        bound = [(query, self._fresh(params)) for query, params in self.statements]
        started = time.perf_counter()
        with self.conn.transaction(), self.conn.cursor() as cur:
            for query, params in bound:
                cur.execute(query, params)
                if cur.description is not None:
                    cur.fetchall()
        return (time.perf_counter() - started) * 1000


# ---------------------------------------------------------------- 1. warm requests


def in_process_api() -> tuple[Any, list[list[int]]]:
    """ApiFunction's handler in this process, its relay deferred (then run, untimed)."""
    from frontdesk.services import get_services
    from tests.support import load_handler

    api = load_handler("api")
    deferred: list[list[int]] = []

    def after_response(ids: list[int]) -> bool:
        deferred.append(ids)
        return True

    get_services().handoff.relay_after_response_with(after_response)
    return api, deferred


def bench_warm(report: Report, stack: Stack, moto: Moto) -> None:
    from frontdesk.services import get_services
    from tests.aws_proxy import RELAY_TARGETS
    from tests.support import LambdaContext

    log(f"1. warm POST /public/leads: {WARM_ROUNDS} rounds of 6 interleaved measurements")
    load_start = load()
    api, deferred = in_process_api()
    context = LambdaContext()
    bare = BareTransaction(stack.database_url, stack.clinic_id)

    def call(event: dict[str, Any], status: int) -> float:
        with stdout_to_devnull():
            started = time.perf_counter()
            response = api.handler(event, context)
            spent = (time.perf_counter() - started) * 1000
        expect(response, status, "the in-process handler")
        return spent

    def in_process(event: dict[str, Any], status: int) -> float:
        spent = call(event, status)
        for ids in deferred:  # untimed: the relay is not the answer's
            get_services().handoff.relay(ids)
        deferred.clear()
        return spent

    for i in range(3):  # the first request creates clients, a data key, the connection
        in_process(lead_event(f"recorded-warmup-{i}"), 201)
    bare.record(lambda: call(lead_event("recorded"), 201))
    in_process(not_found_event(), 404)  # relays the recorded request's rows
    shapes = [" ".join(str(q).split())[:30] for q, _ in bare.statements]
    if len(shapes) != 5 or not shapes[0].startswith("SELECT id FROM clinics"):
        raise RuntimeError(f"unexpected statements for one POST: {shapes}")
    bare.open()
    with aws_proxy(moto) as fast_proxy, aws_proxy(moto) as slow_proxy:
        slow_proxy.delays = dict.fromkeys(RELAY_TARGETS, RELAY_DELAY_SECONDS)
        fast = start_environment(BUILT_API, [BUILT_LAYER], stack.environment(fast_proxy.url))
        slow = start_environment(BUILT_API, [BUILT_LAYER], stack.environment(slow_proxy.url))
        try:
            fast.wait_initialised()
            slow.wait_initialised()
            samples: dict[str, list[float]] = {
                k: [] for k in ("fast", "slow", "bare", "in_process", "floor", "in_process_floor")
            }
            phases: dict[str, list[float]] = {"fast": [], "slow": [], "floor": []}

            def lambda_post(env: Any, key: str, tag: str) -> None:
                answered, response, phase = timed_invoke(env, lead_event(tag))
                expect(response, 201, f"POST /public/leads ({key})")
                samples[key].append(answered)
                phases[key].append(phase.invoke_phase_ms)

            def floor() -> None:
                answered, response, phase = timed_invoke(fast, not_found_event())
                expect(response, 404, "the unknown route")
                samples["floor"].append(answered)
                phases["floor"].append(phase.invoke_phase_ms)

            steps: list[Callable[[int], None]] = [
                lambda i: lambda_post(fast, "fast", f"fast-{i}"),
                lambda i: samples["bare"].append(bare.run()),
                lambda i: lambda_post(slow, "slow", f"slow-{i}"),
                lambda i: samples["in_process"].append(in_process(lead_event(f"inproc-{i}"), 201)),
                lambda i: floor(),
                lambda i: samples["in_process_floor"].append(in_process(not_found_event(), 404)),
            ]
            for i in range(WARM_WARMUP + WARM_ROUNDS):
                if i % PURGE_EVERY == 0:
                    purge_notifications()
                if i == WARM_WARMUP:
                    for values in (*samples.values(), *phases.values()):
                        values.clear()
                shift = i % len(steps)
                for step in steps[shift:] + steps[:shift]:
                    step(i)
        finally:
            fast.shutdown()
            slow.shutdown()
    bare.close()
    with psycopg.connect(stack.database_url) as conn:
        conn.execute(
            "UPDATE outbox SET sent_at = now() WHERE request_id = %s AND sent_at IS NULL",
            (BARE_REQUEST_ID,),
        )
    left_unsent = unsent_rows(stack.database_url)
    stats = {key: summary(values) for key, values in samples.items()}
    phase_stats = {key: summary(values) for key, values in phases.items()}
    relay_after = [p - a for p, a in zip(phases["slow"], samples["slow"], strict=True)]
    report.details["warm"] = {
        "rounds": WARM_ROUNDS,
        "relay_delay_s": RELAY_DELAY_SECONDS,
        "answer": stats,
        "invoke_phase": phase_stats,
        "slow_relay_after_the_answer": summary(relay_after),
        "rows_left_unsent": left_unsent,
        "bare_sql_statements": [" ".join(q.split())[:120] for q, _ in bare.statements],
        "load_average_start_end": [load_start, load()],
        "samples_ms": {key: [round(v, 3) for v in values] for key, values in samples.items()},
    }
    if left_unsent:
        raise RuntimeError(f"{left_unsent} outbox rows were not relayed")

    f, s = stats["fast"], stats["slow"]
    report.add(
        Row(
            "POST /public/leads, AWS endpoint answering after 200 ms, p50",
            fmt_ms(s["p50_ms"]),
            f"fast endpoint: {fmt_ms(f['p50_ms'])}",
            ratio(s["p50_ms"], f["p50_ms"]),
            "<= 1.2x",
        )
    )
    report.add(
        Row(
            "the same, p99",
            fmt_ms(s["p99_ms"]),
            f"fast endpoint: {fmt_ms(f['p99_ms'])}",
            ratio(s["p99_ms"], f["p99_ms"]),
            "-",
        )
    )
    report.add(
        Row(
            "the same: invoke phase (the relay after the answer), p50",
            fmt_ms(phase_stats["slow"]["p50_ms"]),
            f"fast endpoint: {fmt_ms(phase_stats['fast']['p50_ms'])}",
            ratio(phase_stats["slow"]["p50_ms"], phase_stats["fast"]["p50_ms"]),
            f"relay after the answer; every row sent ({left_unsent} left)",
        )
    )
    b = stats["bare"]
    report.add(
        Row(
            "warm POST /public/leads through the handler (Lambda path), p50",
            fmt_ms(f["p50_ms"]),
            f"the same {len(bare.statements)} SQL statements bare in one transaction: "
            f"{fmt_ms(b['p50_ms'])}",
            ratio(f["p50_ms"], b["p50_ms"]),
            "<= 2x",
        )
    )
    report.add(
        Row(
            "the same, p99",
            fmt_ms(f["p99_ms"]),
            f"bare SQL: {fmt_ms(b['p99_ms'])}",
            ratio(f["p99_ms"], b["p99_ms"]),
            "-",
        )
    )
    ip, fl, ipf = stats["in_process"], stats["floor"], stats["in_process_floor"]
    report.add(
        Row(
            "where it goes: the handler in process (no runtime), p50",
            fmt_ms(ip["p50_ms"]),
            f"bare SQL: {fmt_ms(b['p50_ms'])}",
            ratio(ip["p50_ms"], b["p50_ms"]),
            "-",
        )
    )
    report.add(
        Row(
            "where it goes: unknown route (404) through the Lambda path, p50",
            fmt_ms(fl["p50_ms"]),
            f"the same in process: {fmt_ms(ipf['p50_ms'])}",
            f"runtime + loopback: {fl['p50_ms'] - ipf['p50_ms']:.2f} ms",
            "-",
        )
    )


def bench_nagle(report: Report, stack: Stack, moto: Moto) -> None:
    """The stock loopback Runtime API (Nagle on) against the bench's (off), interleaved."""
    log(f"1b. stock loopback Runtime API (Nagle's algorithm on) x {NAGLE_ROUNDS}")
    with aws_proxy(moto) as proxy:
        stock = start_environment(
            BUILT_API, [BUILT_LAYER], stack.environment(proxy.url), nagle=True
        )
        tuned = start_environment(BUILT_API, [BUILT_LAYER], stack.environment(proxy.url))
        try:
            stock.wait_initialised()
            tuned.wait_initialised()
            samples: dict[str, list[float]] = {"stock": [], "tuned": []}
            for i in range(5 + NAGLE_ROUNDS):
                for key, env in (("stock", stock), ("tuned", tuned))[:: 1 if i % 2 else -1]:
                    answered, response, _ = timed_invoke(env, not_found_event())
                    expect(response, 404, "the unknown route")
                    if i >= 5:
                        samples[key].append(answered)
        finally:
            stock.shutdown()
            tuned.shutdown()
    stats = {key: summary(values) for key, values in samples.items()}
    report.details["loopback_nagle"] = stats
    report.add(
        Row(
            "local runtime as shipped (Nagle on loopback): unknown route (404), p50",
            fmt_ms(stats["stock"]["p50_ms"]),
            f"TCP_NODELAY (the bench's setting): {fmt_ms(stats['tuned']['p50_ms'])}",
            f"+{stats['stock']['p50_ms'] - stats['tuned']['p50_ms']:.1f} ms",
            "- (an artifact of the local runtime)",
        )
    )


# ---------------------------------------------------------------- 2. endpoint that hangs


@contextlib.contextmanager
def services_on(database_url: str, **settings: Any) -> Iterator[Any]:
    """This process's services on another database (and settings), for a moment."""
    from frontdesk.config import Settings
    from frontdesk.services import Services, use_services

    services = Services(Settings(database_url=database_url, **settings))
    use_services(services)
    try:
        yield services
    finally:
        use_services(None)


def drain_job_ids(queue_url: str) -> list[str]:
    """The jobIds of every message on the queue (received once each, not deleted)."""
    from frontdesk.services import get_services

    sqs = get_services().aws.client("sqs")
    found: list[str] = []
    while True:
        answer = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=300, WaitTimeSeconds=0
        )
        messages = answer.get("Messages", [])
        if not messages:
            return found
        found += [json.loads(m["Body"])["jobId"] for m in messages]


def bench_hang(report: Report, stack: Stack, moto: Moto, postgres: Postgres) -> None:
    from local.functions import LocalFunction
    from tests.aws_proxy import RELAY_TARGETS
    from tests.support import LambdaContext, load_handler

    log(f"2. an AWS endpoint that never answers: {HANG_REQUESTS} + {HANG_BACK_TO_BACK} POSTs")
    load_start = load()
    database_url = postgres.fresh_database("frontdesk_bench_hang")
    with services_on(database_url):
        seed_clinic()
    from frontdesk.config import Settings

    default_budget = Settings.model_fields["relay_budget_seconds"].default
    budget_ms = float(stack.environment("").get("RELAY_BUDGET_SECONDS", default_budget)) * 1000
    answers: list[float] = []
    relays: list[float] = []
    back_to_back: list[float] = []
    with aws_proxy(moto) as proxy:
        proxy.hanging = set(RELAY_TARGETS)
        environment = stack.environment(proxy.url, database_url)
        env = start_environment(BUILT_API, [BUILT_LAYER], environment)
        try:
            env.wait_initialised()
            _, response, _ = timed_invoke(env, lead_event("hang-cold"))  # the cold start, apart
            expect(response, 201, "POST /public/leads (hung endpoint, cold)")
            for i in range(HANG_REQUESTS):
                answered, response, phase = timed_invoke(env, lead_event(f"hang-{i}"))
                expect(response, 201, "POST /public/leads (hung endpoint)")
                answers.append(answered)
                relays.append(phase.invoke_phase_ms - answered)
        finally:
            env.shutdown()
        # The local runtime's pool of one environment: a request waits for the last one's
        # invoke phase, as Lambda holds a busy environment.
        spec = dataclasses.replace(stack.api_spec(), code_uri=BUILT_API, layers=(BUILT_LAYER,))
        function = LocalFunction(spec, environment, concurrency=1)
        try:
            function.invoke(lead_event("pool-cold"))
            time.sleep(budget_ms / 1000 + 1)  # the cold request's relay, apart
            for i in range(HANG_BACK_TO_BACK + 1):
                started = time.perf_counter()
                expect(function.invoke(lead_event(f"pool-{i}")), 201, "POST (pool of one)")
                if i > 0:  # the first found the environment idle
                    back_to_back.append((time.perf_counter() - started) * 1000)
        finally:
            time.sleep(budget_ms / 1000 + 1)  # let the last relay give up
            function.stop()
    leads = 2 + HANG_REQUESTS + HANG_BACK_TO_BACK + 1
    unsent_before = unsent_rows(database_url)
    with services_on(database_url, outbox_sweep_min_age_seconds=0) as services:
        queue_url = services.settings.notifications_queue_url
        services.aws.client("sqs").purge_queue(QueueUrl=queue_url)
        sweeper = load_handler("outbox_sweeper")
        with stdout_to_devnull():
            first = sweeper.handler({}, LambdaContext())
            second = sweeper.handler({}, LambdaContext())
        job_ids = drain_job_ids(queue_url)
        services.aws.client("sqs").purge_queue(QueueUrl=queue_url)
    with psycopg.connect(database_url) as conn:
        jobs = {str(r[0]) for r in conn.execute("SELECT id FROM jobs").fetchall()}
    unsent_after = unsent_rows(database_url)
    once = sorted(job_ids) == sorted(jobs) and len(job_ids) == len(set(job_ids)) == leads
    answer_stats, relay_stats = summary(answers), summary(relays)
    pool_stats = summary(back_to_back)
    report.details["hung_endpoint"] = {
        "relay_budget_ms": budget_ms,
        "answer": answer_stats,
        "relay_after_the_answer": relay_stats,
        "back_to_back_on_a_pool_of_one": pool_stats,
        "samples_ms": {
            "answer": [round(v, 1) for v in answers],
            "relay": [round(v, 1) for v in relays],
            "back_to_back": [round(v, 1) for v in back_to_back],
        },
        "leads": leads,
        "rows_unsent_before_the_sweep": unsent_before,
        "first_sweep": first,
        "second_sweep": second,
        "queue_messages": len(job_ids),
        "distinct_job_ids": len(set(job_ids)),
        "jobs": len(jobs),
        "rows_unsent_after": unsent_after,
        "load_average_start_end": [load_start, load()],
    }
    if not once or first["sent"] != unsent_before or second["sent"] or unsent_after:
        raise RuntimeError(f"the sweep did not deliver every row once: {report.details}")
    report.add(
        Row(
            "POST /public/leads, AWS endpoint never answers, answer p99",
            fmt_ms(answer_stats["p99_ms"]),
            f"relay budget: {fmt_ms(budget_ms)}",
            ratio(answer_stats["p99_ms"], budget_ms),
            "under the relay budget",
        )
    )
    report.add(
        Row(
            "the same: the relay after the answer (invoke phase - answer), p99",
            fmt_ms(relay_stats["p99_ms"]),
            f"relay budget: {fmt_ms(budget_ms)}",
            ratio(relay_stats["p99_ms"], budget_ms),
            "the budget",
        )
    )
    report.add(
        Row(
            "the same: next request on a pool of one environment, back to back, p99",
            fmt_ms(pool_stats["p99_ms"]),
            f"relay budget: {fmt_ms(budget_ms)}",
            ratio(pool_stats["p99_ms"], budget_ms),
            "budget + its own answer",
        )
    )
    report.add(
        Row(
            "then the OutboxSweeper",
            f"sent {first['sent']} of {unsent_before} rows ({leads} leads: job message + "
            f"event each); queue: {len(job_ids)} messages, {len(set(job_ids))} distinct jobs "
            f"of {len(jobs)}; second sweep sent {second['sent']}",
            "-",
            "-",
            "every row once",
        )
    )


# ---------------------------------------------------------------- 3. cold path


@dataclass
class ColdVariant:
    name: str
    code_dir: Path
    python_path: list[Path]
    environment: dict[str, str]
    event: Callable[[int], dict[str, Any]]
    status: int
    snap_start: bool = False


def bare_app_dir(root: Path) -> Path:
    directory = root / "bare"
    directory.mkdir()
    (directory / "handler.py").write_text(BARE_APP)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash", "."],
        cwd=directory,
        check=True,
    )
    return directory


def without_bytecode(root: Path) -> tuple[Path, Path]:
    """A copy of the built function and layer with every __pycache__ removed."""
    ignore = shutil.ignore_patterns("__pycache__")
    code = shutil.copytree(BUILT_API, root / "nobytecode" / "ApiFunction", ignore=ignore)
    layer = shutil.copytree(BUILT_LAYER, root / "nobytecode" / "layer" / "python", ignore=ignore)
    return code, layer


def run_cold(variant: ColdVariant, run: int) -> dict[str, float]:
    env = start_environment(
        variant.code_dir,
        variant.python_path,
        variant.environment,
        snap_start=variant.snap_start,
        name="Bare" if variant.name == "bare" else "ApiFunction",
    )
    try:
        result = {"init_ms": env.wait_initialised()}
        if variant.snap_start:
            result["restore_ms"] = env.restore()
        answered, response, _ = timed_invoke(env, variant.event(run))
        expect(response, variant.status, f"the first request ({variant.name})")
        result["first_request_ms"] = answered
    finally:
        env.shutdown()
    return result


def import_time(code_dir: Path, layer: Path, environment: dict[str, str]) -> float:
    """ms to import the handler module (the init) in a fresh interpreter."""
    env = {**environment, "PYTHONPATH": f"{code_dir}{os.pathsep}{layer}"}
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_SNIPPET],
        cwd=code_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"import of {code_dir} failed:\n{done.stderr[-2000:]}")
    init_s: float = json.loads(lines[-1].removeprefix("BENCH "))["init_s"]
    return init_s * 1000


def importtime_profile(environment: dict[str, str]) -> dict[str, list[str]]:
    """The slowest top-level imports of ApiFunction (built) under awslambdaric
    (PYTHONPROFILEIMPORTTIME), during init and during the first request."""
    lines: dict[str, list[str]] = {"init": [], "first_request": []}
    phase = ["init"]

    def collect(line: str) -> None:
        if line.startswith("import time:"):
            lines[phase[0]].append(line)

    env = start_environment(
        BUILT_API,
        [BUILT_LAYER],
        {**environment, "PYTHONPROFILEIMPORTTIME": "1"},
        on_output=collect,
    )
    try:
        env.wait_initialised()
        time.sleep(0.5)  # frozen: what is still in the pipe is init's
        phase[0] = "first_request"
        _, response, _ = timed_invoke(env, lead_event("importtime"))
        expect(response, 201, "the first request (importtime)")
        time.sleep(0.5)
    finally:
        env.shutdown()
    top: dict[str, list[str]] = {}
    for name, found in lines.items():
        entries: list[tuple[int, str]] = []
        for line in found:
            if "[us]" in line:
                continue
            _, cumulative, module = line.split("|")
            if not module[1:].startswith(" "):  # nested imports are indented
                entries.append((int(cumulative), module.strip()))
        top[name] = [f"{m} {us / 1000:.0f} ms" for us, m in sorted(entries, reverse=True)[:10]]
    return top


def bench_cold(report: Report, stack: Stack, moto: Moto) -> None:
    from tests.support import http_event

    log(f"3. cold path: {COLD_ROUNDS} rounds (+1 warm-up) of 4 variants, interleaved")
    load_start = load()
    with tempfile.TemporaryDirectory() as tmp, aws_proxy(moto) as proxy:
        root = Path(tmp)
        api_env = stack.environment(proxy.url)
        bare_env = {k: v for k, v in api_env.items() if k in ("PATH", "HOME", "LANG", "TZ")}
        bare_env |= {k: v for k, v in api_env.items() if k.startswith("AWS_")}
        bare_dir = bare_app_dir(root)
        nobc_code, nobc_layer = without_bytecode(root)

        def post(run: int) -> dict[str, Any]:
            return lead_event(f"cold-{run}-{uuid.uuid4().hex[:8]}")

        variants = [
            ColdVariant(
                "bare", bare_dir, [BUILT_LAYER], bare_env, lambda _: http_event("GET", "/"), 200
            ),
            ColdVariant("api", BUILT_API, [BUILT_LAYER], api_env, post, 201),
            ColdVariant(
                "api_no_bytecode",
                nobc_code,
                [nobc_layer],
                {**api_env, "PYTHONDONTWRITEBYTECODE": "1"},
                post,
                201,
            ),
            ColdVariant("snapstart", BUILT_API, [BUILT_LAYER], api_env, post, 201, True),
        ]
        runs: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
        imports: dict[str, list[float]] = {"bare": [], "api": []}
        for run in range(COLD_ROUNDS + 1):  # round 0 warms the page cache
            shift = run % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                result = run_cold(variant, run)
                if run > 0:
                    runs[variant.name].append(result)
            for name, code, layer, env in (
                ("bare", bare_dir, BUILT_LAYER, bare_env),
                ("api", BUILT_API, BUILT_LAYER, api_env),
            )[:: 1 if run % 2 else -1]:
                spent = import_time(code, layer, env)
                if run > 0:
                    imports[name].append(spent)
        log("3. -X importtime of the built ApiFunction under awslambdaric (untimed)")
        top = importtime_profile(api_env)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    def cold_path(name: str) -> float:
        return statistics.median(r["init_ms"] + r["first_request_ms"] for r in runs[name])

    bare_init = med("bare", "init_ms")
    api_path, nobc_path = cold_path("api"), cold_path("api_no_bytecode")
    snap_path = statistics.median(
        r["restore_ms"] + r["first_request_ms"] for r in runs["snapstart"]
    )
    per_round_snap = [
        (s["restore_ms"] + s["first_request_ms"]) / (a["init_ms"] + a["first_request_ms"])
        for s, a in zip(runs["snapstart"], runs["api"], strict=True)
    ]
    import_bare, import_api = statistics.median(imports["bare"]), statistics.median(imports["api"])
    report.details["cold"] = {
        "init_is": "Environment.init_ms: process start to the runtime's first /next "
        "(interpreter, awslambdaric, the handler module, the extension's registration)",
        "rounds": COLD_ROUNDS,
        "runs_ms": {
            name: [{k: round(v, 1) for k, v in r.items()} for r in rs] for name, rs in runs.items()
        },
        "median_ms": {
            name: {key: round(med(name, key), 1) for key in rs[0]} for name, rs in runs.items()
        },
        "cold_path_median_ms": {"api": round(api_path, 1), "api_no_bytecode": round(nobc_path, 1)},
        "snapstart_restore_plus_first_request_median_ms": round(snap_path, 1),
        "snapstart_per_round_ratio": [round(r, 3) for r in per_round_snap],
        "in_process_import_ms": {k: [round(v, 1) for v in vs] for k, vs in imports.items()},
        "importtime_top_level_built_api": top,
        "load_average_start_end": [load_start, load()],
    }
    report.sections["ApiFunction (built) under awslambdaric: slowest top-level imports"] = [
        f"{phase}: {', '.join(names)}" for phase, names in top.items()
    ]
    report.add(
        Row(
            "cold path: ApiFunction (built, bytecode) init + first POST, median",
            f"{fmt_ms(api_path)} ({fmt_ms(med('api', 'init_ms'))} init + "
            f"{fmt_ms(med('api', 'first_request_ms'))} request)",
            f"bare FastAPI + Mangum one-route app, init: {fmt_ms(bare_init)}",
            ratio(api_path, bare_init),
            "<= 1.3x",
        )
    )
    report.add(
        Row(
            "the same without bytecode (no __pycache__, read-only as in Lambda)",
            f"{fmt_ms(nobc_path)} ({fmt_ms(med('api_no_bytecode', 'init_ms'))} init + "
            f"{fmt_ms(med('api_no_bytecode', 'first_request_ms'))} request)",
            f"bare app init: {fmt_ms(bare_init)}; with bytecode: {fmt_ms(api_path)}",
            f"{ratio(nobc_path, bare_init)}; {ratio(nobc_path, api_path)} of bytecode",
            "-",
        )
    )
    report.add(
        Row(
            "init only, in-process import in a fresh interpreter (built, bytecode)",
            f"ApiFunction: {fmt_ms(import_api)}",
            f"bare app: {fmt_ms(import_bare)}",
            ratio(import_api, import_bare),
            "-",
        )
    )
    report.add(
        Row(
            "SnapStart: restore hooks + first POST, median",
            f"{fmt_ms(snap_path)} ({fmt_ms(med('snapstart', 'restore_ms'))} hooks + "
            f"{fmt_ms(med('snapstart', 'first_request_ms'))} request)",
            f"full cold path (on demand, bytecode): {fmt_ms(api_path)}",
            ratio(snap_path, api_path),
            "<= 0.25x",
        )
    )


# ---------------------------------------------------------------- 4. NotifyWorker


class TimedMailer:
    """The real mailer, with the time spent inside send_templated (the SES call) counted."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0

    def send_templated(self, *, sender: str, template: str, emails: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.inner.send_templated(sender=sender, template=template, emails=emails)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1


class InstantMailer:
    """SES answering at once (for the profile of the worker's own time)."""

    def send_templated(self, *, sender: str, template: str, emails: Any) -> list[str]:
        return [f"instant-{uuid.uuid4()}" for _ in emails]


class TimedDatabase:
    """The real database, with the time spent inside its connections (transactions) counted."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        started = time.perf_counter()
        try:
            with self.inner.connection() as conn:
                yield conn
        finally:
            self.seconds += time.perf_counter() - started

    def close(self) -> None:
        self.inner.close()


def bench_notify(report: Report, moto: Moto, database_url: str, clinic_id: uuid.UUID) -> None:
    from bench.run import enqueue_notify_jobs, job_statuses
    from frontdesk.notifications.channels import SesMailer
    from frontdesk.platform.db import SingleConnectionDatabase
    from frontdesk.services import Services, get_services, use_services
    from tests.support import LambdaContext, load_handler, sqs_event

    sizes = (10, 50)
    per_round = {10: 5, 50: 1}
    log(f"4. NotifyWorker: {NOTIFY_ROUNDS} rounds of 5 batches of 10 and 1 of 50")
    load_start = load()
    current = get_services()
    settings = current.settings
    mailer = TimedMailer(SesMailer(current.aws))
    database = TimedDatabase(
        SingleConnectionDatabase(
            lambda: database_url,
            settings.db_connect_timeout_seconds,
            settings.db_statement_timeout_ms,
        )
    )
    use_services(Services(settings, aws=current.aws, database=database, mailer=mailer))
    worker = load_handler("notify_worker")
    context = LambdaContext()
    bodies = {
        size: enqueue_notify_jobs(database_url, clinic_id, size * per_round[size] * NOTIFY_ROUNDS)
        for size in sizes
    }
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ANALYZE")  # statistics, as a live database has them, before any plan
    batches: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}

    def run_batch(size: int, batch: list[str], tag: str) -> dict[str, float]:
        event = sqs_event(batch, request_id=tag)
        ses, db = mailer.seconds, database.seconds
        started = time.perf_counter()
        answer = worker.handler(event, context)
        total = time.perf_counter() - started
        if answer["batchItemFailures"]:
            raise RuntimeError(f"NotifyWorker failed records: {answer}")
        return {
            "total_ms": total * 1000,
            "ses_ms": (mailer.seconds - ses) * 1000,
            "db_ms": (database.seconds - db) * 1000,
        }

    emails_before = moto.emails_sent()
    with stdout_to_devnull():
        for size in sizes:  # connections, clients, the first SES call
            run_batch(size, enqueue_notify_jobs(database_url, clinic_id, size), "bench-warmup")
        emails_before = moto.emails_sent()
        cursor = dict.fromkeys(sizes, 0)
        for run in range(NOTIFY_ROUNDS):
            order = sizes if run % 2 else sizes[::-1]
            for size in order:
                for _ in range(per_round[size]):
                    batch = bodies[size][cursor[size] : cursor[size] + size]
                    cursor[size] += size
                    batches[size].append(run_batch(size, batch, f"bench-{size}-{run}"))
        # The profile is of the worker's own time: SES is a stand-in that answers at once.
        sent = moto.emails_sent() - emails_before
        mailer.inner = InstantMailer()
        profile = cProfile.Profile()
        profile_events = [
            sqs_event(enqueue_notify_jobs(database_url, clinic_id, 50)) for _ in range(PROFILED)
        ]
        profile.enable()
        for event in profile_events:
            worker.handler(event, context)
        profile.disable()
    statuses = {size: job_statuses(database_url, bodies[size]) for size in sizes}
    jobs_total = sum(len(b) for b in bodies.values())
    if sent != jobs_total or any(s != {"succeeded": len(bodies[k])} for k, s in statuses.items()):
        raise RuntimeError(f"NotifyWorker bookkeeping is off: {sent} emails, {statuses}")
    use_services(None)

    entries = pstats.Stats(profile).stats.items()  # type: ignore[attr-defined]
    profile_lines = [f"{'cumulative':>10} {'own':>9} {'calls':>6}  function"]
    for (path, line, name), stat in sorted(entries, key=lambda e: -e[1][3])[:30]:
        _, calls, own, cumulative, _ = stat
        for prefix in (str(REPO) + "/", "site-packages/"):
            path = path.split(prefix, 1)[-1]
        profile_lines.append(
            f"{cumulative / PROFILED * 1000:8.2f}ms {own / PROFILED * 1000:7.2f}ms "
            f"{calls // PROFILED:>6}  {path}:{line}({name})"
        )
    title = (
        f"NotifyWorker: a batch of 50 under cProfile (mean of {PROFILED}; SES answering at "
        "once), top 30 by cumulative time"
    )
    report.sections[title] = profile_lines

    results: dict[int, dict[str, Any]] = {}
    for size in sizes:
        done = batches[size]
        jobs = size * len(done)
        total = sum(b["total_ms"] for b in done) / 1000
        ses = sum(b["ses_ms"] for b in done) / 1000
        db = sum(b["db_ms"] for b in done) / 1000
        results[size] = {
            "batches": len(done),
            "jobs": jobs,
            "jobs_per_s_excluding_ses": round(jobs / (total - ses), 1),
            "jobs_per_s_including_ses": round(jobs / total, 1),
            "jobs_per_s_excluding_ses_from_the_median_batch": round(
                size * 1000 / statistics.median(b["total_ms"] - b["ses_ms"] for b in done), 1
            ),
            "seconds": {
                "total": round(total, 3),
                "ses": round(ses, 3),
                "transactions": round(db, 3),
            },
            "per_batch_ms": {
                "total_p50": round(statistics.median(b["total_ms"] for b in done), 3),
                "ses_p50": round(statistics.median(b["ses_ms"] for b in done), 3),
                "transactions_p50": round(statistics.median(b["db_ms"] for b in done), 3),
                "rest_p50": round(
                    statistics.median(b["total_ms"] - b["ses_ms"] - b["db_ms"] for b in done), 3
                ),
            },
        }
    report.details["notify"] = {
        "results": results,
        "emails_sent": sent,
        "job_statuses": {str(k): v for k, v in statuses.items()},
        "load_average_start_end": [load_start, load()],
    }
    for size in sizes:
        r = results[size]
        split = r["per_batch_ms"]
        report.add(
            Row(
                f"NotifyWorker, BatchSize {size}, excluding the SES call",
                f"{r['jobs_per_s_excluding_ses']:,.0f} jobs/s ({r['jobs']} jobs; per batch p50: "
                f"{split['transactions_p50']:.1f} ms in the two transactions + "
                f"{split['rest_p50']:.1f} ms rest; SES {split['ses_p50']:.1f} ms apart)",
                f"pg-boss on 4 CPUs: 2,387 jobs/s; with SES: {r['jobs_per_s_including_ses']:,.0f}",
                ratio(r["jobs_per_s_excluding_ses"], 2400),
                ">= 2,400 jobs/s",
            )
        )


# ---------------------------------------------------------------- main


def write_response_results(
    report: Report, postgres: Postgres, elapsed_s: float, loads: list[Any]
) -> str:
    import moto

    meta = {
        **run_meta(postgres),
        "moto": moto.__version__,
        "elapsed_s": round(elapsed_s, 1),
        "load_average_1_5_15_at_start_and_end": loads,
    }
    notes = {
        "How to read it": [
            "ApiFunction runs from .aws-sam/build under awslambdaric (local.lambda_runtime),",
            "against moto (in this process) through AwsProxy. A request's time is until",
            "Environment.invoke() returns the response; the relay runs after it, in the",
            "invoke phase. Loopback servers run with TCP_NODELAY (see the module docstring);",
            "the stock setting adds the 40 ms delayed-ACK stall measured in its own row.",
            "Init is Environment.init_ms (process start to the runtime's first /next) for",
            "both the ApiFunction and the bare app; the in-process import row is the other way",
            "(import in a fresh interpreter), again for both. Bare SQL: the statements the",
            "handler ran for one POST (recorded), in one transaction, fresh values each time.",
            "NotifyWorker: the handler in process; SES is the time inside",
            "Mailer.send_templated, the transactions the time inside database.connection().",
        ]
    }
    start, end = loads
    body = "\n".join(
        [
            f"`python -m bench.response` on {meta['date']}: Python {meta['python']}, "
            f"{meta['cpu_count']} CPUs, PostgreSQL {postgres.version} ({postgres.source}), "
            f"moto {meta['moto']} in process; {meta['elapsed_s']} s in all; load average "
            f"(1, 5, 15 min) {start} at the start, {end} at the end (other test suites run "
            "on the same machine). Baselines are measured in the same run, interleaved.",
            f"Details (every sample): {NAME}.json.",
            "",
            markdown_table(report.rows),
            *markdown_sections({**report.sections, **notes}),
            "",
        ]
    )
    title = "Response path, cold start and NotifyWorker batches"
    return write_results(NAME, title, report, meta=meta, body=body)


def main() -> None:
    from bench.common import export_stack
    from tests.support import reset_process_state

    check_build()
    started = time.perf_counter()
    loads = [load()]
    report = Report()
    with contextlib.ExitStack() as cleanup:
        log("starting PostgreSQL and moto")
        postgres = start_postgres()
        cleanup.callback(postgres.drop_created)
        database_url = postgres.fresh_database("frontdesk_bench_response")
        moto = start_moto()
        cleanup.callback(moto.server.stop)
        provisioned = export_stack(moto, database_url)
        clinic_id = seed_clinic()
        stack = Stack(provisioned, database_url, clinic_id)
        log(f"PostgreSQL {postgres.version} ({postgres.source}), moto at {moto.url}")

        bench_hang(report, stack, moto, postgres)
        bench_warm(report, stack, moto)
        bench_nagle(report, stack, moto)
        bench_cold(report, stack, moto)
        bench_notify(report, moto, database_url, clinic_id)
        reset_process_state()  # closes this process's connection before the DROP
    loads.append(load())
    elapsed = time.perf_counter() - started
    table = write_response_results(report, postgres, elapsed, loads)
    print()
    print(table)
    print(f"\n{elapsed:.1f} s; results in {RESULTS.relative_to(REPO)}/{NAME}.{{json,md}}")


if __name__ == "__main__":
    main()
