"""Benchmark of the assistant chat: accept (202) versus waiting for the model inline.

    PYTHONPATH=layers/frontdesk:. .venv/bin/python -m bench.assistant

With the model (local/fake_llm.py, real HTTP on loopback) answering after 3 s:
1. 100 concurrent POST /assistant/conversations/{id}/messages through ApiFunction's real
   handler (Mangum + FastAPI + PostgreSQL + the outbox relay to moto's SQS), next to the
   same 100 through a blocking variant of the route that, after the same transaction,
   calls the model inline and writes the reply before answering. Both run in this one
   process on a thread per request (each thread its own "container").
2. The same two paths one request at a time, as a Lambda container serves them.
3. End to end through the local runtime (`python -m local.dev`, offline model): POST over
   HTTP -> reply readable by GET; and in this process with the 3 s model: POST -> LlmWorker
   (polling the queue as Lambda does) -> reply readable.
Every number is measured in this run next to its baseline; nothing asserts a timing.
Results: bench/results/assistant.json and bench/results/assistant.md.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import APIRouter

from bench.common import (
    PRISTINE_ENV,
    REPO,
    Report,
    Row,
    export_stack,
    latency_summary,
    log,
    postgres_and_moto,
    run_meta,
    seed_clinic,
    stdout_to_devnull,
    stop_runtime,
    wait_for_runtime,
    write_results,
)

# Module level: FastAPI resolves the blocking route's annotations in this module.
from frontdesk.assistant import conversations as assistant
from frontdesk.assistant.conversations import MessageOut, QuestionIn, ReplyAccepted
from frontdesk.web.auth import Staff
from frontdesk.web.context import Write
from frontdesk.web.http import Envelope

MODEL_DELAY_SECONDS = 3.0
CONCURRENT = 100
SEQUENTIAL = 30
SEQUENTIAL_BLOCKING = 3
E2E_QUESTIONS = 20
POOL_SIZE = 20


def ms(value: float) -> str:
    return f"{value:.1f} ms"


# ---------------------------------------------------------------- the two handlers


def blocking_handler() -> Any:
    """ApiFunction's app plus a blocking variant of the ask route, behind Mangum."""
    from mangum import Mangum

    from frontdesk.assistant import replies
    from frontdesk.platform.queues import JobKind, JobMessage
    from frontdesk.services import get_services
    from frontdesk.web.app import create_app
    from frontdesk.web.routes.assistant import budget

    router = APIRouter()

    @router.post("/assistant/conversations/{conversation_id}/messages:blocking")
    def ask_and_wait(
        staff: Staff, conversation_id: uuid.UUID, body: QuestionIn, web: Write
    ) -> Envelope[MessageOut]:
        # The accepting route's unit of work (question, reply row, job, outbox row, relay)...
        services = web.services
        settings = services.settings
        accepted = web.run(
            ReplyAccepted,
            "askAssistant",
            [str(conversation_id), body.model_dump()],
            staff.clinic_id,
            lambda uow: assistant.ask(
                uow,
                services.cipher,
                clinic_id=staff.clinic_id,
                conversation_id=conversation_id,
                question=body,
                budget=budget(settings),
            ),
        )
        # ... then LlmWorker's code inline, and the reply read back.
        message = JobMessage(
            job_id=accepted.job_id, kind=JobKind.ASSISTANT_REPLY, clinic_id=staff.clinic_id
        )
        replies.answer(
            services.database,
            services.cipher,
            services.chat_model,
            message,
            replies.WorkerPolicy(
                breaker_threshold=10_000,
                breaker_cooldown_seconds=1,
                history_messages=settings.llm_history_messages,
            ),
            timeout_seconds=settings.llm_timeout_seconds,
            last_attempt=True,
            relay=services.handoff,
        )
        reply = assistant.get_message(
            services.database, services.cipher, clinic_id=staff.clinic_id, message_id=accepted.id
        )
        return web.ok(reply, "askAndWait", "message")

    app = create_app(get_services().settings)
    app.include_router(router)
    return Mangum(app, lifespan="off", text_mime_types=["application/json"])


