"""Live screens end to end: browsers on the WebSocket API of the local stack (`make dev`),
events from real writes reaching them through the bus, the push queue and PushWorker."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.e2e.test_dev_runtime import DevProcess, dev_env, state_dir  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def token_for(dev: DevProcess, clinic_id: str, **claims: Any) -> str:
    """A staff token signed as the local stack signs its own."""
    demo = jwt.decode(dev.info["staffToken"], options={"verify_signature": False})
    secret = (dev.state_dir / "local-jwt-secret").read_text().strip()
    now = datetime.now(UTC)
    body = {
        **demo,
        "clinic_id": clinic_id,
        "sub": "other-staff",
        "iat": now,
        "exp": now + timedelta(hours=1),
    }
    return jwt.encode({**body, **claims}, secret, algorithm="HS256")


def open_screen(dev: DevProcess, token: str | None) -> ClientConnection:
    url = f"{dev.info['websocketUrl']}/live"
    return connect(url if token is None else f"{url}?token={token}", open_timeout=20)


def request(screen: ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
    screen.send(json.dumps(message))
    answer: dict[str, Any] = json.loads(screen.recv(timeout=20))
    return answer


def next_event(
    screen: ClientConnection, wanted: str, key: str, value: object, timeout: float = 30
) -> dict[str, Any]:
    """The next pushed event of type `wanted` whose detail has `key` == `value`."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        event: dict[str, Any] = json.loads(screen.recv(timeout=left))
        if event["type"] == wanted and event["detail"].get(key) == value:
            return event
    raise AssertionError(f"no {wanted} with {key}={value} within {timeout} s")


def refused_status(dev: DevProcess, token: str | None) -> int:
    with pytest.raises(InvalidStatus) as refused, open_screen(dev, token):
        pass
    return refused.value.response.status_code


@pytest.fixture
def dev(state_dir: Path, database_url: str) -> Iterator[DevProcess]:  # noqa: F811
    process = DevProcess(state_dir, dev_env(DATABASE_URL=database_url))
    try:
        yield process
    finally:
        assert process.stop() == 0, process.output()


def test_screens_see_their_clinics_leads_and_jobs_live(dev: DevProcess, database_url: str) -> None:
    api, info = dev.info["apiUrl"], dev.info
    other_clinic = str(uuid.uuid4())
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO clinics (id, name, notify_email) VALUES (%s, 'Other', 'o@example.com')",
            (other_clinic,),
        )
    # Given a screen of the demo clinic and one of another clinic, both following leads
    with (
        open_screen(dev, info["staffToken"]) as mine,
        open_screen(dev, token_for(dev, other_clinic)) as theirs,
    ):
        see_leads_and_jobs(api, info, mine, theirs)


