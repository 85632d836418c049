"""Benchmark of SyncWorker's provider fetches: concurrent (a bound per account) versus one
after the other.

    PYTHONPATH=layers/frontdesk:. .venv/bin/python -m bench.sync_fetch

A sync.fetch job of 64 leads run by SyncWorker's real handler (PostgreSQL, encryption,
blind indexes, ON CONFLICT upserts in groups) against the fake provider
(local/fake_provider.py in its own process, real HTTP on loopback) answering each call
after 100 ms:
1. PROVIDER_FETCH_CONCURRENCY=1 (the calls one after the other, as before) next to =8,
   interleaved, three rounds each, fresh leads every run;
2. =8 with the account limited to 20 calls a second: the rate limit, not the bound, sets
   the pace, and the calls per second stay under it.
The provider counts the calls in flight at once. Every number is measured in this run next
to its baseline; nothing asserts a timing.
Results: bench/results/sync_fetch.json and bench/results/sync_fetch.md.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Any

from bench.common import (
    Report,
    Row,
    export_stack,
    log,
    postgres_and_moto,
    run_meta,
    seed_clinic,
    stdout_to_devnull,
    write_results,
)

ITEMS = 64
PROVIDER_DELAY_SECONDS = 0.1
ROUNDS = 5
BOUND = 8
LIMITED_RPS = 20


class ProviderProcess:
    """`python -m local.fake_provider` in a process of its own (its threads do not share
    this process's GIL with the worker), driven over its control API."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._process = subprocess.Popen(
            [sys.executable, "-m", "local.fake_provider", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            env={**os.environ},
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                self.control("stats", {})
                return
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise
                time.sleep(0.05)

    def control(self, action: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(  # noqa: S310 (http on loopback)
            f"{self.url}/_control/{action}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 (loopback)
            return json.loads(answer.read())

    def add_lead(self, name: str, email: str) -> dict[str, Any]:
        change: dict[str, Any] = self.control("leads", {"name": name, "email": email})
        return change

    def slow(self, seconds: float) -> None:
        self.control("slow", {"seconds": seconds})

    def stats(self) -> tuple[int, list[float]]:
        """(calls in flight at most, when each began) since the last call; cleared."""
        found = self.control("stats", {"clear": True})
        return int(found["maxInFlight"]), sorted(found["started"])

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)


def connect_account(clinic_id: uuid.UUID, base_url: str, requests_per_second: float) -> uuid.UUID:
    from frontdesk.platform.db import transaction
    from frontdesk.services import get_services
    from frontdesk.sync import accounts as provider_accounts
    from frontdesk.sync.egress import Egress
    from local.fake_provider import DEFAULT_API_KEY

    services = get_services()
    account = provider_accounts.AccountIn(
        provider="generic",
        apiBaseUrl=base_url,
        credentials=provider_accounts.Credentials(apiKey=DEFAULT_API_KEY),
        requestsPerSecond=requests_per_second,
    )
    with services.unit_of_work(clinic_id=clinic_id) as uow:
        saved = provider_accounts.create_account(
            uow,
            services.cipher,
            clinic_id=clinic_id,
            account=account,
            egress=Egress.of(True, ["127.0.0.1"]),
        )
    with transaction(services.database) as cur:
        provider_accounts.set_status(cur, saved.id, "active", None)
    return saved.id


def fetch_job(
    clinic_id: uuid.UUID, account_id: uuid.UUID, fake: Any, run: str, items: int = ITEMS
) -> str:
    """A sync.fetch job of `items` new leads (as the poller makes one); its SQS body."""
    from frontdesk.platform import jobs
    from frontdesk.platform.db import transaction
    from frontdesk.platform.queues import JobKind
    from frontdesk.services import get_services

    ids = [
        fake.add_lead(f"Person {run} {i}", f"p{run}.{i}@example.org")["resourceId"]
        for i in range(items)
    ]
    payload = {
        "accountId": str(account_id),
        "items": [{"resource": "lead", "externalId": i} for i in ids],
    }
    with transaction(get_services().database) as cur:
        job_id = jobs.create_job(
            cur, clinic_id=clinic_id, kind=JobKind.SYNC_FETCH, payload=payload, request_id=None
        )
    return json.dumps({"jobId": str(job_id), "kind": "sync.fetch", "clinicId": str(clinic_id)})


def run_job(
    bound: int, clinic_id: uuid.UUID, account_id: uuid.UUID, fake: Any, run: str
) -> tuple[float, int, float]:
    """(seconds, calls in flight at most, calls per second) of one job at `bound`."""
    from frontdesk.services import get_services
    from tests.support import LambdaContext, load_handler, reset_process_state, sqs_event

    os.environ["PROVIDER_FETCH_CONCURRENCY"] = str(bound)
    reset_process_state()
    worker = load_handler("sync_worker")
    # The lead.created events' relay to moto's EventBridge (a few hundred ms per PutEvents
    # on a busy machine, the same in both modes) is held and run after the timing.
    held: list[int] = []

    def hold(ids: list[int]) -> bool:
        held.extend(ids)
        return True

    handoff = get_services().handoff
    handoff.relay_after_response_with(hold)
    # A warm container: its connection open, the account's data key decrypted.
    warm_up = fetch_job(clinic_id, account_id, fake, f"{run}-warm-up", 2)
    with stdout_to_devnull():
        worker.handler(sqs_event([warm_up]), LambdaContext())
    body = fetch_job(clinic_id, account_id, fake, run)
    fake.slow(PROVIDER_DELAY_SECONDS)
    fake.stats()
    with stdout_to_devnull():
        began = time.perf_counter()
        answer = worker.handler(sqs_event([body]), LambdaContext())
        spent = time.perf_counter() - began
    fake.slow(0.0)
    handoff.relay_after_response_with(None)
    if held:
        handoff.relay(held)
    if answer != {"batchItemFailures": []}:
        raise RuntimeError(f"the fetch job failed: {answer}")
    peak, started = fake.stats()
    rate = (len(started) - 1) / (started[-1] - started[0]) if len(started) > 1 else 0.0
    return spent, peak, rate


def bench(report: Report, clinic_id: uuid.UUID) -> None:
    fake = ProviderProcess()
    try:
        fast = connect_account(clinic_id, fake.url, 1000)
        limited = connect_account(clinic_id, fake.url, LIMITED_RPS)
        times: dict[int, list[float]] = {1: [], BOUND: []}
        peaks: dict[int, int] = {1: 0, BOUND: 0}
        for r in range(ROUNDS):
            for bound in (1, BOUND):
                log(f"round {r + 1}: {ITEMS} leads at a bound of {bound}")
                spent, peak, _ = run_job(bound, clinic_id, fast, fake, f"{r}-{bound}")
                times[bound].append(spent)
                peaks[bound] = max(peaks[bound], peak)
        log(f"{ITEMS} leads at a bound of {BOUND}, the account limited to {LIMITED_RPS}/s")
        limited_s, limited_peak, limited_rate = run_job(BOUND, clinic_id, limited, fake, "rl")
    finally:
        fake.stop()
    sequential, concurrent = statistics.median(times[1]), statistics.median(times[BOUND])
    report.details.update(
        sequential_s=[round(t, 3) for t in times[1]],
        concurrent_s=[round(t, 3) for t in times[BOUND]],
        peak_in_flight={"1": peaks[1], str(BOUND): peaks[BOUND]},
        rate_limited={
            "seconds": round(limited_s, 3),
            "peak_in_flight": limited_peak,
            "calls_per_s": round(limited_rate, 1),
            "limit_per_s": LIMITED_RPS,
        },
    )
    report.add(
        Row(
            f"sync.fetch of {ITEMS} leads, provider 100 ms, bound {BOUND} (median of {ROUNDS})",
            f"{sequential / concurrent:.1f}x faster: {concurrent:.2f} s, "
            f"{peaks[BOUND]} in flight at most",
            f"one after the other: {sequential:.2f} s, {peaks[1]} in flight",
            f"{sequential / concurrent:.1f}x",
            ">= 5x",
        )
    )
    report.add(
        Row(
            f"the same at bound {BOUND}, account limited to {LIMITED_RPS} calls/s",
            f"{limited_rate:.1f} calls/s, {limited_s:.2f} s, {limited_peak} in flight at most",
            f"the limit: {LIMITED_RPS} calls/s ({(ITEMS - 1) / LIMITED_RPS:.2f} s at least)",
            f"{limited_rate / LIMITED_RPS:.2f}x of the limit",
            "<= 1.00x",
        )
    )


def main() -> None:
    started = time.perf_counter()
    report = Report()
    with postgres_and_moto() as (postgres, moto):
        database_url = postgres.fresh_database("bench_sync_fetch")
        export_stack(moto, database_url)
        os.environ.update(
            PROVIDER_ALLOW_HTTP="true",
            PROVIDER_ALLOWED_HOSTS="127.0.0.1",
        )
        from tests.support import reset_process_state

        reset_process_state()
        clinic_id = seed_clinic()
        bench(report, clinic_id)
    meta = {
        **run_meta(postgres),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "provider_delay_s": PROVIDER_DELAY_SECONDS,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    notes = [
        "SyncWorker's real handler in this process; the fake provider is a threaded HTTP",
        "server in another process on loopback that sleeps 100 ms in every lead's answer.",
        f"Groups of {2 * BOUND} leads are fetched concurrently, then upserted in one",
        "transaction while the next group's calls are out; at bound 1 groups of 10 are",
        "fetched one call after the other, then upserted.",
        "Each job runs in a warm container (a two-lead job before it, untimed).",
        "Calls per second: the calls' count less one over the time from the first call",
        "to the last one, as the provider saw them begin.",
        "The relay of the job's lead.created events to moto's EventBridge is held until the",
        "job has run and is not timed: moto takes a few hundred ms per PutEvents here, the",
        "same for both modes, where EventBridge takes tens of milliseconds.",
    ]
    print(write_results("sync_fetch", "Provider fetch benchmark", report, meta=meta, notes=notes))


if __name__ == "__main__":
    main()
