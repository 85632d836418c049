"""The reply cache's key: what makes two questions the same, what makes them differ, and
what a bypass asks for (no I/O)."""

from __future__ import annotations

import uuid

import pytest

from frontdesk.assistant.reply_cache import CacheUse, cache_key
from frontdesk.platform.crypto import BlindIndex, normalise_question

CLINIC = uuid.UUID("00000000-0000-0000-0000-00000000000a")
OTHER = uuid.UUID("00000000-0000-0000-0000-00000000000b")
SYSTEM = "You are the front-office assistant of A clinic."


def test_a_question_is_casefolded_and_its_whitespace_collapsed() -> None:
    assert normalise_question("  How MANY\tnew\n leads?  ") == "how many new leads?"
    assert normalise_question("Straße") == normalise_question("STRASSE")


def test_the_key_is_the_same_for_the_same_question_and_context_and_differs_otherwise() -> None:
    index = BlindIndex(b"k" * 32)
    mac = index.reply_question(CLINIC, "How many leads?")
    assert mac == index.reply_question(CLINIC, " how  many LEADS? ")
    key = cache_key(CLINIC, mac, SYSTEM, [])
    assert len(key) == 32 and key == cache_key(CLINIC, mac, SYSTEM, [])
    turn = uuid.uuid4()
    different = {
        cache_key(CLINIC, index.reply_question(CLINIC, "How many leads today?"), SYSTEM, []),
        cache_key(CLINIC, mac, SYSTEM + " 1 lead", []),
        cache_key(CLINIC, mac, SYSTEM, [turn]),
        cache_key(OTHER, index.reply_question(OTHER, "How many leads?"), SYSTEM, []),
        cache_key(
            CLINIC, BlindIndex(b"x" * 32).reply_question(CLINIC, "How many leads?"), SYSTEM, []
        ),
    }
    assert key not in different and len(different) == 5
    # the question's MAC depends on its clinic too
    assert index.reply_question(OTHER, "How many leads?") != mac
    assert b"leads" not in mac and b"leads" not in key


@pytest.mark.parametrize(
    ("body_cache", "cache_control", "look_up", "store"),
    [
        (True, None, True, True),
        (False, None, False, True),
        (True, "no-cache", False, True),
        (True, "max-age=0, NO-CACHE", False, True),
        (True, "no-store", False, False),
        (True, "max-age=60", True, True),
        (True, "", True, True),
    ],
)
def test_a_bypass_is_asked_by_the_body_or_cache_control(
    body_cache: bool, cache_control: str | None, look_up: bool, store: bool
) -> None:
    use = CacheUse.of(b"m" * 32, body_cache=body_cache, cache_control=cache_control)
    assert (use.look_up, use.store) == (look_up, store)


def test_with_the_cache_off_a_question_is_neither_looked_up_nor_stored() -> None:
    use = CacheUse.of(b"m" * 32, body_cache=True, cache_control=None, enabled=False)
    assert (use.look_up, use.store) == (False, False)