def run_concurrently(
    handler: Any, events: list[dict[str, Any]]
) -> tuple[float, list[float], set[int]]:
    """Release all requests at once, one thread each; (wall s, per-request s, statuses)."""
    from tests.support import LambdaContext

    start = threading.Barrier(len(events) + 1)
    statuses: set[int] = set()

    def one(event: dict[str, Any]) -> float:
        asyncio.set_event_loop(asyncio.new_event_loop())  # Mangum runs on the thread's loop
        start.wait()
        began = time.perf_counter()
        response = handler(event, LambdaContext())
        statuses.add(response["statusCode"])
        return time.perf_counter() - began

    with ThreadPoolExecutor(max_workers=len(events)) as pool:
        futures = [pool.submit(one, event) for event in events]
        start.wait()
        began = time.perf_counter()
        seconds = [future.result() for future in futures]
        wall = time.perf_counter() - began
    return wall, seconds, statuses


def ask_events(clinic_id: uuid.UUID, conversation_id: str, count: int, blocking: bool) -> list[Any]:
    from tests.support import http_event

    suffix = ":blocking" if blocking else ""
    return [
        http_event(
            "POST",
            f"/assistant/conversations/{conversation_id}/messages{suffix}",
            body={"content": f"How many new leads this week? ({i})"},
            clinic_id=clinic_id,
        )
        for i in range(count)
    ]


def new_conversation(api: Any, clinic_id: uuid.UUID) -> str:
    from tests.support import LambdaContext, http_event, http_response

    status, _, body = http_response(
        api.handler(
            http_event(
                "POST", "/assistant/conversations", body={"content": "hello"}, clinic_id=clinic_id
            ),
            LambdaContext(),
        )
    )
    assert status == 202, body
    return str(body["data"]["conversationId"])


def purge_llm_queue() -> None:
    from frontdesk.services import get_services

    services = get_services()
    sqs = services.aws.client("sqs")
    url = services.settings.llm_queue_url
    while sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        sqs.purge_queue(QueueUrl=url)


# ---------------------------------------------------------------- 1 + 2


def bench_accept_versus_blocking(report: Report, clinic_id: uuid.UUID) -> None:
    from tests.support import LambdaContext, load_handler

    api = load_handler("api")
    blocking = blocking_handler()
    conversation = new_conversation(api, clinic_id)
    with stdout_to_devnull():
        # warm both (imports, pool, clients, the model's connection)
        run_concurrently(api.handler, ask_events(clinic_id, conversation, 5, False))
        run_concurrently(blocking, ask_events(clinic_id, conversation, 2, True))
        log(f"1. {CONCURRENT} concurrent POSTs, accepting route")
        accept_wall, accept_s, accept_status = run_concurrently(
            api.handler, ask_events(clinic_id, conversation, CONCURRENT, False)
        )
        log(f"1. {CONCURRENT} concurrent POSTs, blocking route (model answers after 3 s)")
        block_wall, block_s, block_status = run_concurrently(
            blocking, ask_events(clinic_id, conversation, CONCURRENT, True)
        )
        log(f"2. one at a time: {SEQUENTIAL} accepting, {SEQUENTIAL_BLOCKING} blocking")
        one_accept = [
            timed(lambda e=e: api.handler(e, LambdaContext()))
            for e in ask_events(clinic_id, conversation, SEQUENTIAL, False)
        ]
        one_block = [
            timed(lambda e=e: blocking(e, LambdaContext()))
            for e in ask_events(clinic_id, conversation, SEQUENTIAL_BLOCKING, True)
        ]
    if accept_status != {202} or block_status != {200}:
        raise RuntimeError(f"statuses: accept {accept_status}, blocking {block_status}")
    accept, block = latency_summary(accept_s), latency_summary(block_s)
    seq_accept, seq_block = latency_summary(one_accept), latency_summary(one_block)
    report.details["concurrent"] = {
        "requests": CONCURRENT,
        "accept": {**accept, "wall_ms": round(accept_wall * 1000, 1)},
        "blocking": {**block, "wall_ms": round(block_wall * 1000, 1)},
    }
    report.details["one_at_a_time"] = {"accept": seq_accept, "blocking": seq_block}
    baseline = "blocking variant"
    report.add(
        Row(
            f"{CONCURRENT} concurrent POSTs, total wall time",
            ms(accept_wall * 1000),
            f"{baseline}: {ms(block_wall * 1000)}",
            f"{block_wall / accept_wall:.1f}x faster",
            "well under 1 s",
        )
    )
    for stat in ("p50", "p99"):
        key = f"{stat}_ms"
        report.add(
            Row(
                f"{CONCURRENT} concurrent POSTs, {stat}",
                ms(accept[key]),
                f"{baseline}: {ms(block[key])}",
                f"{block[key] / accept[key]:.1f}x faster",
                ">= 100x" if stat == "p50" else "-",
            )
        )
    report.add(
        Row(
            "one POST at a time (a Lambda container's view), p50",
            ms(seq_accept["p50_ms"]),
            f"{baseline}: {ms(seq_block['p50_ms'])}",
            f"{seq_block['p50_ms'] / seq_accept['p50_ms']:.0f}x faster",
            ">= 100x",
        )
    )
    report.add(
        Row(
            "one POST at a time, p99",
            ms(seq_accept["p99_ms"]),
            f"{baseline}: {ms(seq_block['p99_ms'])}",
            f"{seq_block['p99_ms'] / seq_accept['p99_ms']:.0f}x faster",
            "-",
        )
    )


