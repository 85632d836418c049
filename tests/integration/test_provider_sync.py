"""Provider sync against real PostgreSQL, a moto server built from template.yaml and the fake
provider on loopback: accounts, signed webhooks, SyncWorker, the poller."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from local.fake_provider import DEFAULT_API_KEY, FakeProvider
from tests.integration.conftest import App
from tests.support import (
    REPO,
    LambdaContext,
    http_event,
    http_response,
    load_handler,
    reset_process_state,
    sqs_event,
)

SECRET = "whsec_test_secret_0123456789abcdef"


@pytest.fixture
def worker(app: App) -> Any:
    return load_handler("sync_worker")


@pytest.fixture
def poller(app: App) -> Any:
    return load_handler("provider_poller")


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def sync_app(app: App, monkeypatch: pytest.MonkeyPatch) -> App:
    # The fake provider speaks plain HTTP on loopback (allowed here as make dev allows it);
    # retries should not sleep for long.
    monkeypatch.setenv("PROVIDER_ALLOW_HTTP", "true")
    monkeypatch.setenv("PROVIDER_ALLOWED_HOSTS", "127.0.0.1")
    monkeypatch.setenv("PROVIDER_BACKOFF_BASE_SECONDS", "0.01")
    monkeypatch.setenv("PROVIDER_BACKOFF_MAX_SECONDS", "0.05")
    reset_process_state()
    return app


def call(api: Any, event: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    return http_response(api.handler(event, LambdaContext()))


def admin_event(method: str, path: str, clinic_id: uuid.UUID, body: Any = None) -> dict[str, Any]:
    event = http_event(method, path, body=body, clinic_id=clinic_id)
    event["requestContext"]["authorizer"]["jwt"]["claims"]["roles"] = "[staff admin]"
    return event


def rows(app: App, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(app.database_url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def drain(app: App, worker: Any) -> int:
    """Run SyncWorker over the sync queue like Lambda's event source mapping."""
    return app.drain("SyncWorker", worker, retry_after_seconds=0)


