"""Integration fixtures: a moto server provisioned from template.yaml, and a migrated database."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from local import mail
from local.mail import SentEmail
from local.sqs_source import poll_once
from tests.support import LambdaContext, load_handler, reset_process_state

FORM_KEY = "fk_test_form_key"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def moto_data(moto_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{moto_url}/moto-api/data.json") as answer:  # noqa: S310
        data: dict[str, Any] = json.load(answer)
    return data


def sent_emails(moto_url: str) -> list[SentEmail]:
    """Every email SES accepted, as moto's data API shows it across processes."""
    return mail.sent_emails(moto_url)


@pytest.fixture
def stack(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """template.yaml's resources in a freshly reset moto, and every function's environment."""
    from local.template import load_template, provision

    reset = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")  # noqa: S310
    urllib.request.urlopen(reset).close()  # noqa: S310
    provisioned = provision(load_template(), boto3.session.Session(), moto_url)
    for function in provisioned.functions():
        for name, value in provisioned.function_environment(function.logical_id).items():
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("DATABASE_SECRET_ARN", "")
    reset_process_state()
    yield provisioned
    reset_process_state()


@dataclass
class App:
    """A migrated database, the stack, and a seeded clinic."""

    stack: Any
    moto_url: str
    database_url: str
    clinic_id: uuid.UUID
    other_clinic_id: uuid.UUID

    def sqs(self) -> Any:
        return boto3.client("sqs", endpoint_url=self.moto_url)

    def queue_url(self, logical_id: str) -> str:
        url: str = self.stack.physical[logical_id]["Ref"]
        return url

    def poll(
        self,
        function_id: str,
        handler: Any,
        *,
        wait: int = 0,
        retry_after_seconds: int | None = None,
    ) -> int:
        """One receive of the function's queue into its handler, as Lambda's event source
        mapping does; returns the records received. `retry_after_seconds` makes failed
        records reappear sooner than the queue's visibility timeout."""
        source = next(
            s for s in self.stack.sqs_event_sources() if s.function_logical_id == function_id
        )
        return poll_once(
            self.sqs(),
            queue_url=source.queue_url,
            queue_arn=source.queue_arn,
            region="us-east-1",
            batch_size=source.batch_size,
            partial_batch_response=source.report_batch_item_failures,
            invoke=lambda event: handler.handler(event, LambdaContext()),
            wait_seconds=wait,
            retry_after_seconds=retry_after_seconds,
        ).received

    def drain(
        self,
        function_id: str,
        handler: Any,
        *,
        wait: int = 0,
        rounds: int = 10_000,
        retry_after_seconds: int | None = None,
    ) -> int:
        """Poll until a receive finds nothing (or `rounds` receives); returns records seen."""
        seen = 0
        for _ in range(rounds):
            received = self.poll(
                function_id, handler, wait=wait, retry_after_seconds=retry_after_seconds
            )
            if received == 0:
                break
            seen += received
        return seen


@pytest.fixture
def app(stack: Any, moto_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch) -> App:
    from frontdesk.clinics import create_clinic
    from frontdesk.services import get_services

    monkeypatch.setenv("DATABASE_URL", database_url)
    reset_process_state()
    db = get_services().database
    clinic = create_clinic(
        db, name="Test clinic", notify_email="staff@clinic.example", form_key=FORM_KEY
    )
    other = create_clinic(db, name="Other clinic", notify_email="staff@other.example")
    return App(stack, moto_url, database_url, clinic, other)


# The functions' handlers, loaded as a new container would after the stack's environment is
# set (each checks its settings when loaded).


@pytest.fixture
def api(app: App) -> Any:
    return load_handler("api")


@pytest.fixture
def notify(app: App) -> Any:
    return load_handler("notify_worker")
