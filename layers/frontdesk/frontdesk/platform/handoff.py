"""The hand-off: what becomes of a committed unit of work's outbox rows.

The rows are committed, so nothing is lost whatever happens next; the relay to SQS and
EventBridge only makes delivery prompt, and the OutboxSweeper sends whatever it misses.
So nobody waits for it:

- inside an invocation (`Relay.invocation()`, opened by every function's entry point) the
  ids are kept until the handler has its answer. In Lambda an internal extension
  (frontdesk.platform.extension) relays them after the runtime has sent the response: the
  environment stays in its invoke phase until the extension asks for its next event, so the
  work really happens, and the client never waits for it. Without the extension (a worker,
  in-process tests, the extension thread gone) they are relayed as the invocation ends, and
  along the way at most every `FLUSH_SECONDS`: a worker has no caller waiting, and a long
  job's progress events should reach the screens while it runs, not when it ends.
- outside any invocation (scripts, the local runtime's seeding) they are relayed at once.
- `RelayNow(relay)` relays at once inside an invocation too: for events worth something only
  while fresh (a streamed reply's deltas, sent between chunks of the model's answer rather
  than when the invocation ends).

The after-response relay has a budget: short connect and read timeouts, one attempt per
call and a total cap, so a slow or hanging AWS endpoint delays the environment's next event
by at most the budget, and what it could not send stays for the sweeper.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from frontdesk.observability import logger
from frontdesk.platform import outbox

if TYPE_CHECKING:
    from frontdesk.platform.db import Database
    from frontdesk.platform.outbox import Publisher


# Without the after-response extension, an invocation's ids are relayed as they commit, at
# most this often (a batch of quick records is relayed once, at its end).
FLUSH_SECONDS = 0.25


@dataclass
class Invocation:
    """The outbox ids the current invocation committed and has not relayed yet, in order."""

    outbox_ids: list[int] = field(default_factory=list)
    last_relay: float = field(default_factory=lambda: time.monotonic())


_current: ContextVar[Invocation | None] = ContextVar("frontdesk_invocation", default=None)

# Who relays an invocation's ids after its response: the extension, when one runs.
AfterResponse = Callable[[list[int]], bool]


class Relay:
    """The container's hand-off (Handoff in the unit of work)."""

    def __init__(self, database: Database, publisher: Publisher, budget_seconds: float) -> None:
        self._database = database
        self._publisher = publisher
        self.budget_seconds = budget_seconds
        self._after_response: AfterResponse | None = None

    def submit(self, outbox_ids: Sequence[int]) -> None:
        invocation = _current.get()
        if invocation is None:
            self.relay(list(outbox_ids))
            return
        invocation.outbox_ids.extend(outbox_ids)
        now = time.monotonic()
        if self._after_response is None and now - invocation.last_relay >= FLUSH_SECONDS:
            ids, invocation.outbox_ids = invocation.outbox_ids, []
            invocation.last_relay = now
            self.relay(ids)

    def relay(self, outbox_ids: list[int]) -> outbox.RelayResult:
        """Relay now, within the budget. Never raises."""
        deadline = time.monotonic() + self.budget_seconds
        return outbox.relay(self._database, outbox_ids, self._publisher, deadline=deadline)

    def relay_after_response_with(self, after_response: AfterResponse | None) -> None:
        """Hand each invocation's ids to `after_response` (the extension), which answers
        False when it cannot take them (its thread is gone)."""
        self._after_response = after_response

    @contextmanager
    def invocation(self) -> Iterator[Invocation]:
        """The scope of one invocation: what it commits is relayed once it has its answer."""
        invocation = Invocation()
        token = _current.set(invocation)
        try:
            yield invocation
        finally:
            _current.reset(token)
            self.finish(invocation)

    def finish(self, invocation: Invocation) -> None:
        ids = invocation.outbox_ids
        after_response = self._after_response
        if after_response is not None and after_response(ids):
            return
        if after_response is not None:
            logger.warning("the relay extension is gone; relaying before the response")
        if ids:
            self.relay(ids)


class Relays(Protocol):
    """What relays committed rows now (`Relay`)."""

    def relay(self, outbox_ids: list[int]) -> outbox.RelayResult: ...


class RelayNow:
    """A hand-off that relays each commit's rows at once, within the relay's budget, inside
    an invocation too. Never raises; `failures` counts the commits whose rows it could not
    all send (the sweeper sends them later)."""

    def __init__(self, relay: Relays) -> None:
        self._relay = relay
        self.failures = 0

    def submit(self, outbox_ids: Sequence[int]) -> None:
        if outbox_ids and self._relay.relay(list(outbox_ids)).failed:
            self.failures += 1