def drain_emptying_the_screens_queues(
    app: App, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> int:
    """`drain`, emptying between rounds the queues the bus fills and no test here reads
    (live screens, outbound webhooks, staff emails): moto reads every message of a queue on
    each send to it, so a few thousand events waiting there make each relayed event slower."""
    # moto refuses a second purge within 60 s, as SQS does, unless told otherwise.
    monkeypatch.setenv("MOTO_SQS_ENFORCE_STRICT_QUEUE_PURGE_BEHAVIOUR", "false")
    seen = 0
    while received := app.drain("SyncWorker", worker, rounds=20, retry_after_seconds=0):
        seen += received
        for sink in ("PushQueue", "WebhooksQueue", "NotificationsQueue"):
            app.sqs().purge_queue(QueueUrl=app.queue_url(sink))
    return seen


def queued_messages(app: App) -> int:
    attributes = app.sqs().get_queue_attributes(
        QueueUrl=app.queue_url("SyncQueue"), AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


def connect(app: App, api: Any, worker: Any, fake: FakeProvider, api_key: str = DEFAULT_API_KEY):  # type: ignore[no-untyped-def]
    """An admin connects the fake provider; SyncWorker validates it. Returns the account id."""
    body = {
        "provider": "generic",
        "name": "Fake ads",
        "apiBaseUrl": fake.url,
        "credentials": {"apiKey": api_key},
        "webhookSecret": SECRET,
        "requestsPerSecond": 1000,
    }
    status, headers, saved = call(
        api, admin_event("POST", "/provider-accounts", app.clinic_id, body)
    )
    assert status == 202, saved
    assert saved["data"]["status"] == "pending" and "webhookSecret" not in saved["data"]
    assert headers["location"] == f"/jobs/{saved['data']['jobId']}"
    drain(app, worker)
    return saved["data"]["id"]


def webhook(
    api: Any, account_id: str, body: bytes, signature: str | None, **headers: str
) -> tuple[int, dict[str, str], Any]:
    sent = {"content-type": "application/json", **headers}
    if signature is not None:
        sent["webhook-signature"] = signature
    return call(
        api,
        http_event("POST", f"/webhooks/generic/{account_id}", body=body.decode(), headers=sent),
    )


def test_saving_credentials_answers_at_once_and_validation_shows_in_the_status(
    sync_app: App, api: Any, worker: Any, fake: FakeProvider
) -> None:
    # Given the fake provider and an admin
    # When a good and a bad key are saved and SyncWorker runs their validation jobs
    good = connect(sync_app, api, worker, fake)
    bad = connect(sync_app, api, worker, fake, api_key="wrong-key")
    # Then the account statuses show the provider's answers
    status, _, account = call(
        api, admin_event("GET", f"/provider-accounts/{good}", sync_app.clinic_id)
    )
    assert status == 200 and account["data"]["status"] == "active"
    assert account["data"]["lastError"] is None and account["data"]["validatedAt"]
    _, _, refused = call(api, admin_event("GET", f"/provider-accounts/{bad}", sync_app.clinic_id))
    assert refused["data"]["status"] == "invalid" and "401" in refused["data"]["lastError"]
    # And no secret is readable, not in the answer, not in plaintext in the database
    assert DEFAULT_API_KEY not in json.dumps(account) and SECRET not in json.dumps(account)
    (stored,) = rows(sync_app, "SELECT provider_accounts::text FROM provider_accounts LIMIT 1")
    assert DEFAULT_API_KEY not in stored[0] and SECRET not in stored[0]
    # And staff without the admin role, or another clinic, get nothing
    status, _, _ = call(api, http_event("GET", "/provider-accounts", clinic_id=sync_app.clinic_id))
    assert status == 403
    status, _, _ = call(
        api, admin_event("GET", f"/provider-accounts/{good}", sync_app.other_clinic_id)
    )
    assert status == 404


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:169.254.169.254]/",
        "https://[fd00:ec2::254]/",
        "https://10.0.0.5/",
        "https://2130706433/",
        "https://localhost:8443/",
        "https://metadata.google.internal/",
    ],
)
def test_an_account_pointing_inside_is_refused_when_saved(
    sync_app: App, api: Any, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a deployment that allows no address but public ones, and a base URL naming the
    # metadata service, a private or loopback address
    monkeypatch.setenv("PROVIDER_ALLOWED_HOSTS", "")
    reset_process_state()
    body = {"provider": "generic", "apiBaseUrl": url, "credentials": {"apiKey": "k"}}
    # When an admin saves it / Then it is a 422 and nothing is stored or enqueued
    status, _, problem = call(
        api, admin_event("POST", "/provider-accounts", sync_app.clinic_id, body)
    )
    assert status == 422 and "public" in problem["detail"], problem
    assert rows(sync_app, "SELECT count(*) FROM provider_accounts") == [(0,)]
    assert rows(sync_app, "SELECT count(*) FROM jobs") == [(0,)]


def resolve_to_loopback(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """DNS as an attacker controlling `name` answers once the URL was saved: loopback."""
    import socket

    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == name else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_a_provider_host_that_resolves_inside_is_never_called(
    sync_app: App, api: Any, worker: Any, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a host name that passes the check when saved, then resolves to loopback (DNS
    # rebinding) where a server listens; loopback is not allowed in this deployment
    monkeypatch.setenv("PROVIDER_ALLOWED_HOSTS", "")
    reset_process_state()
    resolve_to_loopback(monkeypatch, "provider.rebind.example")
    port = fake.url.rsplit(":", 1)[1]
    body = {
        "provider": "generic",
        "apiBaseUrl": f"http://provider.rebind.example:{port}",
        "credentials": {"apiKey": DEFAULT_API_KEY},
    }
    status, _, saved = call(
        api, admin_event("POST", "/provider-accounts", sync_app.clinic_id, body)
    )
    assert status == 202, saved
    # And an account saved before the rule, pointing at loopback itself
    status, _, legacy = call(
        api,
        admin_event(
            "POST",
            "/provider-accounts",
            sync_app.clinic_id,
            {**body, "apiBaseUrl": "https://provider.example"},
        ),
    )
    assert status == 202, legacy
    with psycopg.connect(sync_app.database_url) as conn:
        conn.execute(
            "UPDATE provider_accounts SET api_base_url = %s WHERE id = %s",
            (fake.url, legacy["data"]["id"]),
        )
    # When SyncWorker validates both
    drain(sync_app, worker)
    # Then neither was called: both are invalid, saying why, and the server saw nothing
    for account in (saved, legacy):
        _, _, found = call(
            api,
            admin_event("GET", f"/provider-accounts/{account['data']['id']}", sync_app.clinic_id),
        )
        assert found["data"]["status"] == "invalid", found
        assert "public" in found["data"]["lastError"], found
    assert fake.requests == []


def test_a_provider_redirect_is_not_followed() -> None:
    # Given a provider (allowed, on loopback) that redirects to the metadata service
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from frontdesk.sync.egress import Egress
    from frontdesk.sync.providers import GenericJsonAdapter, ProviderRejected

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        adapter = GenericJsonAdapter(url, {"apiKey": "k"}, 2.0, Egress.of(True, ["127.0.0.1"]))
        # When the worker calls it / Then the redirect is the provider's answer, not followed
        with pytest.raises(ProviderRejected, match="302"):
            adapter.validate()
    finally:
        server.shutdown()
        server.server_close()


def test_bad_webhooks_are_refused_and_enqueue_nothing(
    sync_app: App, api: Any, worker: Any, fake: FakeProvider
) -> None:
    # Given a connected account and one good delivery already accepted
    account = connect(sync_app, api, worker, fake)
    change = fake.add_lead("Ada Lovelace", "ada@example.org")
    body, signature = fake.webhook(change, SECRET)
    status, _, first = webhook(api, account, body, signature)
    assert status == 202 and first["data"]["duplicate"] is False
    before = (
        rows(sync_app, "SELECT count(*) FROM jobs WHERE kind = 'sync.fetch'"),
        rows(sync_app, "SELECT count(*) FROM outbox"),
        rows(sync_app, "SELECT count(*) FROM webhook_deliveries"),
        queued_messages(sync_app),
    )
    now = int(time.time())
    other = fake.add_lead("Grace Hopper", "grace@example.org")
    other_body, _ = fake.webhook(other, SECRET)
    refusals = {
        # When the signature is made with another secret
        "bad signature": (other_body, fake.webhook(other, "whsec_wrong_secret_0123456")[1]),
        # When the signed timestamp is too old or too far ahead (the unit tests pin 300 s)
        "stale": (other_body, fake.webhook(other, SECRET, at=now - 400)[1]),
        "future": (other_body, fake.webhook(other, SECRET, at=now + 400)[1]),
        # When the body was changed after signing, or the header is missing or malformed
        "tampered": (other_body.replace(b"chg_", b"chX_"), fake.webhook(other, SECRET)[1]),
        "unsigned": (other_body, None),
        "malformed": (other_body, "t=abc,v1=zz"),
    }
    for reason, (sent, signature) in refusals.items():
        status, _, problem = webhook(api, account, sent, signature)
        # Then each is refused as unauthorized, saying why
        assert status == 401, (reason, problem)
        assert problem["title"] == "Unauthorized"
    # When the body is over the webhook limit (16 KiB)
    padded = json.dumps({**other, "padding": "x" * 17_000}).encode()
    status, _, problem = webhook(api, account, padded, fake.webhook(other, SECRET)[1])
    assert status == 413, problem
    # When the first delivery is replayed, correctly signed
    status, _, replay = webhook(api, account, body, fake.webhook(change, SECRET)[1])
    # Then it is answered without effect (2xx, so an honest provider retry stops)
    assert status == 200 and replay["data"]["duplicate"] is True
    assert replay["data"]["jobId"] == first["data"]["jobId"]
    # When the account id is unknown, or the provider in the path is not the account's
    status, _, _ = webhook(api, str(uuid.uuid4()), other_body, fake.webhook(other, SECRET)[1])
    assert status == 404
    status, _, _ = call(
        api,
        http_event(
            "POST",
            f"/webhooks/other/{account}",
            body=other_body.decode(),
            headers={"webhook-signature": fake.webhook(other, SECRET)[1]},
        ),
    )
    assert status == 404
    # Then nothing of any refusal was recorded or enqueued
    after = (
        rows(sync_app, "SELECT count(*) FROM jobs WHERE kind = 'sync.fetch'"),
        rows(sync_app, "SELECT count(*) FROM outbox"),
        rows(sync_app, "SELECT count(*) FROM webhook_deliveries"),
        queued_messages(sync_app),
    )
    assert after == before


@pytest.mark.slow
def test_a_burst_of_250_deliveries_with_duplicates_yields_exactly_the_unique_leads(
    sync_app: App, api: Any, worker: Any, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 200 leads at the provider, and 250 webhook deliveries: each change once, plus
    # 50 repeats of earlier deliveries (20%)
    account = connect(sync_app, api, worker, fake)
    changes = [fake.add_lead(f"Lead {i}", f"lead{i}@example.org") for i in range(200)]
    deliveries = changes + changes[::4]
    assert len(deliveries) == 250
    # When they all arrive through the API handler
    statuses = [webhook(api, account, *fake.webhook(change, SECRET))[0] for change in deliveries]
    # Then 200 are accepted, 50 recognised as replays
    assert statuses.count(202) == 200 and statuses.count(200) == 50
    # When SyncWorker drains the queue
    assert drain_emptying_the_screens_queues(sync_app, worker, monkeypatch) == 200
    # Then exactly the 200 unique leads exist, each once, with one lead.created event each
    assert rows(
        sync_app,
        "SELECT count(*), count(DISTINCT external_id) FROM leads WHERE provider = 'generic'",
    ) == [(200, 200)]
    assert rows(
        sync_app,
        "SELECT count(*) FROM outbox WHERE payload->>'detailType' = 'lead.created'",
    ) == [(200,)]
    assert rows(
        sync_app, "SELECT status, count(*) FROM jobs WHERE kind = 'sync.fetch' GROUP BY status"
    ) == [("succeeded", 200)]
    # When SQS redelivers some messages (at least once) and the worker sees them again
    (job_id,) = rows(sync_app, "SELECT id FROM jobs WHERE kind = 'sync.fetch' LIMIT 1")[0]
    body = json.dumps(
        {"jobId": str(job_id), "kind": "sync.fetch", "clinicId": str(sync_app.clinic_id)}
    )
    answer = worker.handler(sqs_event([body, body]), LambdaContext())
    # Then nothing changes
    assert answer == {"batchItemFailures": []}
    assert rows(sync_app, "SELECT count(*) FROM leads WHERE provider = 'generic'") == [(200,)]


def test_a_provider_that_answers_429_then_succeeds(
    sync_app: App, api: Any, worker: Any, fake: FakeProvider
) -> None:
    # Given a connected account and a lead whose webhook arrives
    account = connect(sync_app, api, worker, fake)
    change = fake.add_lead("Katherine Johnson", phone="+1 555 0100 999")
    status, _, accepted = webhook(api, account, *fake.webhook(change, SECRET))
    assert status == 202
    # When the provider rate-limits the next two calls, then answers
    fake.rate_limit(2, retry_after=0)
    assert drain(sync_app, worker) == 1
    # Then the worker waited and retried within the same invocation, and the lead is there
    job_id = accepted["data"]["jobId"]
    _, _, job = call(api, http_event("GET", f"/jobs/{job_id}", clinic_id=sync_app.clinic_id))
    assert job["data"]["status"] == "succeeded" and job["data"]["attempts"] == 1
    assert job["data"]["result"]["created"] == 1 and job["data"]["result"]["retries"] == 2
    assert fake.requests[-3:] == [f"/v1/leads/{change['resourceId']}"] * 3
    (lead_id,) = rows(
        sync_app, "SELECT id FROM leads WHERE external_id = %s", change["resourceId"]
    )[0]
    _, _, lead = call(api, http_event("GET", f"/leads/{lead_id}", clinic_id=sync_app.clinic_id))
    assert lead["data"]["name"] == "Katherine Johnson" and lead["data"]["source"] == "generic"


def test_a_provider_that_keeps_failing_fails_the_record_and_the_breaker_opens(
    sync_app: App, api: Any, worker: Any, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a connected account, a breaker that opens after one exhausted call
    monkeypatch.setenv("PROVIDER_BREAKER_FAILURE_THRESHOLD", "1")
    monkeypatch.setenv("PROVIDER_MAX_ATTEMPTS", "2")
    reset_process_state()
    account = connect(sync_app, api, worker, fake)
    change = fake.add_lead("Hedy Lamarr", "hedy@example.org")
    webhook(api, account, *fake.webhook(change, SECRET))
    # When the provider answers 503 to everything
    fake.fail(100, status=503)
    (job_id,) = rows(sync_app, "SELECT id FROM jobs WHERE kind = 'sync.fetch'")[0]
    body = json.dumps(
        {"jobId": str(job_id), "kind": "sync.fetch", "clinicId": str(sync_app.clinic_id)}
    )
    first = worker.handler(sqs_event([body]), LambdaContext())
    calls_after_first = len(fake.requests)
    second = worker.handler(sqs_event([body]), LambdaContext())
    # Then both attempts fail their record (SQS retries), the second without calling at all
    assert len(first["batchItemFailures"]) == 1 and len(second["batchItemFailures"]) == 1
    assert len(fake.requests) == calls_after_first
    (state,) = rows(sync_app, "SELECT state FROM circuit_breakers")[0]
    assert state == "open"
    # And the job and the account say why
    assert rows(sync_app, "SELECT status FROM jobs WHERE id = %s", job_id) == [("running",)]
    (error,) = rows(sync_app, "SELECT last_error FROM provider_accounts WHERE id = %s", account)[0]
    assert "503" in error
    # When the last receive fails too
    last = worker.handler(sqs_event([body], receive_count=5), LambdaContext())
    assert len(last["batchItemFailures"]) == 1
    # Then the job is dead (the message goes to the DLQ)
    assert rows(sync_app, "SELECT status FROM jobs WHERE id = %s", job_id) == [("dead",)]


def test_missed_webhooks_are_recovered_by_the_poller(
    sync_app: App, api: Any, worker: Any, poller: Any, fake: FakeProvider
) -> None:
    # Given five new leads at the provider, of which only two webhooks arrived
    account = connect(sync_app, api, worker, fake)
    changes = [fake.add_lead(f"Person {i}", f"p{i}@example.org") for i in range(5)]
    for change in changes[:2]:
        assert webhook(api, account, *fake.webhook(change, SECRET))[0] == 202
    drain(sync_app, worker)
    # When the poller runs
    scheduled = json.loads((REPO / "events" / "provider_poller.json").read_text())
    totals = poller.handler(scheduled, LambdaContext())
    # Then it saw five changes and enqueued the three missed ones, in one job, and moved
    # the cursor past them
    assert totals["changes"] == 5 and totals["missed"] == 3
    assert rows(sync_app, "SELECT sync_cursor FROM provider_accounts WHERE id = %s", account) == [
        ("5",)
    ]
    assert drain(sync_app, worker) == 1
    assert rows(sync_app, "SELECT count(*) FROM leads WHERE provider = 'generic'") == [(5,)]
    # When it runs again with nothing new, and the provider then fails
    again = poller.handler({}, LambdaContext())
    assert again["missed"] == 0 and queued_messages(sync_app) == 0
    fake.add_lead("Person 6", "p6@example.org")
    fake.fail(100)
    failed = poller.handler({}, LambdaContext())
    # Then the cursor stays where the durable work ended, so the next poll finds it
    assert failed["failed"] == 1
    assert rows(sync_app, "SELECT sync_cursor FROM provider_accounts WHERE id = %s", account) == [
        ("5",)
    ]


# ---------------------------------------------------------------- bulk CSV imports


def csv_upload(
    api: Any, clinic_id: uuid.UUID, text: str, **query: str
) -> tuple[int, dict[str, str], Any]:
    event = http_event(
        "POST",
        "/leads/imports",
        body=text,
        clinic_id=clinic_id,
        headers={"content-type": "text/csv"},
        query="&".join(f"{k}={v}" for k, v in query.items()),
    )
    return call(api, event)


def people_csv(count: int, bad_every: int = 0) -> tuple[str, set[int]]:
    """A CSV of `count` rows; every `bad_every`-th has a broken email. Returns the text and
    the line numbers of the bad rows."""
    lines = ["name,email,phone,notes,consent"]
    bad = set()
    for i in range(count):
        line_no = i + 2
        if bad_every and i % bad_every == bad_every - 1:
            lines.append(f"Broken {i},not-an-email,,,yes")
            bad.add(line_no)
        else:
            lines.append(f'"Person, {i}",person{i}@example.org,+1 555 {i:07d},"said ""hi""",yes')
    return "\n".join(lines) + "\n", bad


def test_import_of_a_file_with_bad_rows_reports_them_and_imports_the_rest(
    sync_app: App, api: Any, worker: Any
) -> None:
    # Given a CSV with good rows, rows that break the rules, and a malformed line
    text, bad = people_csv(40, bad_every=10)
    text += "Only a name,,,,\n" + '"Unclosed quote,x@example.org,,,no\n'
    # When staff upload it
    status, headers, accepted = csv_upload(api, sync_app.clinic_id, text, source="old_crm")
    # Then it is accepted at once with its job
    assert status == 202, accepted
    job_id = accepted["data"]["jobId"]
    assert headers["location"] == f"/jobs/{job_id}" and accepted["data"]["rowsTotal"] == 42
    # When SyncWorker processes it
    assert drain(sync_app, worker) == 1
    # Then the job succeeded and shows rows done, imported and each bad row's line and reason
    _, _, job = call(api, http_event("GET", f"/jobs/{job_id}", clinic_id=sync_app.clinic_id))
    result = job["data"]["result"]
    assert job["data"]["status"] == "succeeded" and job["data"]["progress"] == 100
    assert (result["rowsDone"], result["rowsImported"], result["errorCount"]) == (42, 36, 6)
    errors = {e["line"]: e["reason"] for e in result["errors"]}
    assert set(errors) == bad | {42, 43}
    assert errors[11] == "email: not an email address"
    assert errors[42] == "give an email, a phone number, or both"
    assert "36 imported" in job["data"]["progress_message"]
    # And the leads are stored encrypted, readable by staff, with the quoted commas intact
    (lead_id,) = rows(sync_app, "SELECT id FROM leads WHERE external_id LIKE '%%:2'")[0]
    _, _, lead = call(api, http_event("GET", f"/leads/{lead_id}", clinic_id=sync_app.clinic_id))
    assert lead["data"]["name"] == "Person, 0" and lead["data"]["notes"] == 'said "hi"'
    assert lead["data"]["source"] == "old_crm" and lead["data"]["consent"] is True
    (stored,) = rows(sync_app, "SELECT leads::text FROM leads WHERE id = %s", lead_id)[0]
    assert "person0@example.org" not in stored and "Person" not in stored


def test_rows_not_utf8_or_holding_control_characters_are_row_errors(
    sync_app: App, api: Any, worker: Any
) -> None:
    # Given a UTF-8 header, good rows, a row in Latin-1, a row whose quoted notes span a line
    # that is not UTF-8, and rows with a control character in a name or an address
    data = (
        "name,email,phone,notes,consent\nZoë Good,zoe@example.org,,,yes\n".encode()
        + "Renée Latin,renee@example.org,,,yes\n".encode("latin-1")
        + b'Long Notes,long@example.org,,"first line\nsecond \xff line",yes\n'
        + b"Bell\x07Name,bell@example.org,,,yes\n"
        + b"Esc Name,esc\x1b@example.org,,,yes\n"
        + "José Fine,jose@example.org,,multi\tline ok,no\n".encode()
    )
    event = http_event(
        "POST",
        "/leads/imports",
        body=base64.b64encode(data).decode(),
        clinic_id=sync_app.clinic_id,
        headers={"content-type": "text/csv"},
    )
    event["isBase64Encoded"] = True
    # When it is uploaded and SyncWorker imports it
    status, _, accepted = call(api, event)
    assert status == 202, accepted
    assert drain(sync_app, worker) == 1
    # Then each such row is an error with its line number, and the good rows are imported
    _, _, job = call(
        api,
        http_event("GET", f"/jobs/{accepted['data']['jobId']}", clinic_id=sync_app.clinic_id),
    )
    result = job["data"]["result"]
    assert job["data"]["status"] == "succeeded"
    assert {e["line"]: e["reason"] for e in result["errors"]} == {
        3: "the row is not UTF-8",
        4: "the row is not UTF-8",
        6: "name: no control characters (a NUL, a line break, a tab) are allowed",
        7: "email: no control characters (a NUL, a line break, a tab) are allowed",
    }
    assert (result["rowsDone"], result["rowsImported"]) == (6, 2)
    (count,) = rows(sync_app, "SELECT count(*) FROM leads")[0]
    assert count == 2


def test_bad_uploads_are_refused(sync_app: App, api: Any) -> None:
    # Given uploads with unknown columns, no contact column, JSON instead of CSV, or too big
    refused = [
        csv_upload(api, sync_app.clinic_id, "name,email,ssn\nA,a@example.org,1\n"),
        csv_upload(api, sync_app.clinic_id, "name,notes\nA,b\n"),
        csv_upload(api, sync_app.clinic_id, "", source="x"),
        call(
            api,
            http_event("POST", "/leads/imports", body={"name": "x"}, clinic_id=sync_app.clinic_id),
        ),
    ]
    # Then each gets its 4xx and nothing is stored
    assert [status for status, _, _ in refused] == [422, 422, 422, 415]
    assert rows(sync_app, "SELECT count(*) FROM lead_imports") == [(0,)]
    # And the CSV limit is the route's own, not the 64 KiB JSON limit
    text, _ = people_csv(1500)
    assert len(text) > 64 * 1024
    status, _, _ = csv_upload(api, sync_app.clinic_id, text)
    assert status == 202


def test_an_import_killed_mid_way_resumes_without_duplicates(
    sync_app: App, api: Any, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given small chunks (about 12 rows each) and an upload of 100 rows, 5 of them bad
    monkeypatch.setenv("IMPORT_CHUNK_BYTES", "1024")
    reset_process_state()
    text, bad = people_csv(100, bad_every=20)
    _, _, accepted = csv_upload(api, sync_app.clinic_id, text)
    job_id = accepted["data"]["jobId"]
    # When the worker dies inside its fourth chunk's transaction
    from frontdesk.leads import imports as leads  # where the worker looks it up

    real_insert = leads.insert_imported
    calls = {"n": 0}

    def dies_in_fourth_chunk(*args: Any, **kwargs: Any) -> int:
        calls["n"] += 1
        inserted = real_insert(*args, **kwargs)
        if calls["n"] == 4:
            raise MemoryError("the container died")  # after the INSERT, before the commit
        return inserted

    monkeypatch.setattr(leads, "insert_imported", dies_in_fourth_chunk)
    body = json.dumps(
        {"jobId": job_id, "kind": "leads.import", "clinicId": str(sync_app.clinic_id)}
    )
    first = worker.handler(sqs_event([body]), LambdaContext())
    assert len(first["batchItemFailures"]) == 1
    # Then three chunks are committed and the job shows their progress
    (chunks, done, offset) = rows(
        sync_app, "SELECT chunks_done, rows_done, next_offset FROM lead_imports"
    )[0]
    assert chunks == 3 and 0 < done < 100
    _, _, job = call(api, http_event("GET", f"/jobs/{job_id}", clinic_id=sync_app.clinic_id))
    assert job["data"]["status"] == "running" and 0 < job["data"]["progress"] < 100
    assert job["data"]["result"]["rowsDone"] == done
    assert rows(sync_app, "SELECT count(*) FROM leads") == [
        (done - len(bad & set(range(2, done + 2))),)
    ]
    # When the message is delivered again (the same message, twice, as SQS may)
    monkeypatch.setattr(leads, "insert_imported", real_insert)
    second = worker.handler(sqs_event([body, body]), LambdaContext())
    # Then the import resumed from the last committed chunk and finished, without duplicates
    assert second == {"batchItemFailures": []}
    assert rows(sync_app, "SELECT count(*), count(DISTINCT external_id) FROM leads") == [(95, 95)]
    _, _, job = call(api, http_event("GET", f"/jobs/{job_id}", clinic_id=sync_app.clinic_id))
    assert job["data"]["status"] == "succeeded" and job["data"]["attempts"] == 2
    assert job["data"]["result"]["rowsImported"] == 95
    assert {e["line"] for e in job["data"]["result"]["errors"]} == bad
    assert offset > 0


def test_an_import_is_cancelled_between_chunks(
    sync_app: App, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an upload of 100 rows in chunks of about 12
    text, _ = people_csv(100)
    _, _, accepted = csv_upload(api, sync_app.clinic_id, text)
    job_id = uuid.UUID(accepted["data"]["jobId"])
    from frontdesk.leads import imports
    from frontdesk.platform import jobs
    from frontdesk.services import get_services

    def cancel_after_second_chunk(chunks_done: int) -> None:
        if chunks_done == 2:
            with get_services().unit_of_work() as uow:
                jobs.cancel_job(uow.cur, clinic_id=sync_app.clinic_id, job_id=job_id)

    # When staff cancel it while the worker runs
    outcome = imports.run(
        get_services(),
        job_id=job_id,
        clinic_id=sync_app.clinic_id,
        chunk_bytes=1024,
        remaining_seconds=lambda: 100.0,
        on_chunk=cancel_after_second_chunk,
    )
    # Then the worker stops before the third chunk; the two committed chunks stay
    assert outcome == "cancelled"
    (done,) = rows(sync_app, "SELECT rows_done FROM lead_imports")[0]
    assert 0 < done < 100
    assert rows(sync_app, "SELECT count(*) FROM leads") == [(done,)]
    assert rows(sync_app, "SELECT status FROM jobs WHERE id = %s", job_id) == [("cancelled",)]
    # And the uploaded file is forgotten
    assert rows(sync_app, "SELECT count(*) FROM lead_import_parts") == [(0,)]


def test_an_uploaded_file_is_encrypted_at_rest_and_forgotten_when_imported(
    sync_app: App, api: Any, worker: Any
) -> None:
    # Given an upload of 2,000 rows (one part)
    text, _ = people_csv(2000)
    status, _, accepted = csv_upload(api, sync_app.clinic_id, text)
    assert status == 202, accepted
    # Then what is stored of it is ciphertext under the import's data key
    ((dek, parts, stored),) = rows(
        sync_app,
        """SELECT i.dek IS NOT NULL, count(p.part), sum(length(p.data))
           FROM lead_imports i JOIN lead_import_parts p ON p.import_id = i.id GROUP BY i.dek""",
    )
    assert dek and parts == 1 and stored == len(text) + 28  # nonce and tag
    ((data,),) = rows(sync_app, "SELECT data FROM lead_import_parts")
    assert b"person1@example.org" not in bytes(data) and b"Person" not in bytes(data)
    # When SyncWorker imports it
    assert drain(sync_app, worker) == 1
    # Then every row is imported and the file is gone
    assert rows(sync_app, "SELECT count(*) FROM leads") == [(2000,)]
    assert rows(sync_app, "SELECT count(*) FROM lead_import_parts") == [(0,)]


def test_an_import_stored_before_files_were_encrypted_still_imports(
    sync_app: App, api: Any, worker: Any
) -> None:
    # Given an upload stored as plaintext parts without a data key (before migration 0009)
    text, _ = people_csv(30)
    _, _, accepted = csv_upload(api, sync_app.clinic_id, text)
    with psycopg.connect(sync_app.database_url) as conn:
        conn.execute("UPDATE lead_imports SET dek = NULL, kms_key_id = NULL")
        conn.execute("UPDATE lead_import_parts SET data = %s", (text.encode(),))
    # When SyncWorker imports it / Then it reads the plaintext as before
    assert drain(sync_app, worker) == 1
    _, _, job = call(
        api, http_event("GET", f"/jobs/{accepted['data']['jobId']}", clinic_id=sync_app.clinic_id)
    )
    assert job["data"]["status"] == "succeeded", job
    assert job["data"]["result"]["rowsImported"] == 30


# ---------------------------------------------------------------- provider bookings


def mapped_doctor(app: App, api: Any, external_id: str, name: str = "Dr. Provider") -> str:
    """A doctor of the clinic mapped to the provider's doctor id (PATCH /doctors/{id})."""
    body = {
        "name": name,
        "slotMinutes": 30,
        "workingHours": [{"weekday": 1, "start": "09:00", "end": "17:00"}],
    }
    status, _, created = call(
        api, http_event("POST", "/doctors", body=body, clinic_id=app.clinic_id)
    )
    assert status == 201, created
    doctor_id: str = created["data"]["id"]
    patch = {"providerIds": {"generic": external_id}}
    status, _, updated = call(
        api, http_event("PATCH", f"/doctors/{doctor_id}", body=patch, clinic_id=app.clinic_id)
    )
    assert status == 200 and updated["data"]["providerIds"] == {"generic": external_id}, updated
    return doctor_id


def booking_events(app: App) -> list[tuple[Any, ...]]:
    return rows(
        app,
        """SELECT payload->>'detailType', payload->'detail'->>'appointmentId',
                  payload->'detail'->>'startsAt', payload->'detail'->>'previousStartsAt'
           FROM outbox WHERE payload->>'detailType' LIKE 'appointment.%%' ORDER BY id""",
    )


def sync_booking(app: App, api: Any, worker: Any, account: str, change: dict[str, Any]) -> Any:
    """Deliver the change by webhook, run SyncWorker, return the job's result."""
    status, _, accepted = webhook(api, account, *FakeProvider.webhook(change, SECRET))
    assert status == 202, accepted
    assert drain(app, worker) == 1
    _, _, job = call(
        api, http_event("GET", f"/jobs/{accepted['data']['jobId']}", clinic_id=app.clinic_id)
    )
    assert job["data"]["status"] == "succeeded", job
    return job["data"]["result"]


MONDAY = "2030-01-07"


def test_a_provider_booking_is_upserted_once_then_rescheduled_and_cancelled(
    sync_app: App, api: Any, worker: Any, fake: FakeProvider
) -> None:
    # Given a connected account and a doctor mapped to the provider's doctor "D-1"
    account = connect(sync_app, api, worker, fake)
    doctor = mapped_doctor(sync_app, api, "D-1")
    # When a booking arrives by webhook
    change = fake.add_booking(
        "D-1",
        f"{MONDAY}T09:00:00+00:00",
        f"{MONDAY}T09:30:00+00:00",
        "Ada Lovelace",
        "ada@example.org",
        booking_id="B-1",
    )
    result = sync_booking(sync_app, api, worker, account, change)
    # Then it is one booked appointment of that doctor, with a new (encrypted) patient
    assert result["bookings"] == {"created": 1, "updated": 0, "unchanged": 0, "skipped": 0}
    appointment = rows(
        sync_app,
        """SELECT id, doctor_id::text, patient_id, starts_at, status, source FROM appointments
           WHERE provider = 'generic' AND external_id = 'B-1'""",
    )
    assert len(appointment) == 1
    appointment_id, doctor_id, patient_id, _, status, source = appointment[0]
    assert (doctor_id, status, source) == (doctor, "booked", "generic")
    (stored,) = rows(sync_app, "SELECT patients::text FROM patients WHERE id = %s", patient_id)[0]
    assert "ada@example.org" not in stored and "Ada" not in stored
    _, _, listed = call(
        api,
        http_event(
            "GET",
            "/appointments",
            clinic_id=sync_app.clinic_id,
            query=f"from={MONDAY}T00:00:00Z&to={MONDAY}T23:00:00Z",
        ),
    )
    assert [a["patientName"] for a in listed["data"]] == ["Ada Lovelace"]
    assert booking_events(sync_app) == [
        ("appointment.booked", str(appointment_id), f"{MONDAY}T09:00:00Z", None)
    ]
    # When the same booking is delivered again, unchanged (a new delivery id: a provider
    # redelivery, or the poller) and the job message is redelivered by SQS
    again = {**change, "id": "chg_redelivered"}
    result = sync_booking(sync_app, api, worker, account, again)
    # Then nothing changes and no event is written
    assert result["bookings"] == {"created": 0, "updated": 0, "unchanged": 1, "skipped": 0}
    assert rows(sync_app, "SELECT count(*) FROM appointments") == [(1,)]
    assert rows(sync_app, "SELECT count(*) FROM patients") == [(1,)]
    assert len(booking_events(sync_app)) == 1
    # When the provider moves it (a newer updatedAt)
    moved = fake.add_booking(
        "D-1",
        f"{MONDAY}T11:00:00+00:00",
        f"{MONDAY}T11:30:00+00:00",
        "Ada Lovelace",
        "ada@example.org",
        booking_id="B-1",
    )
    result = sync_booking(sync_app, api, worker, account, moved)
    # Then the same appointment is rescheduled, with its event
    assert result["bookings"]["updated"] == 1
    assert rows(sync_app, "SELECT id, starts_at::text, status FROM appointments") == [
        (appointment_id, f"{MONDAY} 11:00:00+00", "booked")
    ]
    assert booking_events(sync_app)[-1] == (
        "appointment.rescheduled",
        str(appointment_id),
        f"{MONDAY}T11:00:00Z",
        f"{MONDAY}T09:00:00Z",
    )
    # When an older version arrives late
    with fake._lock:
        fake.bookings["B-1"] = {
            **fake.bookings["B-1"],
            "startsAt": f"{MONDAY}T13:00:00+00:00",
            "endsAt": f"{MONDAY}T13:30:00+00:00",
            "updatedAt": "2020-01-01T00:00:00+00:00",
        }
    result = sync_booking(sync_app, api, worker, account, {**moved, "id": "chg_stale"})
    # Then it changes nothing
    assert result["bookings"]["unchanged"] == 1 and len(booking_events(sync_app)) == 2
    # When it is cancelled at the provider
    cancelled = fake.add_booking(
        "D-1",
        f"{MONDAY}T11:00:00+00:00",
        f"{MONDAY}T11:30:00+00:00",
        "Ada Lovelace",
        "ada@example.org",
        booking_id="B-1",
        status="cancelled",
    )
    result = sync_booking(sync_app, api, worker, account, cancelled)
    # Then the appointment is cancelled (its slot freed) and appointment.cancelled written
    assert result["bookings"]["updated"] == 1
    assert rows(sync_app, "SELECT status, cancelled_at IS NOT NULL FROM appointments") == [
        ("cancelled", True)
    ]
    assert [e[0] for e in booking_events(sync_app)] == [
        "appointment.booked",
        "appointment.rescheduled",
        "appointment.cancelled",
    ]
    # And a second booking by the same person (same email) reuses the patient
    second = fake.add_booking(
        "D-1",
        f"{MONDAY}T11:00:00+00:00",
        f"{MONDAY}T11:30:00+00:00",
        "Ada L.",
        "ADA@example.org",
        booking_id="B-2",
    )
    result = sync_booking(sync_app, api, worker, account, second)
    assert result["bookings"]["created"] == 1
    assert rows(sync_app, "SELECT count(DISTINCT patient_id), count(*) FROM appointments") == [
        (1, 2)
    ]


def test_provider_bookings_for_unknown_doctors_or_taken_slots_are_skipped_with_a_reason(
    sync_app: App, api: Any, worker: Any, poller: Any, fake: FakeProvider
) -> None:
    # Given a mapped doctor with a booking from the provider at 09:00
    account = connect(sync_app, api, worker, fake)
    mapped_doctor(sync_app, api, "D-1")
    first = fake.add_booking(
        "D-1",
        f"{MONDAY}T09:00:00+00:00",
        f"{MONDAY}T09:30:00+00:00",
        "Ada Lovelace",
        "ada@example.org",
        booking_id="B-1",
    )
    assert sync_booking(sync_app, api, worker, account, first)["bookings"]["created"] == 1
    # When bookings arrive for a doctor we do not know, and for the doctor at 09:15
    # (overlapping 09:00-09:30), in one job with a good one at 10:00
    unknown = fake.add_booking(
        "D-404",
        f"{MONDAY}T09:00:00+00:00",
        f"{MONDAY}T09:30:00+00:00",
        "Grace Hopper",
        phone="+1 555 0100 123",
        booking_id="B-2",
    )
    overlapping = fake.add_booking(
        "D-1",
        f"{MONDAY}T09:15:00+00:00",
        f"{MONDAY}T09:45:00+00:00",
        "Hedy Lamarr",
        "hedy@example.org",
        booking_id="B-3",
    )
    fine = fake.add_booking(
        "D-1",
        f"{MONDAY}T10:00:00+00:00",
        f"{MONDAY}T10:30:00+00:00",
        "Hedy Lamarr",
        "hedy@example.org",
        booking_id="B-4",
    )
    # (their webhooks are lost: the poller brings them, in one job)
    totals = poller.handler({}, LambdaContext())
    assert totals["missed"] == 3
    assert drain(sync_app, worker) == 1
    # Then the job succeeded; the two are skipped, each with its reason; the good one is in
    ((result,),) = rows(
        sync_app,
        """SELECT result FROM jobs WHERE kind = 'sync.fetch' AND status = 'succeeded'
           AND payload->>'via' = 'poll'""",
    )
    assert result["bookings"] == {"created": 1, "updated": 0, "unchanged": 0, "skipped": 2}
    reasons = {s["externalId"]: s["reason"] for s in result["skippedBookings"]}
    assert reasons["B-2"] == "unknown doctor 'D-404'"
    assert "already booked" in reasons["B-3"] and "09:00:00Z" in reasons["B-3"]
    assert [u for u in (unknown, overlapping, fine) if u["resourceId"] not in reasons] == [fine]
    # And the doctor is not double-booked: the first booking stands, the overlap is not stored
    assert rows(
        sync_app,
        "SELECT external_id, starts_at::text FROM appointments ORDER BY starts_at",
    ) == [("B-1", f"{MONDAY} 09:00:00+00"), ("B-4", f"{MONDAY} 10:00:00+00")]
    assert [e[0] for e in booking_events(sync_app)] == ["appointment.booked"] * 2
    # When the provider moves the first booking onto the second (a colliding reschedule)
    moved = fake.add_booking(
        "D-1",
        f"{MONDAY}T10:00:00+00:00",
        f"{MONDAY}T10:30:00+00:00",
        "Ada Lovelace",
        "ada@example.org",
        booking_id="B-1",
    )
    result = sync_booking(sync_app, api, worker, account, moved)
    # Then it is skipped too, the appointment stays where it was, and no event is written
    assert result["bookings"]["skipped"] == 1
    assert rows(sync_app, "SELECT starts_at::text FROM appointments WHERE external_id = 'B-1'") == [
        (f"{MONDAY} 09:00:00+00",)
    ]
    assert len(booking_events(sync_app)) == 2


def test_provider_bookings_of_a_deactivated_doctor_are_skipped_but_cancellations_apply(
    sync_app: App, api: Any, worker: Any, fake: FakeProvider
) -> None:
    # Given a mapped doctor with a provider booking at 09:00, then deactivated here
    account = connect(sync_app, api, worker, fake)
    doctor = mapped_doctor(sync_app, api, "D-1")
    booked = fake.add_booking(
        "D-1",
        f"{MONDAY}T09:00:00+00:00",
        f"{MONDAY}T09:30:00+00:00",
        "Ada Lovelace",
        "ada@example.org",
        booking_id="B-1",
    )
    assert sync_booking(sync_app, api, worker, account, booked)["bookings"]["created"] == 1
    status, _, deactivated = call(
        api,
        http_event("POST", f"/doctors/{doctor}/deactivate", clinic_id=sync_app.clinic_id),
    )
    assert status == 200, deactivated
    assert len(deactivated["data"]["upcomingAppointments"]) == 1
    # When the provider sends a new booking of the doctor, and the old one again unchanged
    new = fake.add_booking(
        "D-1",
        f"{MONDAY}T10:00:00+00:00",
        f"{MONDAY}T10:30:00+00:00",
        "Grace Hopper",
        "grace@example.org",
        booking_id="B-2",
    )
    result = sync_booking(sync_app, api, worker, account, new)
    again = sync_booking(sync_app, api, worker, account, {**booked, "id": "chg_again"})
    # Then the new one is skipped, saying why; the old one is unchanged, not refused
    assert result["bookings"]["skipped"] == 1
    assert result["skippedBookings"] == [
        {"externalId": "B-2", "reason": "doctor 'D-1' is inactive"}
    ]
    assert again["bookings"]["unchanged"] == 1
    # When the provider moves the old one / Then it is skipped and stays where it was
    moved = fake.add_booking(
        "D-1",
        f"{MONDAY}T11:00:00+00:00",
        f"{MONDAY}T11:30:00+00:00",
        "Ada Lovelace",
        "ada@example.org",
        booking_id="B-1",
    )
    assert sync_booking(sync_app, api, worker, account, moved)["bookings"]["skipped"] == 1
    # When the provider cancels it / Then the cancellation applies
    cancelled = fake.add_booking(
        "D-1",
        f"{MONDAY}T09:00:00+00:00",
        f"{MONDAY}T09:30:00+00:00",
        "Ada Lovelace",
        "ada@example.org",
        booking_id="B-1",
        status="cancelled",
    )
    assert sync_booking(sync_app, api, worker, account, cancelled)["bookings"]["updated"] == 1
    assert rows(sync_app, "SELECT external_id, starts_at::text, status FROM appointments") == [
        ("B-1", f"{MONDAY} 09:00:00+00", "cancelled")
    ]
    assert [e[0] for e in booking_events(sync_app)] == [
        "appointment.booked",
        "appointment.cancelled",
    ]


def test_two_workers_booking_one_new_person_create_one_patient(
    sync_app: App, api: Any, worker: Any, fake: FakeProvider
) -> None:
    # Given two bookings of one new person with two doctors, each delivered by its webhook
    account = connect(sync_app, api, worker, fake)
    doctors = [mapped_doctor(sync_app, api, f"D-{n}", name=f"Dr. {n}") for n in (1, 2)]
    jobs = []
    for n in (1, 2):
        change = fake.add_booking(
            f"D-{n}",
            f"{MONDAY}T09:00:00+00:00",
            f"{MONDAY}T09:30:00+00:00",
            "Grace Hopper",
            "grace@example.org",
            booking_id=f"B-{n}",
        )
        status, _, accepted = webhook(api, account, *FakeProvider.webhook(change, SECRET))
        assert status == 202, accepted
        jobs.append(accepted["data"]["jobId"])
    # And SyncWorker running twice at once (two containers: a pool of connections)
    from frontdesk.platform.db import PooledDatabase
    from frontdesk.workers.sync import worker as sync_worker
    from tests.support import use_test_services

    use_test_services(database=PooledDatabase(sync_app.database_url, max_size=4))
    # And the doctors held, so both workers stop after making the patient, before booking
    holder = psycopg.connect(sync_app.database_url)
    holder.execute("SELECT 1 FROM doctors WHERE id = ANY(%s) FOR UPDATE", (doctors,))
    answers: list[Any] = []

    def run(job_id: str) -> None:
        body = json.dumps(
            {"jobId": job_id, "kind": "sync.fetch", "clinicId": str(sync_app.clinic_id)}
        )
        answers.append(sync_worker(sqs_event([body]), LambdaContext()))

    threads = [threading.Thread(target=run, args=(job_id,)) for job_id in jobs]
    for thread in threads:
        thread.start()
    # When both have got as far as they can and the doctors are let go
    for _ in range(1000):
        ((waiting,),) = rows(
            sync_app,
            """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND wait_event_type = 'Lock'""",
        )
        if waiting >= 2:
            break
        time.sleep(0.01)
    holder.rollback()
    holder.close()
    for thread in threads:
        thread.join()
    reset_process_state()
    # Then both bookings are stored, for one and the same new patient
    assert answers == [{"batchItemFailures": []}] * 2
    booked = rows(sync_app, "SELECT DISTINCT patient_id FROM appointments")
    assert len(booked) == 1 and rows(sync_app, "SELECT count(*) FROM patients") == [(1,)]


# ---------------------------------------------------------------- concurrent fetches


def fetch_job(app: App, account: str, fake: FakeProvider, count: int) -> tuple[str, list[str]]:
    """`count` leads at the provider and one sync.fetch job for them, as the poller makes;
    returns the job's SQS body and the leads' external ids."""
    ids = [
        fake.add_lead(f"Person {i}", f"person{i}@example.org")["resourceId"] for i in range(count)
    ]
    payload = {"accountId": account, "items": [{"resource": "lead", "externalId": i} for i in ids]}
    job_id = uuid.uuid4()
    with psycopg.connect(app.database_url) as conn:
        conn.execute(
            """INSERT INTO jobs (id, clinic_id, kind, payload)
               VALUES (%s, %s, 'sync.fetch', %s::jsonb)""",
            (job_id, app.clinic_id, json.dumps(payload)),
        )
    body = json.dumps({"jobId": str(job_id), "kind": "sync.fetch", "clinicId": str(app.clinic_id)})
    return body, ids


def test_a_fetch_job_calls_the_provider_concurrently_never_above_the_bound(
    sync_app: App, api: Any, worker: Any, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a bound of 4 calls in flight, a provider answering in 50 ms, 40 leads to fetch
    monkeypatch.setenv("PROVIDER_FETCH_CONCURRENCY", "4")
    reset_process_state()
    account = connect(sync_app, api, worker, fake)
    body, _ = fetch_job(sync_app, account, fake, 40)
    fake.slow(0.05)
    fake.max_in_flight = 0
    # When SyncWorker runs the job
    answer = worker.handler(sqs_event([body]), LambdaContext())
    # Then the calls overlapped, never more than 4 at once
    assert answer == {"batchItemFailures": []}
    assert fake.max_in_flight == 4
    # And every lead is there once
    assert rows(
        sync_app,
        "SELECT count(*), count(DISTINCT external_id) FROM leads WHERE provider = 'generic'",
    ) == [(40, 40)]
    # When the message comes again (SQS delivers at least once) after the job was reset
    with psycopg.connect(sync_app.database_url) as conn:
        conn.execute("UPDATE jobs SET status = 'queued' WHERE kind = 'sync.fetch'")
    assert worker.handler(sqs_event([body]), LambdaContext()) == {"batchItemFailures": []}
    # Then nothing is duplicated
    assert rows(sync_app, "SELECT count(*) FROM leads WHERE provider = 'generic'") == [(40,)]


def test_concurrent_fetches_keep_the_accounts_rate_limit(
    sync_app: App, api: Any, worker: Any, fake: FakeProvider
) -> None:
    # Given an account allowed 10 calls a second, and 20 leads to fetch (bound 8)
    account = connect(sync_app, api, worker, fake)
    with psycopg.connect(sync_app.database_url) as conn:
        conn.execute(
            "UPDATE provider_accounts SET requests_per_second = 10, next_call_at = now()"
            " WHERE id = %s",
            (account,),
        )
    body, _ = fetch_job(sync_app, account, fake, 20)
    fake.started.clear()
    # When SyncWorker runs the job
    assert worker.handler(sqs_event([body]), LambdaContext()) == {"batchItemFailures": []}
    # Then the calls began no faster than 10 a second: n calls span at least (n - 1) / 10 s
    # (less a little for the scheduling of threads)
    started = sorted(fake.started)
    assert len(started) == 20
    for n in (5, 10, 20):
        for first in range(0, len(started) - n + 1):
            assert started[first + n - 1] - started[first] >= (n - 1) / 10 - 0.05
    assert rows(sync_app, "SELECT count(*) FROM leads WHERE provider = 'generic'") == [(20,)]


def test_a_concurrent_fetch_retries_failed_calls_and_counts_gone_ones(
    sync_app: App, api: Any, worker: Any, fake: FakeProvider
) -> None:
    # Given 20 leads to fetch, one deleted at the provider, and a provider whose next three
    # calls fail with 503
    account = connect(sync_app, api, worker, fake)
    body, ids = fetch_job(sync_app, account, fake, 20)
    fake.leads.pop(ids[7])
    fake.fail(3, status=503)
    # When SyncWorker runs the job
    assert worker.handler(sqs_event([body]), LambdaContext()) == {"batchItemFailures": []}
    # Then the failed calls were retried, the deleted lead counted gone, the rest stored once
    (result,) = rows(sync_app, "SELECT result FROM jobs WHERE kind = 'sync.fetch'")[0]
    assert (result["created"], result["gone"], result["retries"]) == (19, 1, 3)
    assert rows(
        sync_app,
        "SELECT count(*), count(DISTINCT external_id) FROM leads WHERE provider = 'generic'",
    ) == [(19, 19)]
