"""Benchmark of streamed assistant replies: time to the first delta vs time to the whole reply.

    PYTHONPATH=layers/frontdesk:. .venv/bin/python -m bench.assistant_stream

The model (local/fake_llm.py: real server-sent events over HTTP on loopback) streams 50
tokens over 2.5 s, one every 50 ms. Per question: POST /assistant/conversations through
ApiFunction's real handler (202), then LlmWorker's real handler given the llm queue's
message as Lambda's event source mapping gives it (local.sqs_source.poll_once), which
streams the reply: `assistant.reply.delta` events through the outbox and the relay to moto's
EventBridge, then `assistant.reply.done`. An EventBridge rule made here (standing in for the
push rule) delivers them to an SQS queue that a consumer thread long-polls, as the
PushWorker's queue would be. Clocks run from just before the POST to each event's arrival on
that queue. Two settings of LLM_DELTA_INTERVAL_MS: the template's 250 and 0 (every chunk).
Every reply is checked: its deltas (decrypted as the PushWorker would) joined, the done
event's content and the stored reply are the same text. Nothing asserts a timing.
Results: bench/results/assistant_stream.json and bench/results/assistant_stream.md.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
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

TOKENS = 50
TOKEN_SECONDS = 0.05  # 50 tokens over 2.5 s
QUESTIONS = 10
INTERVALS_MS = (250, 0)


@dataclass
class Arrivals:
    """What the consumer saw, per reply: (arrival time, detail type, detail)."""

    events: dict[str, list[tuple[float, str, dict[str, Any]]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, reply_id: str) -> list[tuple[float, str, dict[str, Any]]]:
        with self.lock:
            return list(self.events[reply_id])


def subscribe(bus: str) -> str:
    """An SQS queue receiving the assistant's reply events from the bus (a rule)."""
    from frontdesk.services import get_services

    aws = get_services().aws
    sqs, events = aws.client("sqs"), aws.client("events")
    url = sqs.create_queue(QueueName=f"bench-reply-events-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    pattern = {
        "source": ["frontdesk"],
        "detail-type": ["assistant.reply.delta", "assistant.reply.done"],
    }
    events.put_rule(Name="bench-reply-events", EventBusName=bus, EventPattern=json.dumps(pattern))
    events.put_targets(
        Rule="bench-reply-events", EventBusName=bus, Targets=[{"Id": "queue", "Arn": arn}]
    )
    return str(url)


def consume(url: str, arrivals: Arrivals, stop: threading.Event) -> None:
    """Long-poll the queue, stamping each event as it arrives (its own SQS client)."""
    import boto3

    sqs = boto3.session.Session().client(
        "sqs", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1"
    )
    while not stop.is_set():
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        )
        now = time.perf_counter()
        for message in messages:
            event = json.loads(message["Body"])
            detail = event["detail"]
            with arrivals.lock:
                arrivals.events[detail["replyId"]].append((now, event["detail-type"], detail))
        if messages:
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )


def ask_and_answer(
    api: Any, worker: Any, source: Any, clinic_id: uuid.UUID, arrivals: Arrivals, n: int
) -> dict[str, Any]:
    """One question, end to end; the times of its events and whether its texts agree."""
    from frontdesk.assistant.conversations import get_message
    from frontdesk.assistant.reply_events import for_client
    from frontdesk.services import get_services
    from local.sqs_source import poll_once
    from tests.support import LambdaContext, http_event, http_response

    services = get_services()
    event = http_event(
        "POST",
        "/assistant/conversations",
        body={"content": f"How many new leads this week? ({n})"},
        clinic_id=clinic_id,
    )
    began = time.perf_counter()
    status, _, body = http_response(api.handler(event, LambdaContext()))
    if status != 202:
        raise RuntimeError(f"POST answered {status}")
    posted = time.perf_counter()
    reply_id = body["data"]["id"]
    poll_once(
        services.aws.client("sqs"),
        queue_url=source.queue_url,
        queue_arn=source.queue_arn,
        region="us-east-1",
        batch_size=source.batch_size,
        partial_batch_response=True,
        invoke=lambda e: worker.handler(e, LambdaContext()),
        wait_seconds=1,
    )
    stored = time.perf_counter()
    give_up = stored + 10
    while not any(t == "assistant.reply.done" for _, t, _ in arrivals.of(reply_id)):
        if time.perf_counter() > give_up:
            raise RuntimeError(f"no done event for question {n}")
        time.sleep(0.005)
    seen = arrivals.of(reply_id)
    deltas = sorted((d for _, t, d in seen if t == "assistant.reply.delta"), key=lambda d: d["seq"])
    (done,) = [d for _, t, d in seen if t == "assistant.reply.done"]
    cipher = services.cipher
    text = "".join(for_client(cipher, "assistant.reply.delta", d)["delta"] for d in deltas)
    content = for_client(cipher, "assistant.reply.done", done)["content"]
    reply = get_message(
        services.database, cipher, clinic_id=clinic_id, message_id=uuid.UUID(reply_id)
    )
    first = min(at for at, t, _ in seen if t == "assistant.reply.delta")
    done_at = next(at for at, t, _ in seen if t == "assistant.reply.done")
    return {
        "post_s": posted - began,
        "first_delta_s": first - began,
        "done_s": done_at - began,
        "stored_s": stored - began,
        "deltas": len(deltas),
        "same_text": text == content == reply.content and reply.status == "done",
    }


