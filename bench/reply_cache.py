"""Benchmark of the assistant's reply cache: a hit answered in the POST versus the model.

    PYTHONPATH=layers/frontdesk:. .venv/bin/python -m bench.reply_cache

Through ApiFunction's and LlmWorker's real handlers (Mangum + FastAPI + PostgreSQL + the
outbox relay to moto), with the model (local/fake_llm.py, real HTTP on loopback) answering
after 1 s:
1. a cache hit: POST a question answered before -> 201 with the answer in the body
   (the lookup, the unit of work, the text read back), one request at a time, timed to
   its response (the relay of its `assistant.reply.done` follows, as Lambda's extension
   runs it after the response);
2. next to it the same question with the cache bypassed (`Cache-Control: no-cache`): POST
   (202) -> LlmWorker polling the queue as Lambda does -> the reply readable by GET; and
   the same with a model that answers at once, which is the path's own cost without the
   model's time.
Every number is measured in this run next to its baseline; nothing asserts a timing.
Results: bench/results/reply_cache.json and bench/results/reply_cache.md.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

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

MODEL_DELAY_SECONDS = 1.0
HITS = 300
HIT_WARMUP = 20
MISSES = 5
FAST_MISSES = 30
QUESTION = "How many new leads came in this week?"


def ms(value: float) -> str:
    return f"{value:.1f} ms"


DEFERRED: list[list[int]] = []


def defer_relay() -> None:
    """The relay after the response, as Lambda's extension runs it: here the ids wait in
    DEFERRED until `relay_deferred`, so a POST is timed to its response."""
    from frontdesk.services import get_services

    def after_response(ids: list[int]) -> bool:
        DEFERRED.append(ids)
        return True

    get_services().handoff.relay_after_response_with(after_response)


def relay_deferred() -> None:
    from frontdesk.services import get_services

    while DEFERRED:
        get_services().handoff.relay(DEFERRED.pop(0))


def post(api: Any, clinic_id: uuid.UUID, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    from tests.support import LambdaContext, http_event, http_response

    event = http_event(
        "POST",
        "/assistant/conversations",
        body={"content": QUESTION},
        clinic_id=clinic_id,
        headers=headers,
    )
    status, _, body = http_response(api.handler(event, LambdaContext()))
    return status, body


def answer_by_worker(
    api: Any, worker: Any, stack: Any, clinic_id: uuid.UUID, count: int
) -> list[float]:
    """POST with the cache bypassed -> LlmWorker -> GET done; seconds each."""
    from frontdesk.services import get_services
    from local.sqs_source import poll_once
    from tests.support import LambdaContext, http_event, http_response

    source = next(s for s in stack.sqs_event_sources() if s.function_logical_id == "LlmWorker")
    sqs = get_services().aws.client("sqs")
    latencies = []
    for i in range(count):
        began = time.perf_counter()
        status, body = post(api, clinic_id, {"cache-control": "no-cache"})
        if status != 202:
            raise RuntimeError(f"miss {i}: {status} {body}")
        relay_deferred()  # right after the response: on the way to the worker
        poll_once(
            sqs,
            queue_url=source.queue_url,
            queue_arn=source.queue_arn,
            region="us-east-1",
            batch_size=source.batch_size,
            partial_batch_response=True,
            invoke=lambda event: worker.handler(event, LambdaContext()),
            wait_seconds=1,
        )
        event = http_event("GET", f"/assistant/messages/{body['data']['id']}", clinic_id=clinic_id)
        _, _, reply = http_response(api.handler(event, LambdaContext()))
        if reply["data"]["status"] != "done":
            raise RuntimeError(f"miss {i}: the reply is {reply['data']['status']}")
        latencies.append(time.perf_counter() - began)
    return latencies


def answer_from_cache(api: Any, clinic_id: uuid.UUID, count: int) -> list[float]:
    latencies = []
    for i in range(count):
        began = time.perf_counter()
        status, body = post(api, clinic_id, {})
        latencies.append(time.perf_counter() - began)
        if status != 201 or not body["data"]["cached"] or not body["data"]["content"]:
            raise RuntimeError(f"hit {i}: {status} {body}")
        relay_deferred()  # the done event, after the response (untimed, as in Lambda)
    return latencies


def bench(report: Report, stack: Any, clinic_id: uuid.UUID, llm: Any) -> None:
    from tests.support import load_handler

    api, worker = load_handler("api"), load_handler("llm_worker")
    defer_relay()
    with stdout_to_devnull():
        log(f"model calls: {MISSES} questions with the cache bypassed, {MODEL_DELAY_SECONDS} s")
        llm.delay_seconds = MODEL_DELAY_SECONDS
        slow = answer_by_worker(api, worker, stack, clinic_id, MISSES)
        log(f"model calls: {FAST_MISSES} with a model that answers at once")
        llm.delay_seconds = 0.0
        fast = answer_by_worker(api, worker, stack, clinic_id, FAST_MISSES)
        log(f"cache hits: {HITS} (after {HIT_WARMUP} warm-up)")
        answer_from_cache(api, clinic_id, HIT_WARMUP)
        hits = answer_from_cache(api, clinic_id, HITS)
    hit, model, path = latency_summary(hits), latency_summary(slow), latency_summary(fast)
    report.details.update(cache_hit=hit, model_call_1s=model, model_call_instant=path)
    report.add(
        Row(
            f"Reply cache hit: POST -> 201 with the answer ({HITS} one at a time), p50",
            ms(hit["p50_ms"]),
            f"model call (1 s model) POST -> worker -> GET done: {ms(model['p50_ms'])}",
            f"{model['p50_ms'] / hit['p50_ms']:.0f}x faster",
            "no model call",
        )
    )
    report.add(
        Row(
            "Reply cache hit, p99",
            ms(hit["p99_ms"]),
            f"model call (1 s model), p99: {ms(model['p99_ms'])}",
            f"{model['p99_ms'] / hit['p99_ms']:.0f}x faster",
            "-",
        )
    )
    report.add(
        Row(
            "Reply cache hit vs the worker path with an instant model, p50",
            ms(hit["p50_ms"]),
            f"POST -> worker -> GET done, 0 s model: {ms(path['p50_ms'])}",
            f"{path['p50_ms'] / hit['p50_ms']:.1f}x faster",
            "-",
        )
    )


def main() -> None:
    from local.fake_llm import FakeLlm

    started = time.perf_counter()
    report = Report()
    with postgres_and_moto() as (postgres, moto):
        llm = FakeLlm(delay_seconds=MODEL_DELAY_SECONDS).start()
        try:
            database_url = postgres.fresh_database("frontdesk_bench_reply_cache")
            stack = export_stack(moto, database_url)
            os.environ.update(
                LLM_PROVIDER="openai",
                LLM_BASE_URL=llm.base_url,
                LLM_API_KEY="sk-bench",
                LLM_TIMEOUT_SECONDS="10",
                ASSISTANT_REQUESTS_PER_MINUTE="1000000",
                ASSISTANT_TOKENS_PER_DAY="1000000000",
            )
            from tests.support import reset_process_state

            reset_process_state()
            clinic_id = seed_clinic()
            bench(report, stack, clinic_id, llm)
        finally:
            llm.stop()
    meta = {
        **run_meta(postgres),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "model_delay_s": MODEL_DELAY_SECONDS,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    notes = [
        "Both paths run through the functions' real handlers in this one process, one",
        "request at a time (a Lambda container's view), PostgreSQL and moto on loopback.",
        "The model is local/fake_llm.py over real HTTP on loopback; its answer streams.",
        "A miss is measured from the POST to the GET that reads the reply done, with the",
        "worker polling the llm queue as Lambda's event source mapping does.",
        "A hit includes the context's read, the lookup, the decryption, the unit of work",
        "(question, reply, job, outbox event) and the reply read back for the body; the",
        "relay of its event runs after the response (untimed), as in Lambda.",
    ]
    print(write_results("reply_cache", "Reply cache benchmark", report, meta=meta, notes=notes))


if __name__ == "__main__":
    main()
