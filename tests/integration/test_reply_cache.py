"""The assistant's reply cache through the API, against real PostgreSQL, a moto server built
from template.yaml and a real chat-completions server on loopback (local/fake_llm.py): a
question answered once by the model is answered again from the cache in the POST, with no
model call and no budget spent; the cache is bypassed on request, expires, follows the
context and is never shared between clinics."""

from __future__ import annotations

import json
from typing import Any

import pytest

from local.fake_llm import FakeLlm
from tests.integration.conftest import FORM_KEY, App
from tests.integration.test_assistant import (
    call,
    chat,
    drain,
    execute,
    llm,
    reply_events,
    rows,
    worker,
)
from tests.support import http_event, reset_process_state

__all__ = ["chat", "llm", "worker"]  # fixtures used by the tests below

QUESTION = "How many new leads this week?"


def post(
    api: Any,
    app: App,
    content: str = QUESTION,
    *,
    clinic_id: Any = None,
    conversation_id: str | None = None,
    headers: dict[str, str] | None = None,
    **body: Any,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    path = (
        f"/assistant/conversations/{conversation_id}/messages"
        if conversation_id
        else "/assistant/conversations"
    )
    status, response_headers, answer = call(
        api,
        http_event(
            "POST",
            path,
            body={"content": content, **body},
            clinic_id=clinic_id or app.clinic_id,
            headers=headers or {},
        ),
    )
    assert status in (201, 202), answer
    return status, response_headers, answer["data"]


def answered(chat: App, api: Any, worker: Any, llm: FakeLlm, content: str = QUESTION) -> str:
    """Ask once and let the model answer through the worker; the reply's text."""
    status, _, data = post(api, chat, content)
    assert status == 202 and data["status"] == "queued" and data["cached"] is False
    assert drain(chat, worker) == 1
    _, _, reply = call(
        api, http_event("GET", f"/assistant/messages/{data['id']}", clinic_id=chat.clinic_id)
    )
    content_text: str = reply["data"]["content"]
    assert reply["data"]["cached"] is False and content_text.startswith("(fake model)")
    return content_text


def emf(captured: str, name: str) -> int:
    """How many EMF lines on stdout count the metric `name`."""
    found = 0
    for line in captured.splitlines():
        if line.startswith('{"_aws"'):
            record = json.loads(line)
            if name in record:
                found += int(sum(record[name]) if isinstance(record[name], list) else 1)
    return found


def test_a_repeated_question_is_answered_from_the_cache_at_once_without_the_model(
    chat: App, api: Any, worker: Any, llm: FakeLlm, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a question the model has answered (a miss)
    first = answered(chat, api, worker, llm)
    assert llm.calls == 1
    usage = rows(chat, "SELECT period, requests, tokens FROM assistant_usage ORDER BY period")
    # Then the cache holds the answer, encrypted, keyed by a digest (no plaintext anywhere)
    stored = rows(
        chat,
        "SELECT clinic_id, key, answer_enc, expires_at - created_at FROM assistant_reply_cache",
    )
    assert len(stored) == 1
    clinic_id, key, answer_enc, ttl = stored[0]
    assert clinic_id == chat.clinic_id and len(key) == 32
    assert b"leads" not in bytes(key) and first.encode() not in bytes(answer_enc)
    assert ttl.total_seconds() == 86_400
    assert "leads" not in json.dumps(rows(chat, "SELECT payload FROM jobs"), default=str)

    # When the same question is asked again, differently cased and spaced, in a new
    # conversation
    status, headers, data = post(api, chat, "  how MANY new\tleads   this week? ")
    # Then it is answered in the POST: 201, done, cached, with the model's earlier text
    assert status == 201
    assert (data["status"], data["cached"], data["content"]) == ("done", True, first)
    assert headers["location"] == f"/assistant/messages/{data['id']}"
    assert "retry-after" not in headers
    # And the model was not called, nothing was queued and no budget was charged
    assert drain(chat, worker) == 0 and llm.calls == 1
    assert rows(chat, "SELECT period, requests, tokens FROM assistant_usage ORDER BY period") == (
        usage
    )
    # And the reply reads done and cached, its job succeeded, its event says cached
    _, _, reply = call(
        api, http_event("GET", f"/assistant/messages/{data['id']}", clinic_id=chat.clinic_id)
    )
    assert reply["data"]["cached"] is True and reply["data"]["content"] == first
    assert reply["data"]["provider"] == "openai" and reply["data"]["model"] == "fake-gpt"
    assert rows(chat, "SELECT status, attempts FROM jobs WHERE id = %s", data["jobId"]) == [
        ("succeeded", 0)
    ]
    events = reply_events(chat, data["id"])
    assert [(t, d["cached"], d["content"]) for t, d in events] == [
        ("assistant.reply.done", True, first)
    ]
    # And the hit and the miss were counted
    out = capsys.readouterr().out
    assert emf(out, "AssistantReplyCacheHits") == 1
    assert emf(out, "AssistantReplyCacheMisses") == 1


def test_an_idempotent_retry_of_a_hit_answers_the_same_without_plaintext_at_rest(
    chat: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    first = answered(chat, api, worker, llm)
    status, _, data = post(api, chat, headers={"idempotency-key": "hit-1"})
    again_status, again_headers, again = post(api, chat, headers={"idempotency-key": "hit-1"})
    assert (status, again_status) == (201, 201)
    assert again_headers["idempotent-replayed"] == "true"
    assert again == data and again["content"] == first
    stored = json.dumps(rows(chat, "SELECT response FROM idempotency_keys"), default=str)
    assert first not in stored and "(fake model)" not in stored


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({"cache": False}, {}),
        ({}, {"cache-control": "no-cache"}),
        ({}, {"cache-control": "max-age=0, No-Store"}),
    ],
)
def test_a_question_bypasses_the_cache_on_request(
    chat: App,
    api: Any,
    worker: Any,
    llm: FakeLlm,
    body: dict[str, Any],
    headers: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = answered(chat, api, worker, llm)
    created = rows(chat, "SELECT created_at FROM assistant_reply_cache")
    # When the question is asked again with the bypass
    status, _, data = post(api, chat, headers=headers, **body)
    # Then the model answers it
    assert status == 202 and data["cached"] is False
    assert drain(chat, worker) == 1 and llm.calls == 2
    # And the fresh answer replaces the entry, unless no-store
    entry = rows(chat, "SELECT created_at FROM assistant_reply_cache")
    if "no-store" in headers.get("cache-control", "").lower():
        assert entry == created
    else:
        assert len(entry) == 1 and entry != created
    # And a bypassed question is neither a hit nor a miss
    out = capsys.readouterr().out
    assert emf(out, "AssistantReplyCacheMisses") == 1 and emf(out, "AssistantReplyCacheHits") == 0
    assert first


def test_an_expired_answer_is_not_reused(chat: App, api: Any, worker: Any, llm: FakeLlm) -> None:
    answered(chat, api, worker, llm)
    execute(
        chat,
        "UPDATE assistant_reply_cache SET created_at = now() - interval '2 days',"
        " expires_at = now() - interval '1 second'",
    )
    status, _, _ = post(api, chat)
    assert status == 202
    assert drain(chat, worker) == 1 and llm.calls == 2
    # the new answer is stored for a new TTL
    assert rows(chat, "SELECT expires_at > now() FROM assistant_reply_cache") == [(True,)]


def test_a_ttl_of_zero_stores_nothing(
    chat: App, api: Any, worker: Any, llm: FakeLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASSISTANT_REPLY_CACHE_TTL_SECONDS", "0")
    reset_process_state()
    answered(chat, api, worker, llm)
    assert rows(chat, "SELECT count(*) FROM assistant_reply_cache") == [(0,)]
    status, _, _ = post(api, chat)
    assert status == 202


def test_the_answer_is_not_reused_when_the_context_changed(
    chat: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    answered(chat, api, worker, llm)
    # Given a new lead: the clinic's numbers the model is given have changed
    status, _, _ = call(
        api,
        http_event(
            "POST",
            "/public/leads",
            body={"name": "Ada", "email": "ada@example.org", "consent": True},
            headers={"x-form-key": FORM_KEY},
        ),
    )
    assert status == 201
    # When the same question is asked
    status, _, _ = post(api, chat)
    # Then the model answers it, with the new numbers
    assert status == 202
    assert drain(chat, worker) == 1 and llm.calls == 2
    assert "new leads this week: 1" in llm.requests[-1]["messages"][0]["content"]
    assert rows(chat, "SELECT count(*) FROM assistant_reply_cache") == [(2,)]


def test_a_follow_up_is_keyed_by_the_conversation_so_far(
    chat: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    # Given a conversation: a first question and a follow-up, both answered by the model
    _, _, first = post(api, chat, "Hello")
    assert drain(chat, worker) == 1
    post(api, chat, "And today?", conversation_id=first["conversationId"])
    assert drain(chat, worker) == 1 and llm.calls == 2
    # When a new conversation starts with the same first question
    status, _, second = post(api, chat, "Hello")
    # Then that is a hit (same question, no history, same numbers)
    assert status == 201 and second["cached"] is True
    # But the same follow-up in it is a miss: the model would see another conversation
    status, _, _ = post(api, chat, "And today?", conversation_id=second["conversationId"])
    assert status == 202
    assert drain(chat, worker) == 1 and llm.calls == 3
    # And the conversation reads in order, the cached reply marked
    _, _, conversation = call(
        api,
        http_event(
            "GET", f"/assistant/conversations/{second['conversationId']}", clinic_id=chat.clinic_id
        ),
    )
    messages = conversation["data"]["messages"]
    assert [(m["role"], m["cached"]) for m in messages] == [
        ("user", False),
        ("assistant", True),
        ("user", False),
        ("assistant", False),
    ]


def test_one_clinic_never_gets_another_clinics_cached_answer(
    chat: App, api: Any, worker: Any, llm: FakeLlm
) -> None:
    # Given the same clinic name and numbers in both clinics, so only the clinic differs
    execute(chat, "UPDATE clinics SET name = 'Same name'")
    answered(chat, api, worker, llm)
    # When another clinic asks the same question
    status, _, data = post(api, chat, clinic_id=chat.other_clinic_id)
    # Then its model answers it, and each clinic has its own entry
    assert status == 202 and data["cached"] is False
    assert drain(chat, worker) == 1 and llm.calls == 2
    assert sorted(r[0] for r in rows(chat, "SELECT clinic_id FROM assistant_reply_cache")) == (
        sorted([chat.clinic_id, chat.other_clinic_id])
    )
    keys = rows(chat, "SELECT key FROM assistant_reply_cache")
    assert keys[0] != keys[1]
    # And the first clinic still hits its own
    status, _, data = post(api, chat)
    assert status == 201 and data["cached"] is True