def see_leads_and_jobs(
    api: str, info: dict[str, Any], mine: ClientConnection, theirs: ClientConnection
) -> None:
    for screen in (mine, theirs):
        answer = request(screen, {"action": "subscribe", "topics": ["leads", "jobs"]})
        assert answer == {"type": "subscribed", "topics": ["jobs", "leads"]}
    # When the demo web form posts a lead
    created = httpx.post(
        f"{api}/public/leads",
        headers={"X-Form-Key": info["formKey"]},
        json={"name": "Ada Lovelace", "email": "ada@example.com", "consent": True},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    lead_id, job_id = created.json()["data"]["id"], created.json()["data"]["jobId"]
    # Then the clinic's screen sees the lead, then its notification job finish
    event = next_event(mine, "lead.created", "leadId", lead_id)
    assert uuid.UUID(event["eventId"]) and event["detail"]["clinicId"] == info["clinicId"]
    assert "ada@example.com" not in json.dumps(event) and "Ada" not in json.dumps(event)
    done = next_event(mine, "job.completed", "jobId", job_id)
    assert done["detail"]["status"] == "succeeded" and done["detail"]["progress"] == 100
    # When staff import a CSV of leads
    rows = "".join(f"Person {i},person{i}@example.org,,,yes\n" for i in range(50))
    uploaded = httpx.post(
        f"{api}/leads/imports",
        headers={"Authorization": f"Bearer {info['staffToken']}", "Content-Type": "text/csv"},
        content="name,email,phone,notes,consent\n" + rows,
        timeout=30,
    )
    assert uploaded.status_code == 202, uploaded.text
    import_job = uploaded.json()["data"]["jobId"]

    # Then the screen follows the import's job as it runs and when it ends (the queue does
    # not keep their order), and sees the import completed
    def of_the_import(event: dict[str, Any]) -> bool:
        detail = event["detail"]
        if event["type"] == "lead_import.completed":
            return True
        return bool(detail.get("jobId") == import_job and detail["status"] != "queued")

    types = {"job.progress", "job.completed", "lead_import.completed"}
    seen = events_until(mine, of_the_import, types)
    assert seen["job.progress"]["detail"]["status"] == "running"
    assert seen["job.completed"]["detail"]["progress"] == 100
    assert seen["job.completed"]["detail"]["kind"] == "leads.import"
    imported = seen["lead_import.completed"]["detail"]
    assert (imported["rowsImported"], imported["errorCount"]) == (50, 0)
    # And the other clinic's screen saw none of it
    with pytest.raises(TimeoutError):
        theirs.recv(timeout=1)


def events_until(
    screen: ClientConnection, matches: Any, types: set[str], timeout: float = 30
) -> dict[str, dict[str, Any]]:
    """The first matching event of each type in `types`, however they interleave."""
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while set(seen) != types and (left := deadline - time.monotonic()) > 0:
        event: dict[str, Any] = json.loads(screen.recv(timeout=left))
        if event["type"] in types and matches(event):
            seen.setdefault(event["type"], event)
    assert set(seen) == types, f"saw only {sorted(seen)}"
    return seen


def test_a_handshake_without_a_valid_token_of_a_known_clinic_is_refused(dev: DevProcess) -> None:
    # Given no token, a token signed with another secret, an expired token, and a valid
    # token naming a clinic that does not exist
    forged = jwt.encode(
        jwt.decode(dev.info["staffToken"], options={"verify_signature": False}),
        "not-the-secret-of-this-stack-32-bytes",
        algorithm="HS256",
    )
    expired = token_for(dev, dev.info["clinicId"], exp=datetime.now(UTC) - timedelta(hours=1))
    # When each opens the WebSocket API / Then each is refused before any message
    assert refused_status(dev, None) == 401
    assert refused_status(dev, forged) == 403
    assert refused_status(dev, expired) == 403
    assert refused_status(dev, token_for(dev, str(uuid.uuid4()))) == 403
    # And a valid token still connects
    with open_screen(dev, dev.info["staffToken"]) as screen:
        assert request(screen, {"action": "subscribe", "topics": ["leads"]})["type"] == "subscribed"


def test_bad_messages_get_an_error_and_change_nothing(dev: DevProcess, database_url: str) -> None:
    # Given a connected screen
    with open_screen(dev, dev.info["staffToken"]) as screen:
        bad_messages(screen, database_url)


def bad_messages(screen: ClientConnection, database_url: str) -> None:
    # When it sends an unknown action, a bad topic, and a message that is not JSON
    unknown = request(screen, {"action": "shout"})
    bad_topic = request(screen, {"action": "subscribe", "topics": ["leads", "job:42"]})
    screen.send("not json")
    garbage: dict[str, Any] = json.loads(screen.recv(timeout=20))
    # Then each gets an error naming what to send, never echoing the input
    assert unknown["type"] == "error" and unknown["status"] == 400
    assert '"action": "subscribe"' in unknown["message"]
    assert bad_topic == {
        "type": "error",
        "status": 422,
        "message": "topics[1]: use leads, appointments, jobs, job:<id> or conversation:<id>",
    }
    assert garbage["type"] == "error" and garbage["status"] == 400
    # And the connection follows nothing
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT topics FROM websocket_connections").fetchall()
    assert rows == [([],)]


def test_a_connection_api_gateway_has_forgotten_is_removed_at_the_next_push(
    dev: DevProcess, database_url: str
) -> None:
    # Given a connection row the WebSocket API no longer knows (a browser gone without
    # $disconnect), following leads, next to a live screen
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO websocket_connections (connection_id, clinic_id, subject, topics)
               VALUES ('gone-connection=', %s, 'demo-staff', '{leads}')""",
            (dev.info["clinicId"],),
        )
    with open_screen(dev, dev.info["staffToken"]) as screen:
        request(screen, {"action": "subscribe", "topics": ["leads"]})
        forgotten_is_removed(dev, screen, database_url)
    # And closing the screen forgets its row too ($disconnect)
    with psycopg.connect(database_url) as conn:
        deadline = time.monotonic() + 10
        while conn.execute("SELECT count(*) FROM websocket_connections").fetchone() != (0,):
            conn.rollback()
            assert time.monotonic() < deadline, "the closed screen's row stayed"
            time.sleep(0.1)


def forgotten_is_removed(dev: DevProcess, screen: ClientConnection, database_url: str) -> None:
    # When a lead is created
    created = httpx.post(
        f"{dev.info['apiUrl']}/public/leads",
        headers={"X-Form-Key": dev.info["formKey"]},
        json={"name": "Grace Hopper", "phone": "+1 555 0100", "consent": True},
        timeout=30,
    )
    lead_id = created.json()["data"]["id"]
    # Then the live screen gets it, and the forgotten connection's row is deleted (410)
    next_event(screen, "lead.created", "leadId", lead_id)
    with psycopg.connect(database_url) as conn:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            gone = conn.execute(
                "SELECT 1 FROM websocket_connections WHERE connection_id = 'gone-connection='"
            ).fetchone()
            conn.rollback()
            if gone is None:
                break
            time.sleep(0.1)
    assert gone is None


def test_a_reply_streams_to_the_conversations_screen_and_ends_with_the_stored_text(
    dev: DevProcess,
) -> None:
    api, info = dev.info["apiUrl"], dev.info
    staff = {"Authorization": f"Bearer {info['staffToken']}"}
    # Given a conversation (its first reply done) and a screen following it
    started = httpx.post(
        f"{api}/assistant/conversations",
        headers=staff,
        json={"content": "How many leads?"},
        timeout=30,
    )
    assert started.status_code == 202, started.text
    conversation = started.json()["data"]["conversationId"]
    with open_screen(dev, info["staffToken"]) as screen:
        topic = f"conversation:{conversation}"
        assert request(screen, {"action": "subscribe", "topics": [topic]})["type"] == "subscribed"
        # When staff ask the next question
        asked = httpx.post(
            f"{api}/assistant/conversations/{conversation}/messages",
            headers=staff,
            json={"content": "And how many appointments this week?"},
            timeout=30,
        )
        assert asked.status_code == 202, asked.text
        reply_id = asked.json()["data"]["id"]
        # Then the reply arrives in deltas and done (in any order: the queue keeps none), its
        # text in the clear for this screen
        deltas: dict[int, str] = {}
        done: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while not done or "".join(deltas[seq] for seq in sorted(deltas)) != done["content"]:
            event: dict[str, Any] = json.loads(screen.recv(timeout=deadline - time.monotonic()))
            detail = event["detail"]
            if detail.get("replyId") != reply_id:
                continue
            assert "encryptedDelta" not in detail and "encryptedContent" not in detail
            if event["type"] == "assistant.reply.delta":
                deltas[detail["seq"]] = detail["delta"]
            elif event["type"] == "assistant.reply.done":
                done = detail
    assert done["status"] == "done" and sorted(deltas) == list(range(1, len(deltas) + 1))
    # And the deltas in order are the reply, as stored
    stored = httpx.get(f"{api}/assistant/messages/{reply_id}", headers=staff, timeout=30).json()[
        "data"
    ]
    assert "".join(deltas[seq] for seq in sorted(deltas)) == done["content"] == stored["content"]
