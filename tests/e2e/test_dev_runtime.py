"""The whole local stack (`make dev`) as a subprocess, driven over HTTP like a client would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest

from local.mail import SentEmail, sent_emails
from tests.support import REPO

T = TypeVar("T")


def wait_for[T](what: str, probe: Callable[[], T | None], timeout: float = 20) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class DevProcess:
    def __init__(self, state_dir: Path, env: dict[str, str], *options: str) -> None:
        self.state_dir = state_dir
        self.log = (state_dir / "dev.log").open("w+")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "local.dev",
                "--api-port",
                "0",
                "--ws-port",
                "0",
                "--state-dir",
                str(state_dir),
                *options,
            ],
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.info: dict[str, Any] = wait_for("dev.json", self._read_info, timeout=60)

    def _read_info(self) -> dict[str, Any] | None:
        if self.process.poll() is not None:
            raise AssertionError(f"local.dev exited early:\n{self.output()}")
        path = self.state_dir / "dev.json"
        if not path.exists():
            return None
        info: dict[str, Any] = json.loads(path.read_text())
        return info if info.get("pid") == self.process.pid else None

    def output(self) -> str:
        self.log.flush()
        return (self.state_dir / "dev.log").read_text()

    def emails(self) -> list[SentEmail]:
        return sent_emails(self.info["awsEndpointUrl"])

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=20)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.log.close()


def dev_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DATABASE_URL"))}
    env["PYTHONPATH"] = f"{REPO / 'layers' / 'frontdesk'}{os.pathsep}{REPO}"
    env.update(overrides)
    return env


@pytest.fixture
def state_dir() -> Iterator[Path]:
    path = REPO / ".frontdesk" / f"e2e-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.mark.slow
def test_a_lead_from_the_web_form_reaches_the_clinic_by_email(
    state_dir: Path, database_url: str
) -> None:
    # Given the local runtime on a fresh database and its own moto server
    dev = DevProcess(state_dir, dev_env(DATABASE_URL=database_url))
    try:
        api, info = dev.info["apiUrl"], dev.info
        staff = {"Authorization": f"Bearer {info['staffToken']}"}
        # When the demo web form posts a lead (the README's curl)
        created = httpx.post(
            f"{api}/public/leads",
            headers={"X-Form-Key": info["formKey"]},
            json={"name": "Ada Lovelace", "email": "ada@example.com", "consent": True},
            timeout=30,
        )
        assert created.status_code == 201, created.text
        lead_id, job_id = created.json()["data"]["id"], created.json()["data"]["jobId"]
        # Then the clinic's email is sent by the worker the runtime polls for
        emails = wait_for("the email", dev.emails)
        assert emails[0].to == ("frontdesk-staff@example.com",)
        assert emails[0].data["leadId"] == lead_id

        def finished_job() -> dict[str, Any] | None:
            job: dict[str, Any] = httpx.get(
                f"{api}/jobs/{job_id}", headers=staff, timeout=30
            ).json()["data"]
            return job if job["status"] == "succeeded" else None

        job = wait_for("the job to succeed", finished_job)
        assert job["progress"] == 100 and job["result"]["channel"] == "email"
        # And staff read the lead back decrypted; without a token they are refused
        lead = httpx.get(f"{api}/leads/{lead_id}", headers=staff, timeout=30)
        assert lead.json()["data"]["email"] == "ada@example.com"
        assert httpx.get(f"{api}/leads/{lead_id}", timeout=30).status_code == 401
        # And the runtime logged the invocation and the email
        wait_for("the log lines", lambda: "EMAIL sent by NotifyWorker" in dev.output())
        assert "NotifyWorker REPORT" in dev.output() and "Records: 1 Failures: 0" in dev.output()
    finally:
        code = dev.stop()
    assert code == 0, dev.output()


@pytest.mark.slow
@pytest.mark.db
@pytest.mark.skipif("DATABASE_URL" in os.environ, reason="the embedded default is the first run's")
def test_embedded_default_starts_and_ctrl_c_leaves_no_process_behind(state_dir: Path) -> None:
    # Given `make dev` with nothing configured: its own PostgreSQL and moto
    dev = DevProcess(state_dir, dev_env())
    children = psutil.Process(dev.process.pid).children(recursive=True)
    postgres = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(state_dir / "pgdata") in " ".join(p.info["cmdline"] or [])
    ]
    assert postgres, "the embedded PostgreSQL should be running"
    answer = httpx.get(f"{dev.info['apiUrl']}/openapi.json", timeout=30)
    assert answer.status_code == 200 and "/public/leads" in answer.json()["paths"]
    # When it is stopped with Ctrl-C
    assert dev.stop() == 0, dev.output()
    # Then nothing it started is left running
    for process in children + postgres:
        try:
            process.wait(timeout=10)
        except psutil.TimeoutExpired:
            pytest.fail(f"left behind: {process}")
