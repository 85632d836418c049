"""The hand-off's timing: after the response with the extension; as the work commits (at
most every FLUSH_SECONDS) and at the end without it."""

from __future__ import annotations

from typing import Any

import pytest

from frontdesk.platform import handoff
from frontdesk.platform.handoff import FLUSH_SECONDS, Relay


class RecordingRelay(Relay):
    """A Relay whose relaying is recorded instead of done (no database, no AWS)."""

    def __init__(self) -> None:
        super().__init__(database=None, publisher=None, budget_seconds=1.0)  # type: ignore[arg-type]
        self.relayed: list[list[int]] = []

    def relay(self, outbox_ids: list[int]) -> Any:
        self.relayed.append(list(outbox_ids))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(handoff.time, "monotonic", lambda: now[0])
    return now


def test_a_worker_relays_as_it_commits_at_most_every_flush_interval(clock: list[float]) -> None:
    relay = RecordingRelay()
    # Given an invocation without the after-response extension (a worker)
    with relay.invocation():
        # When commits follow each other quickly, they wait for each other
        relay.submit([1])
        clock[0] += FLUSH_SECONDS / 2
        relay.submit([2])
        assert relay.relayed == []
        # Then once the interval has passed, the next commit relays everything pending
        clock[0] += FLUSH_SECONDS
        relay.submit([3])
        assert relay.relayed == [[1, 2, 3]]
        # And a commit right after that waits again
        relay.submit([4])
        assert relay.relayed == [[1, 2, 3]]
    # And the end of the invocation relays the rest
    assert relay.relayed == [[1, 2, 3], [4]]


def test_with_the_extension_everything_waits_for_the_response(clock: list[float]) -> None:
    relay = RecordingRelay()
    after_response: list[list[int]] = []
    relay.relay_after_response_with(lambda ids: after_response.append(ids) is None)
    # Given an invocation of a function with the extension (the API)
    with relay.invocation():
        relay.submit([1])
        clock[0] += 10 * FLUSH_SECONDS
        relay.submit([2])
        # When it commits, however slowly / Then nothing is relayed before its answer
        assert relay.relayed == []
    # And the extension gets every id once the invocation has its answer
    assert after_response == [[1, 2]] and relay.relayed == []


def test_outside_an_invocation_a_commit_is_relayed_at_once() -> None:
    relay = RecordingRelay()
    relay.submit([7, 8])
    assert relay.relayed == [[7, 8]]
