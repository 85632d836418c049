"""Outbound webhooks benchmark: `python -m bench.webhooks`.

Through the local runtime (`python -m local.dev`: the HTTP API, the bus, the webhooks queue
and WebhookWorker under Lambda's runtime client), to an HTTP receiver on loopback, side by
side in one run:
1. first-attempt latency: a lead posted by the web form until the receiver has its signed
   `lead.created` (from the POST's answer: the commit is before it), next to the POST's own
   answer time;
2. delivery throughput: leads posted back to back to a clinic with several endpoints, until
   every delivery arrived (deliveries/s), next to the same signed POSTs sent to the same
   receiver by one bare client in a loop.
Results: bench/results/webhooks.json and .md. Nothing here asserts a timing.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from bench.common import (
    Report,
    Row,
    latency_summary,
    log,
    start_local_dev,
    start_postgres,
    stop_runtime,
    wait_for_runtime,
    write_results,
)

LEADS = 40
ENDPOINTS = 50
BURST_LEADS = 10


def ms(value: float) -> str:
    return f"{value:.1f} ms"


class Receiver:
    """A webhook receiver on loopback: when each (path, lead) arrived."""

    def __init__(self) -> None:
        self.arrived: dict[tuple[str, str], float] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                now = time.perf_counter()
                data = json.loads(body).get("data", {}) if body.startswith(b"{") else {}
                with receiver.lock:
                    receiver.arrived.setdefault((self.path, str(data.get("leadId"))), now)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return len(self.arrived)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def register(client: httpx.Client, url: str) -> None:
    answer = client.post("/webhooks/endpoints", json={"url": url, "eventTypes": ["lead.created"]})
    if answer.status_code != 201:
        raise RuntimeError(f"registration answered {answer.status_code}: {answer.text}")


def post_lead(client: httpx.Client, i: int) -> str:
    answer = client.post(
        "/public/leads", json={"name": f"Bench {i}", "phone": f"+1555{i:07d}", "consent": True}
    )
    if answer.status_code != 201:
        raise RuntimeError(f"POST answered {answer.status_code}")
    lead: str = answer.json()["data"]["id"]
    return lead


def first_attempt(api: str, form_key: str, receiver: Receiver, count: int) -> dict[str, Any]:
    """POST `count` leads one after another, each once the receiver has the one before."""
    answers, arrivals = [], []
    with httpx.Client(base_url=api, timeout=10, headers={"X-Form-Key": form_key}) as client:
        for i in range(count):
            began = time.perf_counter()
            lead = post_lead(client, i)
            answered = time.perf_counter()
            deadline = answered + 30
            while ("/first", lead) not in receiver.arrived:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"lead {i} not delivered after 30 s")
                time.sleep(0.001)
            answers.append(answered - began)
            arrivals.append(receiver.arrived[("/first", lead)] - answered)
    return {"post": latency_summary(answers), "delivered": latency_summary(arrivals)}


def burst(
    api: str, form_key: str, receiver: Receiver, leads: int, endpoints: int
) -> dict[str, Any]:
    """POST `leads` leads back to back; seconds until all `leads * endpoints` arrived."""
    before = receiver.count()
    expected = before + leads * endpoints
    with httpx.Client(base_url=api, timeout=10, headers={"X-Form-Key": form_key}) as client:
        began = time.perf_counter()
        for i in range(leads):
            post_lead(client, 10_000 + i)
        posted = time.perf_counter()
    deadline = posted + 120
    while receiver.count() < expected:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{expected - receiver.count()} deliveries missing after 120 s")
        time.sleep(0.005)
    with receiver.lock:
        times = sorted(receiver.arrived.values())[before:]
    first, done = times[0], times[-1]
    return {
        "deliveries": leads * endpoints,
        "posting_s": round(posted - began, 3),
        "total_s": round(done - began, 3),
        "per_s": round(leads * endpoints / (done - began), 1),
        "first_to_last_s": round(done - first, 3),
        "first_to_last_per_s": round((leads * endpoints - 1) / (done - first), 1),
    }


def bare_posts(receiver: Receiver, count: int) -> dict[str, Any]:
    """The same signed POSTs, one client in a loop: what the posts themselves cost."""
    from frontdesk.platform.signature import sign

    body = json.dumps({"id": "bench", "type": "lead.created", "data": {}}).encode()
    began = time.perf_counter()
    for _ in range(count):
        headers = {
            "Content-Type": "application/json",
            "Webhook-Signature": sign(b"whsec_bench", int(time.time()), body),
        }
        request = urllib.request.Request(f"{receiver.url}/bare", body, headers, method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
            answer.read()
    seconds = time.perf_counter() - began
    return {"posts": count, "seconds": round(seconds, 3), "per_s": round(count / seconds, 1)}


def main() -> None:
    report = Report()
    postgres = start_postgres()
    process, dev_json, log_path = start_local_dev(postgres, "webhooks")
    receiver = Receiver()
    results: dict[str, Any] = {}
    try:
        info = wait_for_runtime(process, dev_json, log_path)
        api, form_key = info["apiUrl"], info["formKey"]
        admin = {"Authorization": f"Bearer {info['staffToken']}"}
        with httpx.Client(base_url=api, timeout=30, headers=admin) as client:
            register(client, f"{receiver.url}/first")
        # Warm the path (the first leads pay the workers' cold starts).
        first_attempt(api, form_key, receiver, 10)
        log(f"1. first attempt, {LEADS} leads one after another")
        results["first_attempt"] = first_attempt(api, form_key, receiver, LEADS)
        with httpx.Client(base_url=api, timeout=30, headers=admin) as client:
            for n in range(ENDPOINTS - 1):
                register(client, f"{receiver.url}/burst-{n}")
        log(f"2. {BURST_LEADS} leads back to back, {ENDPOINTS} endpoints")
        results["throughput"] = burst(api, form_key, receiver, BURST_LEADS, ENDPOINTS)
        results["bare"] = bare_posts(receiver, BURST_LEADS * ENDPOINTS)
    finally:
        stopped = stop_runtime(process)
        receiver.close()
        postgres.drop_created()
    log(f"local.dev {stopped}")

    first, post = results["first_attempt"]["delivered"], results["first_attempt"]["post"]
    for p in ("p50", "p99"):
        report.add(
            Row(
                f"lead posted -> signed delivery at the receiver (first attempt), {p}",
                ms(first[f"{p}_ms"]),
                f"the POST's answer {p}: {ms(post[f'{p}_ms'])}",
                f"{first[f'{p}_ms'] / post[f'{p}_ms']:.2f}x",
            )
        )
    throughput, bare = results["throughput"], results["bare"]
    report.add(
        Row(
            f"delivery throughput ({BURST_LEADS} leads x {ENDPOINTS} endpoints, first POST to"
            " last arrival)",
            f"{throughput['per_s']} deliveries/s ({throughput['deliveries']} in"
            f" {throughput['total_s']} s)",
            f"one bare client, the same signed POSTs in a loop: {bare['per_s']} posts/s",
            f"{throughput['per_s'] / bare['per_s']:.2f}x",
        )
    )
    report.add(
        Row(
            "delivery throughput, first arrival to last",
            f"{throughput['first_to_last_per_s']} deliveries/s",
            f"one bare client: {bare['per_s']} posts/s",
            f"{throughput['first_to_last_per_s'] / bare['per_s']:.2f}x",
        )
    )
    report.details = {
        "leads": LEADS,
        "endpoints": ENDPOINTS,
        "burst_leads": BURST_LEADS,
        "results": results,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": os.getloadavg(),
    }
    notes = [
        "Measured through `python -m local.dev`: the answer of POST /public/leads (the commit",
        "is before it), the after-response relay (EventBridge on moto), the rule's SQS target,",
        "WebhookWorker's fan-out (a delivery row and message per endpoint), the relay of those",
        "messages back to the webhooks queue, the local event source's poll (up to 1 s long",
        "polling, as Lambda's) and the signed POST to a receiver on loopback. Two queue hops per",
        "delivery; the posts of a batch go out in parallel.",
        f"Load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs.",
    ]
    title = "Outbound webhooks: an event at a clinic's receiver"
    print(write_results("webhooks", title, report, notes=notes))


if __name__ == "__main__":
    main()
