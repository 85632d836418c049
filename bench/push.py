"""Live screens benchmark: `python -m bench.push`.

Through the local runtime (`python -m local.dev`: the HTTP API, the bus, the push queue and
PushWorker under Lambda's runtime client, the WebSocket API on loopback), side by side in
one run:
1. a lead posted by the web form until the clinic's screen shows it: from the POST's answer
   (the commit is before it) to the `lead.created` message on the WebSocket, with one screen
   and with 20 screens of the clinic following leads (the last of them to get it);
2. the POST's own answer time, the baseline: what the writer waits for.
Results: bench/results/push.json and .md. Nothing here asserts a timing.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
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
SCREENS = 20


def ms(value: float) -> str:
    return f"{value:.1f} ms"


class Screen:
    """One browser following leads: when each lead's event arrived."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.arrived: dict[str, float] = {}
        self._socket = connect(url, open_timeout=30)
        self._socket.send(json.dumps({"action": "subscribe", "topics": ["leads"]}))
        assert json.loads(self._socket.recv(timeout=30))["type"] == "subscribed"
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self._socket:
                event = json.loads(message)
                if event["type"] == "lead.created":
                    self.arrived.setdefault(event["detail"]["leadId"], time.perf_counter())
        except Exception:  # closed
            return

    def close(self) -> None:
        self._socket.close()
        self._thread.join(timeout=5)


def post_leads(api: str, form_key: str, screens: list[Screen], count: int) -> dict[str, Any]:
    """POST `count` leads one after another, each once every screen has the one before."""
    answers, delivered_first, delivered_last = [], [], []
    with httpx.Client(base_url=api, timeout=10, headers={"X-Form-Key": form_key}) as client:
        for i in range(count):
            began = time.perf_counter()
            answer = client.post(
                "/public/leads",
                json={"name": f"Bench {i}", "phone": f"+1555{i:07d}", "consent": True},
            )
            answered = time.perf_counter()
            if answer.status_code != 201:
                raise RuntimeError(f"POST answered {answer.status_code}")
            lead = answer.json()["data"]["id"]
            deadline = answered + 30
            while not all(lead in s.arrived for s in screens):
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"lead {i} not on every screen after 30 s")
                time.sleep(0.001)
            times = [s.arrived[lead] for s in screens]
            answers.append(answered - began)
            delivered_first.append(min(times) - answered)
            delivered_last.append(max(times) - answered)
    return {
        "post": latency_summary(answers),
        "first_screen": latency_summary(delivered_first),
        "last_screen": latency_summary(delivered_last),
    }


def main() -> None:
    report = Report()
    postgres = start_postgres()
    process, dev_json, log_path = start_local_dev(postgres, "push")
    results: dict[str, Any] = {}
    try:
        info = wait_for_runtime(process, dev_json, log_path)
        url = f"{info['websocketUrl']}/live?token={info['staffToken']}"
        # Warm every function on the path: the API's four environments at once, then leads
        # through the whole path (the first pays the workers' cold starts).
        with httpx.Client(base_url=info["apiUrl"], timeout=30) as client:
            warm = [threading.Thread(target=client.get, args=("/jobs/warm",)) for _ in range(4)]
            for thread in warm:
                thread.start()
            for thread in warm:
                thread.join()
        one = [Screen(url)]
        post_leads(info["apiUrl"], info["formKey"], one, 10)
        log(f"1. one screen, {LEADS} leads")
        results["one_screen"] = post_leads(info["apiUrl"], info["formKey"], one, LEADS)
        many = one + [Screen(url) for _ in range(SCREENS - 1)]
        log(f"1. {SCREENS} screens, {LEADS} leads")
        results["many_screens"] = post_leads(info["apiUrl"], info["formKey"], many, LEADS)
        for screen in many:
            screen.close()
    finally:
        stopped = stop_runtime(process)
        postgres.drop_created()
    log(f"local.dev {stopped}")

    post = results["one_screen"]["post"]
    for label, key, which in (
        ("one screen", "one_screen", "first_screen"),
        (f"{SCREENS} screens, the last to get it", "many_screens", "last_screen"),
    ):
        summary = results[key][which]
        for p in ("p50", "p99"):
            report.add(
                Row(
                    f"lead posted -> on the screen ({label}), {p}",
                    ms(summary[f"{p}_ms"]),
                    f"the POST's answer {p}: {ms(post[f'{p}_ms'])}",
                    f"{summary[f'{p}_ms'] / post[f'{p}_ms']:.2f}x",
                )
            )
    report.details = {
        "leads": LEADS,
        "screens": SCREENS,
        "results": results,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": os.getloadavg(),
    }
    notes = [
        "Measured through `python -m local.dev`: the answer of POST /public/leads (the commit",
        "is before it), then the after-response relay (EventBridge on moto), the rule's SQS",
        "target, the local event source's poll (up to 1 s long polling, as Lambda's), PushWorker",
        "and a PostToConnection per screen to the local WebSocket API. In AWS each hop is a",
        "network call of its own; the shape (a few hops, posts in parallel) is the same.",
        f"{LEADS} leads one after another; load average {os.getloadavg()[0]:.2f},"
        f" {os.cpu_count()} CPUs.",
    ]
    print(write_results("push", "Live screens: a lead on the screen", report, notes=notes))


if __name__ == "__main__":
    main()
