"""The assistant's reply events without a database: what they carry (the text encrypted,
bound to its place), what a client gets from them, and how chunks are coalesced."""

from __future__ import annotations

import json
import uuid

import pytest
from cryptography.exceptions import InvalidTag

from frontdesk.assistant import reply_events
from frontdesk.assistant.reply_events import Coalescer, ReplyRef
from frontdesk.platform.crypto import EnvelopeCipher
from frontdesk.platform.queues import EventType
from tests.unit.test_crypto import FakeKeyService

REPLY = ReplyRef(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
TEXT = "Ada Lovelace (ada@example.org, +44 20 7946 0958) booked for 9:00."


def test_a_delta_carries_its_text_encrypted_and_the_client_gets_it_back() -> None:
    cipher = EnvelopeCipher(FakeKeyService())
    # When a delta of a second attempt is made
    detail = reply_events.delta(REPLY, cipher.data_key(), attempt=2, seq=1, text=TEXT)
    # Then the event holds ids, counters and a ciphertext, never the text
    wire = json.dumps(detail)
    assert "ada@example.org" not in wire and "Lovelace" not in wire
    assert set(detail) == {
        "replyId",
        "conversationId",
        "clinicId",
        "jobId",
        "attempt",
        "seq",
        "reset",
        "encryptedDelta",
    }
    assert (detail["attempt"], detail["seq"], detail["reset"]) == (2, 1, True)
    # And the client's shape has the text and no ciphertext
    shown = reply_events.for_client(cipher, EventType.ASSISTANT_REPLY_DELTA, detail)
    assert shown["delta"] == TEXT and "encryptedDelta" not in shown
    assert shown["replyId"] == str(REPLY.reply_id) and shown["reset"] is True


def test_reset_is_only_on_the_first_delta_of_a_retry() -> None:
    key = EnvelopeCipher(FakeKeyService()).data_key()
    flags = [
        reply_events.delta(REPLY, key, attempt=attempt, seq=seq, text="x")["reset"]
        for attempt, seq in [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)]
    ]
    assert flags == [False, False, True, False, True]


def test_a_ciphertext_cannot_pass_for_another_events_text() -> None:
    cipher = EnvelopeCipher(FakeKeyService())
    detail = reply_events.delta(REPLY, cipher.data_key(), attempt=1, seq=3, text=TEXT)
    # Given the same ciphertext under another seq, attempt or reply
    for change in ({"seq": 4}, {"attempt": 2}, {"replyId": str(uuid.uuid4())}):
        moved = {**detail, **change}
        # When a client view is made / Then decryption refuses it
        with pytest.raises(InvalidTag):
            reply_events.for_client(cipher, EventType.ASSISTANT_REPLY_DELTA, moved)


def test_done_carries_the_content_encrypted_or_the_error() -> None:
    cipher = EnvelopeCipher(FakeKeyService())
    done = reply_events.done(REPLY, cipher.data_key(), attempt=1, content=TEXT)
    assert "ada@example.org" not in json.dumps(done)
    shown = reply_events.for_client(cipher, EventType.ASSISTANT_REPLY_DONE, done)
    assert (shown["status"], shown["content"], shown["error"]) == ("done", TEXT, None)
    failed = reply_events.failed(REPLY, attempt=3, error="the model answered HTTP 500")
    shown = reply_events.for_client(cipher, EventType.ASSISTANT_REPLY_DONE, failed)
    assert (shown["status"], shown["content"], shown["error"]) == (
        "failed",
        None,
        "the model answered HTTP 500",
    )
    # And other events pass through as they are
    lead = {"leadId": "l-1", "clinicId": "c-1"}
    assert reply_events.for_client(cipher, EventType.LEAD_CREATED, lead) == lead


def test_chunks_are_coalesced_to_one_delta_per_interval_the_first_at_once() -> None:
    coalescer = Coalescer(0.25)
    # Given chunks every 0.1 s (a clock given, not waited for)
    sent = [(t, coalescer.add(f"c{t} ", t / 10)) for t in range(8)]
    # Then the first goes at once, then what came since, every 0.25 s or more
    assert [(t, text) for t, text in sent if text is not None] == [
        (0, "c0 "),
        (3, "c1 c2 c3 "),
        (6, "c4 c5 c6 "),
    ]
    # And the rest is what the stream's end sends; everything is sent once, in order
    assert coalescer.rest() == "c7 " and coalescer.rest() == ""


def test_an_interval_of_zero_sends_every_chunk() -> None:
    coalescer = Coalescer(0)
    assert [coalescer.add(c, 1.0) for c in "abc"] == ["a", "b", "c"]
