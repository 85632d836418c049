"""Integration fixtures: a moto server provisioned from template.yaml once per session and
reset per test, and a migrated database."""

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
    """Every email SES accepted during this test (the `stack` fixture starts the count),
    as moto's data API shows it across processes."""
    return mail.sent_emails(moto_url)


# Queue attributes SetQueueAttributes takes; a test that changes one (a shorter visibility
# timeout, say) has it put back before the next test.
_SETTABLE_QUEUE_ATTRIBUTES = (
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "DelaySeconds",
    "FifoThroughputLimit",
    "KmsDataKeyReusePeriodSeconds",
    "KmsMasterKeyId",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "Policy",
    "ReceiveMessageWaitTimeSeconds",
    "RedriveAllowPolicy",
    "RedrivePolicy",
    "SqsManagedSseEnabled",
    "VisibilityTimeout",
)


class SharedStack:
    """template.yaml provisioned once into the session's moto server, and made as good as
    new for each test: what a test can observe of moto is reset, the rest is kept.

    Per test: every queue and DLQ of the template is purged (moto drops visible, in-flight
    and delayed messages at once) and gets the attributes it was provisioned with; moto's
    record of model instances, which its data API (`/moto-api/data.json`) lists, is
    forgotten, so sent emails and SMS count from the start of the test. Keys, aliases,
    secrets, the bus, its rules and the SES templates and sender are kept: tests only read
    them (the secrets some tests add have names of their own).

    The server runs in this process, so moto's in-process mock (`mock_aws`, used by
    test_local_provision.py) and `/moto-api/reset` wipe it too. A test then finds the
    template's KMS key gone, and the stack is provisioned again from scratch.
    """

    def __init__(self, moto_url: str) -> None:
        self.moto_url = moto_url
        self.stack: Any = None
        self.environment: dict[str, str] = {}
        self._queue_attributes: dict[str, dict[str, str]] = {}
        self._clients: dict[str, Any] = {}

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = boto3.client(service, endpoint_url=self.moto_url)
        return self._clients[service]

    def provision(self) -> None:
        """Reset moto, provision the template, and remember what each test starts from."""
        from local.template import load_template, provision

        reset = urllib.request.Request(f"{self.moto_url}/moto-api/reset", method="POST")  # noqa: S310
        urllib.request.urlopen(reset).close()  # noqa: S310
        stack = provision(load_template(), boto3.session.Session(), self.moto_url)
        environment: dict[str, str] = {}
        for function in stack.functions():
            environment.update(stack.function_environment(function.logical_id))
        sqs = self._client("sqs")
        self._queue_attributes = {}
        for url in self._queue_urls(stack):
            attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
            self._queue_attributes[url] = {
                name: value
                for name, value in attributes["Attributes"].items()
                if name in _SETTABLE_QUEUE_ATTRIBUTES
            }
        self.stack, self.environment = stack, environment

    @staticmethod
    def _queue_urls(stack: Any) -> list[str]:
        return [stack.physical[q]["QueueUrl"] for q in stack.resources("AWS::SQS::Queue")]

    def _intact(self) -> bool:
        """False when moto was reset since the stack was provisioned (its key is gone)."""
        if self.stack is None:
            return False
        kms = self._client("kms")
        for logical_id in self.stack.resources("AWS::KMS::Key"):
            try:
                kms.describe_key(KeyId=self.stack.physical[logical_id]["KeyId"])
            except kms.exceptions.NotFoundException:
                return False
        return True

    def fresh(self) -> Any:
        """The provisioned stack, its queues empty and moto's records of the last test gone."""
        from moto.core.model_instances import reset_model_data

        if not self._intact():
            self.provision()
        sqs = self._client("sqs")
        with pytest.MonkeyPatch.context() as patch:
            # moto refuses a second purge within 60 s, as SQS does, unless told otherwise
            # (the server reads the setting from this process's environment per request).
            patch.setenv("MOTO_SQS_ENFORCE_STRICT_QUEUE_PURGE_BEHAVIOUR", "false")
            for url, attributes in self._queue_attributes.items():
                sqs.purge_queue(QueueUrl=url)
                sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
        reset_model_data()
        return self.stack


@pytest.fixture(scope="session")
def shared_stack(moto_url: str) -> SharedStack:
    """template.yaml parsed and provisioned once per session (see SharedStack)."""
    shared = SharedStack(moto_url)
    shared.provision()
    return shared


@pytest.fixture
def stack(shared_stack: SharedStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """template.yaml's resources in moto, as new for this test, and every function's
    environment."""
    provisioned = shared_stack.fresh()
    for name, value in shared_stack.environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", shared_stack.moto_url)
    monkeypatch.setenv("DATABASE_SECRET_ARN", "")
    # The local PostgreSQL, not RDS Proxy: no TLS, session timeouts sent at connect.
    monkeypatch.setenv("DB_SSLMODE", "prefer")
    monkeypatch.setenv("DB_STARTUP_OPTIONS", "true")
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
def ops(app: App) -> Any:
    return load_handler("ops")


@pytest.fixture
def notify(app: App) -> Any:
    return load_handler("notify_worker")