def timed(call: Any) -> float:
    began = time.perf_counter()
    response = call()
    if response["statusCode"] not in (200, 202):
        raise RuntimeError(f"answered {response['statusCode']}")
    return time.perf_counter() - began


# ---------------------------------------------------------------- 3. end to end


def bench_end_to_end_in_process(report: Report, stack: Any, clinic_id: uuid.UUID) -> None:
    """POST -> LlmWorker polling like Lambda -> reply readable, with the 3 s model."""
    from local.sqs_source import poll_once
    from tests.support import LambdaContext, http_event, http_response, load_handler

    purge_llm_queue()
    api, worker = load_handler("api"), load_handler("llm_worker")
    source = next(s for s in stack.sqs_event_sources() if s.function_logical_id == "LlmWorker")
    conversation = new_conversation(api, clinic_id)
    purge_llm_queue()
    latencies = []
    with stdout_to_devnull():
        for i in range(3):
            began = time.perf_counter()
            _, _, body = http_response(
                api.handler(ask_events(clinic_id, conversation, 1, False)[0], LambdaContext())
            )
            poll_once(
                stack_sqs(),
                queue_url=source.queue_url,
                queue_arn=source.queue_arn,
                region="us-east-1",
                batch_size=source.batch_size,
                partial_batch_response=True,
                invoke=lambda event: worker.handler(event, LambdaContext()),
                wait_seconds=1,
            )
            event = http_event(
                "GET", f"/assistant/messages/{body['data']['id']}", clinic_id=clinic_id
            )
            _, _, reply = http_response(api.handler(event, LambdaContext()))
            if reply["data"]["status"] != "done":
                raise RuntimeError(f"reply {i} is {reply['data']['status']}")
            latencies.append(time.perf_counter() - began)
    summary = latency_summary(latencies)
    report.details["end_to_end_in_process_3s_model"] = summary
    report.add(
        Row(
            "E2E POST -> reply readable, 3 s model, in process (3 questions), p50",
            ms(summary["p50_ms"]),
            f"the model alone: {ms(MODEL_DELAY_SECONDS * 1000)}",
            f"+{summary['p50_ms'] - MODEL_DELAY_SECONDS * 1000:.0f} ms",
            "-",
        )
    )


def stack_sqs() -> Any:
    from frontdesk.services import get_services

    return get_services().aws.client("sqs")