def bench_interval(
    report: Report, interval_ms: int, stack: Any, clinic_id: uuid.UUID, arrivals: Arrivals
) -> None:
    from tests.support import load_handler, reset_process_state

    os.environ["LLM_DELTA_INTERVAL_MS"] = str(interval_ms)
    reset_process_state()
    api, worker = load_handler("api"), load_handler("llm_worker")
    source = next(s for s in stack.sqs_event_sources() if s.function_logical_id == "LlmWorker")
    log(f"LLM_DELTA_INTERVAL_MS={interval_ms}: {QUESTIONS} questions (+1 to warm up)")
    with stdout_to_devnull():
        ask_and_answer(api, worker, source, clinic_id, arrivals, -1)  # cold start, connections
        runs = [
            ask_and_answer(api, worker, source, clinic_id, arrivals, n) for n in range(QUESTIONS)
        ]
    if not all(run["same_text"] for run in runs):
        raise RuntimeError("a reply's deltas, done event and stored text differ")
    first = latency_summary([r["first_delta_s"] for r in runs])
    done = latency_summary([r["done_s"] for r in runs])
    stored = latency_summary([r["stored_s"] for r in runs])
    deltas = [r["deltas"] for r in runs]
    post = latency_summary([r["post_s"] for r in runs])
    ratios = sorted(r["first_delta_s"] / r["done_s"] * 100 for r in runs)
    report.details[f"interval_{interval_ms}ms"] = {
        "post": post,
        "first_delta": first,
        "done": done,
        "stored": stored,
        "deltas_per_reply": deltas,
        "runs": runs,
    }
    setting = f"interval {interval_ms} ms"
    for stat, ratio in (
        ("p50", f"median reply {ratios[len(ratios) // 2]:.1f}%"),
        ("p99", f"worst reply {ratios[-1]:.1f}%"),
    ):
        key = f"{stat}_ms"
        report.add(
            Row(
                f"POST -> first delta on the push queue ({setting}), {stat}",
                f"{first[key]:.1f} ms",
                f"POST -> done on the push queue: {done[key]:.1f} ms",
                f"{ratio} of its full reply's time",
                "< 10%",
            )
        )
    report.add(
        Row(
            f"POST -> done on the push queue ({setting}), p50",
            f"{done['p50_ms']:.1f} ms",
            f"the model's stream alone: {TOKENS * TOKEN_SECONDS * 1000:.0f} ms",
            f"+{done['p50_ms'] - TOKENS * TOKEN_SECONDS * 1000:.0f} ms",
            "-",
        )
    )
    report.add(
        Row(
            f"POST -> 202, a part of each time above ({setting}), p50",
            f"{post['p50_ms']:.1f} ms",
            "-",
            "-",
            "-",
        )
    )
    report.add(
        Row(
            f"deltas per reply ({setting})",
            f"{min(deltas)}-{max(deltas)}",
            f"{TOKENS} tokens",
            "-",
            "a few per second",
        )
    )


def main() -> None:
    from local.fake_llm import FakeLlm

    started = time.perf_counter()
    report = Report()
    with postgres_and_moto() as (postgres, moto):
        llm = FakeLlm().start()
        llm.tokens, llm.token_seconds = TOKENS, TOKEN_SECONDS
        stop = threading.Event()
        try:
            database_url = postgres.fresh_database("frontdesk_bench_stream")
            stack = export_stack(moto, database_url)
            os.environ.update(
                LLM_PROVIDER="openai",
                LLM_BASE_URL=llm.base_url,
                LLM_API_KEY="sk-bench",
                ASSISTANT_REQUESTS_PER_MINUTE="1000000",
                ASSISTANT_TOKENS_PER_DAY="1000000000",
            )
            from frontdesk.services import get_services
            from tests.support import reset_process_state

            reset_process_state()
            clinic_id = seed_clinic()
            arrivals = Arrivals()
            url = subscribe(get_services().settings.event_bus_name)
            consumer = threading.Thread(target=consume, args=(url, arrivals, stop), daemon=True)
            consumer.start()
            for interval in INTERVALS_MS:
                bench_interval(report, interval, stack, clinic_id, arrivals)
        finally:
            stop.set()
            llm.stop()
    meta = {
        **run_meta(postgres),
        "model": {"tokens": TOKENS, "token_interval_s": TOKEN_SECONDS},
        "questions": QUESTIONS,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    notes = [
        "The model is local/fake_llm.py over real HTTP on loopback: 50 tokens of SSE, one",
        "every 50 ms. Everything runs in this one process: ApiFunction's and LlmWorker's",
        "handlers, moto (SQS, EventBridge, KMS), the consumer thread; PostgreSQL embedded.",
        "The push queue is an SQS queue an EventBridge rule made by the bench fills; the",
        "PushWorker's own hop (PostToConnection) is not in these times.",
        "Clocks start just before the POST and stop when the consumer's long poll returns",
        "the event; the worker is handed the llm queue's message right after the 202.",
    ]
    title = "Streamed assistant replies"
    print(write_results("assistant_stream", title, report, meta=meta, notes=notes))


if __name__ == "__main__":
    main()