def bench_end_to_end_local_runtime(report: Report, postgres: Any) -> None:
    import httpx

    log(f"3. end to end through python -m local.dev: {E2E_QUESTIONS} questions, offline model")
    state_dir = REPO / ".frontdesk" / "bench-assistant-dev"
    state_dir.mkdir(parents=True, exist_ok=True)
    dev_json = state_dir / "dev.json"
    dev_json.unlink(missing_ok=True)
    log_path = state_dir / "dev.log"
    env = {k: v for k, v in PRISTINE_ENV.items() if k != "AWS_ENDPOINT_URL"}
    env.update(
        DATABASE_URL=postgres.fresh_database("frontdesk_bench_chat", migrated=False),
        PYTHONPATH=f"{REPO / 'layers' / 'frontdesk'}{os.pathsep}{REPO}",
    )
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "local.dev", "--api-port", "0", "--ws-port", "0"),
                *("--state-dir", str(state_dir)),
            ],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    latencies, first = [], 0.0
    try:
        info = wait_for_runtime(process, dev_json, log_path)
        headers = {"Authorization": f"Bearer {info['staffToken']}"}
        with httpx.Client(base_url=info["apiUrl"], timeout=10, headers=headers) as client:
            for i in range(E2E_QUESTIONS + 1):
                began = time.perf_counter()
                answer = client.post(
                    "/assistant/conversations", json={"content": f"How many leads? ({i})"}
                )
                if answer.status_code != 202:
                    raise RuntimeError(f"POST answered {answer.status_code}")
                location = answer.headers["location"]
                while client.get(location).json()["data"]["status"] != "done":
                    if time.perf_counter() - began > 15:
                        raise RuntimeError(f"no reply 15 s after question {i}")
                    time.sleep(0.005)
                elapsed = time.perf_counter() - began
                if i == 0:
                    first = elapsed
                else:
                    latencies.append(elapsed)
    finally:
        stopped = stop_runtime(process)
    log(f"3. local.dev {stopped}")
    summary = latency_summary(latencies)
    report.details["end_to_end_local_runtime_offline"] = {
        **summary,
        "first_incl_worker_init_ms": round(first * 1000, 1),
    }
    report.add(
        Row(
            f"E2E POST -> reply readable via GET, local.dev, offline model ({E2E_QUESTIONS}), p50",
            ms(summary["p50_ms"]),
            f"first question incl. LlmWorker init: {ms(first * 1000)}",
            "-",
            "~2 s (make dev)",
        )
    )
    report.add(
        Row(
            "E2E POST -> reply readable via GET, local.dev, offline model, p99",
            ms(summary["p99_ms"]),
            "-",
            "-",
            "-",
        )
    )


# ---------------------------------------------------------------- main


def main() -> None:
    from frontdesk.platform.db import PooledDatabase
    from local.fake_llm import FakeLlm

    started = time.perf_counter()
    report = Report()
    with postgres_and_moto() as (postgres, moto):
        llm = FakeLlm(delay_seconds=MODEL_DELAY_SECONDS).start()
        try:
            database_url = postgres.fresh_database("frontdesk_bench_assistant")
            stack = export_stack(moto, database_url)
            os.environ.update(
                LLM_PROVIDER="openai",
                LLM_BASE_URL=llm.base_url,
                LLM_API_KEY="sk-bench",
                LLM_TIMEOUT_SECONDS="10",
                ASSISTANT_REQUESTS_PER_MINUTE="1000000",
                ASSISTANT_TOKENS_PER_DAY="1000000000",
            )
            from tests.support import reset_process_state, use_test_services

            # Settings read again (the LLM ones above); many requests at once in one process:
            # a pool, as the local server has.
            use_test_services(database=PooledDatabase(database_url, 5, 30_000, POOL_SIZE))
            clinic_id = seed_clinic()
            bench_accept_versus_blocking(report, clinic_id)
            bench_end_to_end_in_process(report, stack, clinic_id)
            reset_process_state()
            bench_end_to_end_local_runtime(report, postgres)
        finally:
            llm.stop()
    meta = {
        **run_meta(postgres),
        "model_delay_s": MODEL_DELAY_SECONDS,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    notes = [
        "The model is local/fake_llm.py over real HTTP on loopback, answering after 3 s.",
        "Concurrent: one thread per request in this one process (each with its own event",
        f"loop for Mangum), a {POOL_SIZE}-connection pool, moto in the same process. So",
        f"the accepting requests share {os.cpu_count()} CPUs and one GIL, where in AWS each",
        "would have its own Lambda container; the one-at-a-time rows show a container's view.",
        "The blocking variant runs the same transaction, then the worker's code inline.",
        "The local runtime (local.dev) uses the offline model: the template's LlmProvider",
        "parameter is `offline` and local.dev takes every setting from the template.",
    ]
    print(write_results("assistant", "Assistant benchmark", report, meta=meta, notes=notes))


if __name__ == "__main__":
    main()
